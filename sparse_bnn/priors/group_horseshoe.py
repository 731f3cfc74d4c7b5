"""Group horseshoe without spike (the model-reduction study's "tiered" baseline): SS-GHS with ``z = 1``."""
from __future__ import annotations

import dataclasses

from sparse_bnn.priors.ss_ghs import SpikeSlabGroupHorseshoe


@dataclasses.dataclass(frozen=True)
class GroupHorseshoe(SpikeSlabGroupHorseshoe):
    name = "group-horseshoe"
    has_indicator = False

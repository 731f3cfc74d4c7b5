"""Dense Gaussian prior (no pruning; baseline): ``w ~ N(0, sigma_0^2)`` elementwise."""
from __future__ import annotations

import dataclasses

from sparse_bnn.priors.base import Prior


@dataclasses.dataclass(frozen=True)
class Gaussian(Prior):
    name = "gaussian"
    has_indicator = False

"""Spike-and-slab Gaussian (SS-IG; baseline): ``w_lj | z ~ z N(0, sigma_0^2 I) + (1 - z) delta_0``."""
from __future__ import annotations

import dataclasses

from sparse_bnn.priors.base import Prior


@dataclasses.dataclass(frozen=True)
class SpikeSlabGaussian(Prior):
    name = "ss-ig"
    has_indicator = True

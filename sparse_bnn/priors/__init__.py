"""Shrinkage priors over node groups; pick one by name from :data:`PRIORS`."""
from __future__ import annotations

from sparse_bnn.priors.base import LogNormalFactor, Prior, ScaleSite
from sparse_bnn.priors.flat import Flat
from sparse_bnn.priors.gaussian import Gaussian
from sparse_bnn.priors.group_horseshoe import GroupHorseshoe
from sparse_bnn.priors.ss_ghs import SpikeSlabGroupHorseshoe
from sparse_bnn.priors.ss_gl import SpikeSlabGroupLasso
from sparse_bnn.priors.ss_ig import SpikeSlabGaussian

PRIORS: dict[str, type[Prior]] = {
    "ss-gl": SpikeSlabGroupLasso,
    "ss-ghs": SpikeSlabGroupHorseshoe,
    "ss-ig": SpikeSlabGaussian,
    "gaussian": Gaussian,
    "group-horseshoe": GroupHorseshoe,
    "flat": Flat,
}


def get_prior(name: str, **hyperparameters) -> Prior:
    """The prior registered as ``name``, built with ``hyperparameters``."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)}")
    return PRIORS[name](**hyperparameters)


__all__ = ["PRIORS", "Prior", "ScaleSite", "LogNormalFactor", "get_prior", "Flat", "Gaussian",
           "GroupHorseshoe", "SpikeSlabGroupHorseshoe", "SpikeSlabGroupLasso", "SpikeSlabGaussian"]

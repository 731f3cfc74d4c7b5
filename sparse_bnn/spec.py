"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.core.spec` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.core.spec import (INDICATOR_LOGIT_SUFFIX, LIKELIHOODS, LOC, LOGIT, Masks, ModelOptions, ModelSpec,
                                  NOISE_PRIOR_SCALE, NOISE_SITE, OBS_SITE, RHO, UnitStructure, VARIATIONAL_SUFFIXES,
                                  indicator_site, loc_param, logit_param, lognormal_factors, rho_param,
                                  scale_site_names, softplus, weight_site)

__all__ = ["INDICATOR_LOGIT_SUFFIX", "LIKELIHOODS", "LOC", "LOGIT", "Masks", "ModelOptions", "ModelSpec",
           "NOISE_PRIOR_SCALE", "NOISE_SITE", "OBS_SITE", "RHO", "UnitStructure", "VARIATIONAL_SUFFIXES",
           "indicator_site", "lognormal_factors", "logit_param", "loc_param", "rho_param", "scale_site_names",
           "softplus", "weight_site"]

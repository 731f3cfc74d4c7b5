"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.core.model` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.core.model import LIKELIHOODS, Masks, ModelOptions, NOISE_PRIOR_SCALE, SparseBNN

__all__ = ["LIKELIHOODS", "Masks", "ModelOptions", "NOISE_PRIOR_SCALE", "SparseBNN"]

"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.core.guide` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.core.guide import ConcreteBernoulli, init_params, lognormal_factors, sample_guide, softplus

__all__ = ["ConcreteBernoulli", "init_params", "lognormal_factors", "sample_guide", "softplus"]

"""Former home of this code, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.compact.prune` and :mod:`sparse_bnn.compact.keep` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.compact.keep import KeepMasks, Params, check_keep, check_params, kept_units, mask_params, threshold_keep
from sparse_bnn.compact.prune import ParamAxis, compact, compact_params, compact_samples

__all__ = ["check_keep", "check_params", "compact", "compact_params", "compact_samples", "kept_units", "mask_params",
           "threshold_keep"]

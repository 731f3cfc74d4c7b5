"""Former home of this code, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.sparsify.shrink` and :mod:`sparse_bnn.sparsify.slicing` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.sparsify.shrink import (DEFAULT_THRESHOLD, GammaRule, RemovalRule, Shrink, ShrinkResult, ShrinkSchedule,
                                        ShrinkTracker, fewest_first, fit_shrinking, keep_from_origin, removal_threshold)
from sparse_bnn.sparsify.slicing import (bucketed_width, release_units, shrink_state, shrunk_model, site_unit_axes,
                                         slice_masks, slice_opt_state, slice_sites, slice_variational)

__all__ = ["GammaRule", "RemovalRule", "Shrink", "ShrinkResult", "ShrinkSchedule", "ShrinkTracker", "bucketed_width",
           "fewest_first", "fit_shrinking", "keep_from_origin", "release_units", "removal_threshold", "shrunk_model",
           "site_unit_axes", "slice_masks", "slice_opt_state", "slice_sites", "slice_variational"]

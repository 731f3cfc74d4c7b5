"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.sparsify.bmr` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.sparsify.bmr import (InclusionThreshold, ReducedPosterior, elementwise_prune_mask, group_delta_f,
                                     learned_inclusion_threshold, node_delta_f, reduced_gaussian, savage_dickey,
                                     sum_over_units)

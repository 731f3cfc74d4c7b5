"""Former home of this code, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.sparsify.reduction` and :mod:`sparse_bnn.sparsify.scores` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.sparsify.scores import (DEFAULT_MAX_PRUNE_FRACTION, DEFAULT_REDUCED_VAR_RATIO, MODES, NODE_THRESHOLDS,
                                        cap_pruning, delta_f_from_posterior, elementwise_masks, elementwise_reduction,
                                        keep_from_node_scores, live_entries, node_keep_masks, node_reduction,
                                        posterior_moments, prunable_layers, random_refs, sparsity,
                                        units_from_weight_masks)
from sparse_bnn.sparsify.reduction import (DEFAULT_WARMUP_EPOCHS, NodeBMRRule, Reduction, ReductionStats,
                                           default_warmup_epochs, fit_with_bmr, full_masks, make_reduction_step,
                                           resolve_warmup_epochs)

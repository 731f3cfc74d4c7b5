"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.core.posterior` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.core.posterior import (averaged_probs, batched, expected_weight_scales, inclusion_probs, keep_masks,
                                       noise_scale, posterior_mean_params, predict, predict_mean, sample_latents,
                                       sample_params, sampled_outputs)

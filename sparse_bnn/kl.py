"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.core.kl` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.core.kl import (HALF_LOG_2PI, kl_bernoulli, kl_bernoulli_logits, kl_lognormal_gamma,
                                kl_lognormal_halfnormal, kl_lognormal_invgamma, kl_normal, kl_normal_expected_var,
                                lognormal_entropy, lognormal_mean)

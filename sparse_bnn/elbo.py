"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.core.elbo` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.core.elbo import AnalyticKLELBO, ELBOTerms, analytic_kl, elbo_terms

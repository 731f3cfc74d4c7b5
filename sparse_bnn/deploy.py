"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.compact.deploy` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.compact.deploy import predict_run, read_inputs, run_preprocessing, write_predictions

__all__ = ["predict_run", "read_inputs", "run_preprocessing", "write_predictions"]

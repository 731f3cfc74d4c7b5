"""Former home of this code, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.experiment.run` and :mod:`sparse_bnn.experiment.evaluate` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.experiment.run import (BMR_MODES, REGRESSION_LIKELIHOOD_NOISE, RunConfig, RunDirectoryError,
                                       _check_resumable, build_model, load_variational_params, net_config,
                                       prepare_run_directory, run_experiment, save_variational_params, training_hooks)
from sparse_bnn.experiment.evaluate import (bma_predictions, compact_predictions, evaluate_fitted, evaluate_run,
                                            load_run_dataset, read_run, report_table, score, write_json)

"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.experiment.run_files` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.experiment.run_files import (CHECKPOINT_DIR, COMPACT_DIR, CONFIG_FILE, DATASET_OPTIONS,
                                             FINETUNE_CHECKPOINT_DIR, HISTORY_FILE, METRICS_FILE, PARAMS_FILE,
                                             PLOTS_DIR, REPORT_FILE, load_run_dataset, read_finished_run)

__all__ = ["CHECKPOINT_DIR", "COMPACT_DIR", "CONFIG_FILE", "DATASET_OPTIONS", "FINETUNE_CHECKPOINT_DIR", "HISTORY_FILE",
           "METRICS_FILE", "PARAMS_FILE", "PLOTS_DIR", "REPORT_FILE", "load_run_dataset", "read_finished_run"]

"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.experiment.config` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.experiment.config import (BMRConfig, BMR_MODES, DataConfig, EvaluationConfig, ModelConfig, Option,
                                          RunConfig, ShrinkConfig, TrainingConfig, flat_options, options)

__all__ = ["BMR_MODES", "BMRConfig", "DataConfig", "EvaluationConfig", "ModelConfig", "Option", "RunConfig",
           "ShrinkConfig", "TrainingConfig", "flat_options", "options"]

"""Former home of the training loop, kept so that old imports work: use :mod:`sparse_bnn.train`.

``from sparse_bnn.fit import CHECKPOINT_FILE, fit`` still works. The attribute ``sparse_bnn.fit``
is the function :func:`sparse_bnn.train.fit`, also after this module is imported (the package
does not let the import rebind it), so ``import sparse_bnn.fit as m`` gives the function too;
``importlib.import_module("sparse_bnn.fit")`` gives this module.
"""
from __future__ import annotations

from sparse_bnn.train.checkpoint import CHECKPOINT_FILE, HISTORY_FILE, load_checkpoint, save_checkpoint
from sparse_bnn.train.epoch import (STREAM_CHUNK_BYTES, StreamingEpoch, epoch_plan, init_state, loss_fn,
                                    make_epoch, make_step, validate_data)
from sparse_bnn.train.hooks import kept_units
from sparse_bnn.train.loop import CHECKPOINT_INTERVAL, check_checkpoint_interval, fit
from sparse_bnn.train.optim import (INDICATOR_SUFFIX, LR_SCHEDULES, learning_rate_schedule, scale_indicator_updates,
                                    svi_optimizer)
from sparse_bnn.train.state import DivergenceError, EpochStats, FitResult, TrainState

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_INTERVAL", "DivergenceError", "EpochStats", "FitResult", "HISTORY_FILE",
           "INDICATOR_SUFFIX", "LR_SCHEDULES", "STREAM_CHUNK_BYTES", "StreamingEpoch", "TrainState",
           "check_checkpoint_interval", "epoch_plan", "fit", "init_state", "kept_units", "learning_rate_schedule",
           "load_checkpoint", "loss_fn", "make_epoch", "make_step", "save_checkpoint", "scale_indicator_updates",
           "svi_optimizer", "validate_data"]

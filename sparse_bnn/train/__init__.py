"""Training: the one epoch loop (:func:`fit`), its hooks, the compiled epoch, optimiser, checkpoints."""
from sparse_bnn.train.checkpoint import load_checkpoint, save_checkpoint
from sparse_bnn.train.epoch import compile_epoch, init_state, loss_fn, make_epoch, make_step, validate_data
from sparse_bnn.train.hooks import Hook, KeptUnits, LoopInfo, Validation, kept_units
from sparse_bnn.train.loop import CHECKPOINT_INTERVAL, check_checkpoint_interval, fit
from sparse_bnn.train.optim import LR_SCHEDULES, learning_rate_schedule, svi_optimizer
from sparse_bnn.train.state import DivergenceError, EpochStats, FitResult, Fitting, TrainState

__all__ = ["CHECKPOINT_INTERVAL", "check_checkpoint_interval", "DivergenceError", "EpochStats", "FitResult", "Fitting", "Hook", "KeptUnits",
           "LR_SCHEDULES", "LoopInfo", "TrainState", "Validation", "compile_epoch", "fit", "init_state",
           "kept_units", "learning_rate_schedule", "load_checkpoint", "loss_fn", "make_epoch", "make_step",
           "save_checkpoint", "svi_optimizer", "validate_data"]

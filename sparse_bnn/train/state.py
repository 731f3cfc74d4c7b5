"""What a training run carries from epoch to epoch, and what it hands back."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from sparse_bnn.core.model import Masks, SparseBNN


class TrainState(NamedTuple):
    """Everything a run needs to go on: variational parameters, optimiser state, key, epoch,
    and the fixed masks (units switched off for good, pruned entries)."""

    params: dict[str, jax.Array]
    opt_state: optax.OptState
    rng_key: jax.Array
    epoch: jax.Array
    masks: Masks = Masks()


class EpochStats(NamedTuple):
    """Means over an epoch's steps, per data point: ``loss = nll + kl``."""

    loss: jax.Array
    nll: jax.Array
    kl: jax.Array


class Fitting(NamedTuple):
    """The model being fitted and its state, as hooks see and change them between epochs.

    A hook may return new ``state.masks`` (jit data: nothing recompiles), a different ``bnn``
    with a matching ``state`` (a smaller network with sliced parameters and optimiser state:
    the loop recompiles the epoch), or ``stop=True`` to end the run after this epoch.
    """

    bnn: SparseBNN
    state: TrainState
    stop: bool = False


@dataclasses.dataclass
class FitResult:
    """A fitted model: the model, its variational parameters, the per-epoch history.

    Attributes:
      bnn: the final model (after shrinking: the smaller one ``params`` belong to).
      params: ``{name: array}`` variational parameters of ``bnn``.
      history: one record per epoch (``epoch, loss, nll, kl, seconds, kept`` and whatever the
        hooks add).
      state: the final :class:`TrainState` (``state.masks`` holds the fixed masks).
      compile_seconds: wall-clock spent compiling epochs (all recompilations included).
      compilations: how many times the epoch was compiled (1 + rebuilds of the network).
      unit_origin: ``{layer: int [final units]}``, the original index of each unit of ``bnn``
        (only for layers a shrinking hook rebuilt; padding units included, unit mask 0).
      removed: ``[{"epoch", "layer", "units"}]`` removal events in original numbering.
      hook_states: ``{hook name: final state}`` of every hook.
    """

    bnn: SparseBNN
    params: dict[str, jax.Array]
    history: list[dict]
    state: TrainState
    compile_seconds: float = 0.0
    compilations: int = 0
    unit_origin: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    removed: list[dict] = dataclasses.field(default_factory=list)
    hook_states: dict[str, Any] = dataclasses.field(default_factory=dict)


class DivergenceError(RuntimeError):
    """The loss became non-finite; the last good state is kept (and checkpointed, if asked)."""

    def __init__(self, message: str, last_good: FitResult):
        super().__init__(message)
        self.last_good = last_good

"""Checkpoints: the latest :class:`TrainState`, the hooks' states and the history, written atomically.

A checkpoint directory holds ``checkpoint.msgpack`` (the state's arrays and the hooks' states as
JSON, one file, so they always belong together) and ``history.json``. The history is written
first: a crash between the two writes leaves it one epoch ahead of the checkpoint, never behind,
and :func:`read_checkpoint` drops the records past the checkpoint's epoch. Reading runs no code
from the files (msgpack and JSON only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from sparse_bnn import atomic
from sparse_bnn.core.model import Masks
from sparse_bnn.train.state import TrainState

CHECKPOINT_FILE = "checkpoint.msgpack"
HISTORY_FILE = "history.json"
LEGACY_SHRINK_FILE = "shrink.json"  # the shrinking run's tracker, before hooks kept their state in the checkpoint
HOOKS_KEY = "hooks"

__all__ = ["CHECKPOINT_FILE", "HISTORY_FILE", "SavedCheckpoint", "load_checkpoint", "read_checkpoint",
           "restore_state", "save_checkpoint"]


class SavedCheckpoint(NamedTuple):
    """A checkpoint as read from disk, before its arrays are shaped like a model's state."""

    arrays: dict            # msgpack state dict of the TrainState
    epoch: int
    hooks: dict[str, Any]   # {hook name: JSON state}
    history: list[dict]


def _state_dict(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "rng_key": state.rng_key,
            "epoch": state.epoch, "masks": {"units": state.masks.units, "weights": state.masks.weights}}


def save_checkpoint(directory: str | Path, state: TrainState, history: list[dict],
                    hooks: dict[str, Any] | None = None) -> None:
    """Write ``history``, then ``state`` with the hooks' JSON states, each atomically."""
    directory = Path(directory)
    payload = {**_state_dict(state), HOOKS_KEY: json.dumps(hooks or {})}
    atomic.write_bytes(directory / HISTORY_FILE, json.dumps(history, indent=1).encode())
    atomic.write_bytes(directory / CHECKPOINT_FILE, serialization.to_bytes(payload))


def read_checkpoint(directory: str | Path) -> SavedCheckpoint | None:
    """The checkpoint in ``directory``, or ``None`` when there is none."""
    directory = Path(directory)
    if not (directory / CHECKPOINT_FILE).exists():
        return None
    try:
        arrays = serialization.msgpack_restore((directory / CHECKPOINT_FILE).read_bytes())
        history = json.loads((directory / HISTORY_FILE).read_text())
        epoch = int(arrays["epoch"])
        hooks = json.loads(arrays.pop(HOOKS_KEY)) if HOOKS_KEY in arrays else _legacy_hooks(directory, epoch)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"checkpoint in {directory} is unreadable: {error}") from error
    history = [record for record in history if int(record.get("epoch", 0)) <= epoch]
    return SavedCheckpoint(arrays, epoch, hooks, history)


def _legacy_hooks(directory: Path, epoch: int) -> dict[str, Any]:
    """The shrinking tracker that older versions wrote beside the checkpoint (``shrink.json``)."""
    if not (directory / LEGACY_SHRINK_FILE).exists():
        return {}
    entries = json.loads((directory / LEGACY_SHRINK_FILE).read_text())["trackers"]
    for entry in entries:
        if int(entry["epoch"]) == epoch:
            return {"shrink": entry}
    raise ValueError(f"{LEGACY_SHRINK_FILE} has no entry for the checkpoint's epoch {epoch}")


def restore_state(template: TrainState, saved: SavedCheckpoint, directory: str | Path = "") -> TrainState:
    """``saved``'s arrays shaped like ``template`` (``ValueError`` if they belong to another model)."""
    try:
        restored = serialization.from_state_dict(_state_dict(template), saved.arrays)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"checkpoint in {directory} belongs to another model: {error}") from error
    _check_shapes(_state_dict(template), restored, directory)
    return TrainState(restored["params"], restored["opt_state"], jnp.asarray(restored["rng_key"]),
                      jnp.asarray(restored["epoch"], jnp.int32),
                      Masks(dict(restored["masks"]["units"]), dict(restored["masks"]["weights"])))


def _check_shapes(template: dict, restored: dict, directory) -> None:
    """``ValueError`` naming the first array whose shape differs from the model's."""
    expected = jax.tree_util.tree_flatten_with_path(template)[0]
    found = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
    for path, leaf in expected:
        value = found.get(path)
        if value is not None and np.shape(value) != np.shape(leaf):
            raise ValueError(f"checkpoint in {directory} belongs to another model: "
                             f"{jax.tree_util.keystr(path)} has shape {np.shape(value)}, the model "
                             f"{np.shape(leaf)}")


def load_checkpoint(directory: str | Path, template: TrainState) -> tuple[TrainState, list[dict]] | None:
    """``(state, history)`` of the checkpoint in ``directory`` shaped like ``template``, or ``None``."""
    saved = read_checkpoint(directory)
    if saved is None:
        return None
    return restore_state(template, saved, directory), saved.history

"""Checkpoints: the latest :class:`TrainState`, the hooks' states and the history, written atomically.

A checkpoint directory holds ``checkpoint.msgpack`` (the state's arrays and the hooks' states as
JSON, one file, so they always belong together) and ``history.json``. The history is written
first: a crash between the two writes leaves it one epoch ahead of the checkpoint, never behind,
and :func:`read_checkpoint` drops the records past the checkpoint's epoch. Reading runs no code
from the files (msgpack and JSON only). :func:`restore_state` checks every array against the
model's (path, shape, dtype: :func:`check_arrays`) before anything trains.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

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

__all__ = ["CHECKPOINT_FILE", "HISTORY_FILE", "SavedCheckpoint", "adopt_optimizer_state", "check_arrays",
           "load_checkpoint", "read_checkpoint", "restore_state", "save_checkpoint"]


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


def restore_state(template: TrainState, saved: SavedCheckpoint, directory: str | Path = "", *,
                  new_optimizer: bool = False) -> TrainState:
    """``saved``'s arrays shaped like ``template``.

    Raises ``ValueError`` naming the first array (by path, e.g. ``params/dense0.w.mu``) that the
    checkpoint lacks or holds with another shape or dtype than the model (:func:`check_arrays`).
    ``new_optimizer``: ``template`` has another optimiser than the checkpoint (a diverged run
    resumed with other learning rates or schedule): keep the checkpoint's Adam moments and step
    count and take the rest of the optimiser state (a schedule's step count) from them
    (:func:`adopt_optimizer_state`).
    """
    expected = serialization.to_state_dict(_state_dict(template))
    arrays = dict(saved.arrays)
    if new_optimizer:
        arrays["opt_state"] = adopt_optimizer_state(expected["opt_state"], arrays.get("opt_state", {}), directory)
    check_arrays(expected, arrays, directory)
    try:
        restored = serialization.from_state_dict(_state_dict(template), arrays)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"checkpoint in {directory} belongs to another model: {error}") from error
    return TrainState(restored["params"], restored["opt_state"], jnp.asarray(restored["rng_key"]),
                      jnp.asarray(restored["epoch"], jnp.int32),
                      Masks(dict(restored["masks"]["units"]), dict(restored["masks"]["weights"])))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a/b/c": leaf}`` of nested dicts (a state dict)."""
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flat(value, f"{prefix}{key}/"))
        return flat
    return {prefix[:-1]: tree}


def _dtype(leaf: Any) -> np.dtype:
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def _describe(leaf: Any) -> str:
    return f"shape {tuple(np.shape(leaf))} {_dtype(leaf)}"


def check_arrays(expected: dict, found: dict, directory: str | Path = "") -> None:
    """``ValueError`` naming the first array of the state dict ``expected`` (the model's) that
    ``found`` (a checkpoint's) lacks or holds with another shape or dtype, or the first parameter
    ``found`` holds that the model has not. Optimiser, masks and key are checked like parameters."""
    want, have = _flat(expected), _flat(found)
    where = f"checkpoint in {directory} belongs to another model"
    for path, leaf in want.items():
        if path not in have:
            raise ValueError(f"{where}: it has no {path} (the model's: {_describe(leaf)})")
        value = have[path]
        if np.shape(value) != np.shape(leaf) or _dtype(value) != _dtype(leaf):
            raise ValueError(f"{where}: {path} has {_describe(value)}, the model {_describe(leaf)}")
    extra = [path for path in have if path.startswith("params/") and path not in want]
    if extra:
        raise ValueError(f"{where}: it holds {extra[0]} ({_describe(have[extra[0]])}), a parameter the model has not")


def _adam_node(tree: Any) -> dict | None:
    """The first node of a state dict that is Adam's state (``count``, ``mu``, ``nu``)."""
    if not isinstance(tree, dict):
        return None
    if {"count", "mu", "nu"} <= set(tree):
        return tree
    for value in tree.values():
        node = _adam_node(value)
        if node is not None:
            return node
    return None


def adopt_optimizer_state(expected: Any, saved: Any, directory: str | Path = "") -> Any:
    """The state dict of the optimiser ``expected`` (a new one's initial state) holding the Adam
    moments and step count of ``saved`` (another optimiser's): Adam's node is taken whole from
    ``saved``, every other ``{"count"}`` node (a schedule's step) gets Adam's count, the rest stays."""
    adam = _adam_node(saved)
    if adam is None:
        raise ValueError(f"checkpoint in {directory} holds no Adam state to continue with a new learning rate")

    def graft(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if {"count", "mu", "nu"} <= set(node):
            return adam
        if set(node) == {"count"}:
            return {"count": np.asarray(adam["count"]).astype(np.asarray(node["count"]).dtype)}
        return {key: graft(value) for key, value in node.items()}

    return graft(expected)


def load_checkpoint(directory: str | Path, template: TrainState) -> tuple[TrainState, list[dict]] | None:
    """``(state, history)`` of the checkpoint in ``directory`` shaped like ``template``, or ``None``."""
    saved = read_checkpoint(directory)
    if saved is None:
        return None
    return restore_state(template, saved, directory), saved.history

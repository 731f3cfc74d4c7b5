"""Fit a :class:`SparseBNN` by SVI: optax, one jitted ``lax.scan`` per epoch, checkpoints.

The data set lives on the device; each epoch shuffles it with the state's key and scans over
minibatches, so there is no host round trip per step. Everything is a pure function of the
:class:`TrainState`, so a run is deterministic for a seed and a resumed run ends exactly where
an uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from sparse_bnn.elbo import elbo_terms
from sparse_bnn.model import Masks, SparseBNN

CHECKPOINT_FILE = "checkpoint.msgpack"
HISTORY_FILE = "history.json"


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


class DivergenceError(RuntimeError):
    """The loss became non-finite; the last good state is kept (and checkpointed, if asked)."""

    def __init__(self, message: str, last_good: "FitResult"):
        super().__init__(message)
        self.last_good = last_good


@dataclasses.dataclass
class FitResult:
    """A fitted model: the model, its variational parameters, the per-epoch history."""

    bnn: SparseBNN
    params: dict[str, jax.Array]
    history: list[dict]
    state: TrainState
    compile_seconds: float = 0.0


def loss_fn(bnn: SparseBNN) -> Callable:
    """``(params, key, x, y, masks) -> (loss, (nll, kl))`` per data point (``math.md`` §4)."""

    def loss(params, key, x, y, masks=Masks()):
        terms = elbo_terms(key, params, bnn.model, bnn.guide, bnn.kl, x, y, masks=masks)
        nll, kl = -terms.log_likelihood / bnn.n_data, terms.kl / bnn.n_data
        return nll + kl, (nll, kl)

    return loss


def make_step(bnn: SparseBNN, optimizer: optax.GradientTransformation,
              augment: Callable | None = None) -> Callable:
    """One SVI step: ``(params, opt_state, key, x, y, masks) -> (params, opt_state, (loss, nll, kl))``."""
    grad_fn = jax.value_and_grad(loss_fn(bnn), has_aux=True)

    def step(params, opt_state, key, x, y, masks=Masks()):
        if augment is not None:
            key, augment_key = jax.random.split(key)
            x = augment(augment_key, x)
        (loss, (nll, kl)), grads = grad_fn(params, key, x, y, masks)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, (loss, nll, kl)

    return step


def make_epoch(step: Callable, n_data: int, batch_size: int) -> Callable:
    """One epoch: shuffle, then ``lax.scan`` of ``step`` over ``n_data // batch_size`` minibatches.

    Returns ``epoch(state, x, y) -> (state, EpochStats)``; ``x [N, ...]``, ``y [N, ...]`` on device.
    The last incomplete minibatch of each shuffled epoch is dropped (static shapes).
    """
    steps = n_data // batch_size

    def epoch(state: TrainState, x: jax.Array, y: jax.Array):
        key, shuffle_key, next_key = jax.random.split(state.rng_key, 3)
        order = jax.random.permutation(shuffle_key, n_data)[: steps * batch_size].reshape(steps, batch_size)

        def body(carry, inputs):
            params, opt_state = carry
            index, step_key = inputs
            params, opt_state, stats = step(params, opt_state, step_key, x[index], y[index], state.masks)
            return (params, opt_state), stats

        (params, opt_state), (loss, nll, kl) = jax.lax.scan(
            body, (state.params, state.opt_state), (order, jax.random.split(key, steps)))
        stats = EpochStats(jnp.mean(loss), jnp.mean(nll), jnp.mean(kl))
        return TrainState(params, opt_state, next_key, state.epoch + 1, state.masks), stats

    return epoch


def validate_data(bnn: SparseBNN, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, finiteness and labels before anything compiles; returns float32/int32 arrays."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2:
        raise ValueError(f"x must be [N, features...], got shape {x.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y have different lengths: {x.shape[0]} vs {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("the data set is empty")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x)))
        raise ValueError(f"x has {bad} non-finite values (NaN or inf); clean or impute them first")
    try:
        jax.eval_shape(bnn.functional.apply, bnn.functional.initial, jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32))
    except Exception as error:  # noqa: BLE001 - report the network's own complaint
        raise ValueError(f"inputs of shape {x.shape[1:]} do not fit the network: {error}") from error
    if bnn.likelihood == "categorical":
        if y.ndim != 1:
            raise ValueError(f"class labels must be a vector [N], got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise ValueError("class labels must be integers")
        classes = bnn.layers[-1].units
        if y.min() < 0 or y.max() >= classes:
            raise ValueError(f"labels must lie in [0, {classes}), got range [{y.min()}, {y.max()}]")
        return x, y.astype(np.int32)
    y = y.astype(np.float32).reshape(y.shape[0], -1)
    if not np.all(np.isfinite(y)):
        raise ValueError("y has non-finite values (NaN or inf)")
    return x, y


def init_state(bnn: SparseBNN, optimizer: optax.GradientTransformation, seed: int = 0,
               masks: Masks | None = None, params: Mapping[str, jax.Array] | None = None) -> TrainState:
    """A fresh state (or one starting from given ``params``, e.g. for fine-tuning)."""
    params = dict(bnn.init_params() if params is None else params)
    masks = masks or Masks()
    masks = Masks({k: jnp.asarray(v, jnp.float32) for k, v in masks.units.items()},
                  {k: jnp.asarray(v, jnp.float32) for k, v in masks.weights.items()})
    return TrainState(params, optimizer.init(params), jax.random.PRNGKey(seed), jnp.zeros((), jnp.int32), masks)


def kept_units(bnn: SparseBNN, params: Mapping[str, jax.Array], threshold: float = 0.5,
               masks: Masks | None = None) -> dict[str, int]:
    """Units per hidden layer kept by the median-probability model (and not masked off)."""
    from sparse_bnn.posterior import keep_masks
    keep = keep_masks(bnn, params, threshold, masks)
    return {l.name: int(np.sum(np.asarray(keep[l.name]))) if l.name in keep else l.units
            for l in bnn.layers[:-1]}


def save_checkpoint(directory: str | Path, state: TrainState, history: list[dict]) -> None:
    """Write ``state`` and ``history`` atomically (temp file + rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = serialization.to_bytes({"params": state.params, "opt_state": state.opt_state,
                                      "rng_key": state.rng_key, "epoch": state.epoch,
                                      "masks": {"units": state.masks.units, "weights": state.masks.weights}})
    for name, data in ((CHECKPOINT_FILE, payload), (HISTORY_FILE, json.dumps(history, indent=1).encode())):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)


def load_checkpoint(directory: str | Path, template: TrainState) -> tuple[TrainState, list[dict]] | None:
    """The checkpoint in ``directory`` shaped like ``template``, or ``None`` when there is none."""
    directory = Path(directory)
    if not (directory / CHECKPOINT_FILE).exists():
        return None
    target = {"params": template.params, "opt_state": template.opt_state,
              "rng_key": template.rng_key, "epoch": template.epoch,
              "masks": {"units": template.masks.units, "weights": template.masks.weights}}
    try:
        restored = serialization.from_bytes(target, (directory / CHECKPOINT_FILE).read_bytes())
        history = json.loads((directory / HISTORY_FILE).read_text())
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"checkpoint in {directory} is unreadable or belongs to another model: {error}") from error
    state = TrainState(restored["params"], restored["opt_state"], jnp.asarray(restored["rng_key"]),
                       jnp.asarray(restored["epoch"], jnp.int32),
                       Masks(dict(restored["masks"]["units"]), dict(restored["masks"]["weights"])))
    return state, history


def fit(bnn: SparseBNN, x, y, *, epochs: int, batch_size: int = 1024,
        optimizer: optax.GradientTransformation | None = None, seed: int = 0,
        augment: Callable | None = None, progress: bool = True,
        validation: tuple[Any, Any] | None = None, checkpoint_dir: str | Path | None = None,
        resume: bool = False, callbacks: Sequence[Callable[[int, dict, TrainState], None]] = (),
        masks: Masks | None = None, init_params: Mapping[str, jax.Array] | None = None) -> FitResult:
    """Fit ``bnn`` to ``(x, y)`` by SVI.

    Args:
      bnn: the model (network + prior + likelihood).
      x: inputs ``[N, ...]``; y: labels ``[N]`` or targets ``[N]``/``[N, out]``.
      epochs: total epochs (a resumed run continues up to this number).
      batch_size: minibatch size (the last incomplete batch of an epoch is dropped).
      optimizer: any optax transformation (default ``optax.adam(1e-3)``).
      seed: seeds initial shuffling and all guide noise.
      augment: ``(key, x_batch) -> x_batch`` applied inside the jitted step (e.g. flips).
      progress: a progress bar over epochs with loss, validation accuracy and kept units.
      validation: ``(x_val, y_val)`` evaluated with the posterior-mean network after each epoch.
      checkpoint_dir: write a checkpoint after every epoch (atomically).
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one.
      callbacks: ``callback(epoch, record, state)`` after each epoch.
      masks: fixed unit/entry masks (:class:`sparse_bnn.model.Masks`), e.g. for fine-tuning.
      init_params: start from these variational parameters instead of the initialisation.

    Returns:
      :class:`FitResult`. Raises :class:`DivergenceError` (holding the last good result) when the
      loss stops being finite.
    """
    if int(epochs) < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    x, y = validate_data(bnn, x, y)
    n_data = x.shape[0]
    if n_data != bnn.n_data:
        raise ValueError(f"the model was built for n_data={bnn.n_data} but x has {n_data} rows")
    batch_size = min(int(batch_size), n_data)
    optimizer = optimizer if optimizer is not None else optax.adam(1e-3)
    state, history = init_state(bnn, optimizer, seed, masks, init_params), []
    if resume:
        restored = load_checkpoint(checkpoint_dir, state)
        if restored is not None:
            state, history = restored
    x_device, y_device = jnp.asarray(x), jnp.asarray(y)
    epoch_fn = jax.jit(make_epoch(make_step(bnn, optimizer, augment), n_data, batch_size), donate_argnums=0)
    started = time.perf_counter()
    compiled = epoch_fn.lower(state, x_device, y_device).compile()
    compile_seconds = time.perf_counter() - started
    evaluate = _validation_fn(bnn, validation)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs, initial=int(state.epoch), desc="epochs", unit="epoch")
    while int(state.epoch) < epochs:
        last_good = jax.tree_util.tree_map(jnp.copy, state)
        started = time.perf_counter()
        new_state, stats = compiled(state, x_device, y_device)
        stats = jax.device_get(stats)
        seconds = time.perf_counter() - started
        if not all(np.isfinite(v) for v in stats):
            epoch = int(last_good.epoch) + 1
            where = f"; the last good checkpoint (epoch {int(last_good.epoch)}) is in {checkpoint_dir}" \
                if checkpoint_dir is not None else ""
            if bar is not None:
                bar.close()
            raise DivergenceError(
                f"the loss became non-finite in epoch {epoch} (loss={stats.loss}, nll={stats.nll}, "
                f"kl={stats.kl}); training stopped{where}. Try a smaller learning rate.",
                FitResult(bnn, last_good.params, history, last_good, compile_seconds))
        state = new_state
        record = {"epoch": int(state.epoch), "loss": float(stats.loss), "nll": float(stats.nll),
                  "kl": float(stats.kl), "kept": kept_units(bnn, state.params, masks=state.masks), "seconds": seconds}
        if evaluate is not None:
            record.update(evaluate(state.params, state.masks))
        history.append(record)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, state, history)
        for callback in callbacks:
            callback(int(state.epoch), record, state)
        if bar is not None:
            postfix = {"loss": f"{record['loss']:.4f}", "kept": "/".join(map(str, record["kept"].values()))}
            if "val_accuracy" in record:
                postfix["acc"] = f"{record['val_accuracy']:.4f}"
            bar.set_postfix(postfix)
            bar.update(1)
    if bar is not None:
        bar.close()
    return FitResult(bnn, state.params, history, state, compile_seconds)


def _validation_fn(bnn: SparseBNN, validation):
    if validation is None:
        return None
    from sparse_bnn.posterior import posterior_mean_params
    x_val, y_val = validate_data(bnn, *validation)
    x_device = jnp.asarray(x_val)
    outputs_fn = jax.jit(lambda params, masks: bnn.functional.apply(
        posterior_mean_params(bnn, params, masks=masks)[0], x_device))

    def evaluate(params, masks):
        outputs = np.asarray(outputs_fn(params, masks))
        if bnn.likelihood == "categorical":
            return {"val_accuracy": float(np.mean(np.argmax(outputs, -1) == y_val))}
        return {"val_rmse": float(np.sqrt(np.mean((outputs.reshape(y_val.shape) - y_val) ** 2)))}

    return evaluate

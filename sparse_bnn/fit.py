"""Fit a :class:`SparseBNN` by SVI: optax, one jitted ``lax.scan`` per epoch, checkpoints.

The data set lives on the devices; each epoch shuffles it with the state's key and scans over
minibatches, so there is no host round trip per step. Over several devices the same code runs
data-parallel on a mesh (minibatches sharded, parameters replicated, see
:mod:`sparse_bnn.distributed`); data too large for the devices are streamed from host memory in
chunks of minibatches, with the same permutation and keys, hence the same result. Everything is a pure function of the
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

from jax.sharding import Mesh

from sparse_bnn.distributed import (batch_sharding, check_batch_size, chunk_sharding, local_batch_slice, place,
                                    place_chunk, replicated, resolve_mesh, should_stream)
from sparse_bnn.elbo import elbo_terms
from sparse_bnn.model import Masks, SparseBNN

CHECKPOINT_FILE = "checkpoint.msgpack"
HISTORY_FILE = "history.json"
STREAM_CHUNK_BYTES = 64 * 2**20  # inputs per streamed chunk (two chunks are in flight at a time)
# Seconds of training between checkpoint writes. A write (three files, each fsynced; the history
# grows with the run) took 4-30 ms for the MLP 784-400-400-10 on a local disk, about one epoch of
# the shrunk network, and every fsync costs what the file system makes it cost.
CHECKPOINT_INTERVAL = 10.0


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


INDICATOR_SUFFIX = ".z.logit"


def scale_indicator_updates(factor: float) -> optax.GradientTransformation:
    """Multiply the updates of the indicator logits (``*.z.logit``) by ``factor`` (stateless)."""

    def update(updates, state, params=None):
        return {k: (u * factor if k.endswith(INDICATOR_SUFFIX) else u) for k, u in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


LR_SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(learning_rate: float, schedule: str = "constant", total_steps: int | None = None,
                           final_fraction: float = 0.1) -> float | optax.Schedule:
    """The learning rate over the optimiser's steps.

    * ``"constant"``: ``learning_rate`` (a float: the optimiser state is plain Adam's);
    * ``"cosine"``: from ``learning_rate`` to ``final_fraction * learning_rate`` at step
      ``total_steps`` along a half cosine (``optax.cosine_decay_schedule``), then flat;
    * ``"linear"``: the same ends joined by a straight line (``optax.linear_schedule``).
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if schedule == "constant":
        return learning_rate
    if total_steps is None or int(total_steps) <= 0:
        raise ValueError(f"the {schedule} schedule decays over total_steps, which must be a positive "
                         f"integer (epochs x steps per epoch), got {total_steps}")
    if not (np.isfinite(final_fraction) and 0.0 < final_fraction <= 1.0):
        raise ValueError(f"final_fraction (of the learning rate at the end) must lie in (0, 1], got {final_fraction}")
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, int(total_steps), alpha=final_fraction)
    return optax.linear_schedule(learning_rate, final_fraction * learning_rate, int(total_steps))


def svi_optimizer(learning_rate: float = 1e-3, indicator_learning_rate: float | None = None, *,
                  schedule: str = "constant", total_steps: int | None = None, final_fraction: float = 0.1
                  ) -> optax.GradientTransformation:
    """Adam at ``learning_rate``; indicator logits at ``indicator_learning_rate`` when given.

    ``schedule``, ``total_steps``, ``final_fraction``: :func:`learning_rate_schedule`; both
    rates follow it (the indicators' stays ``indicator_learning_rate / learning_rate`` times the
    weights'). Measured on Fashion-MNIST (MLP 784-400-400-10, ``sigma_0 = 0.3``, README "Learning-rate
    schedules"): a decay to 0.1 changes SS-GHS's accuracy by at most 0.3 point; its BMA's ECE
    fell from 0.025 to 0.014-0.017 in 100 epochs without augmentation, not in 300 with flips
    (0.028 -> 0.030). SS-GL gained 1.6 points there (85.2%) but kept 15% of the weights.

    Under Adam every logit moves about its learning rate per step whatever the size of its
    gradient, so the indicators' rate sets how fast units are decided. What works depends on
    the initial posterior scales (``SparseBNN(rho_init=...)``), measured on Fashion-MNIST with
    the MLP 784-400-400-10 (README, "Settings that prune"):

    * ``rho_init=-6`` (the reference): the slab KL is large and entropy-dominated; with Adam
      1e-3 for everything all 800 units were off by epoch 70. Indicators *slower* than the
      weights (3e-3 / 1e-3) avoid the collapse but leave hundreds of units undecided after 150
      epochs.
    * ``rho_init=-3``: indicators *faster* than the weights (3e-3 / 1e-2) decide within ~60
      epochs (9 + 12 units kept, inclusion probabilities at 0 or 1, 84.2% test accuracy) and
      reach a lower loss than one shared rate (3e-3: 112 + 20 units, many undecided).
    """
    for name, value in (("learning_rate", learning_rate), ("indicator_learning_rate", indicator_learning_rate)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive, got {value}")
    adam = optax.adam(learning_rate_schedule(learning_rate, schedule, total_steps, final_fraction))
    if indicator_learning_rate is None or indicator_learning_rate == learning_rate:
        return adam
    return optax.chain(adam, scale_indicator_updates(indicator_learning_rate / learning_rate))


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


def epoch_plan(rng_key: jax.Array, n_data: int, batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """An epoch's random choices, drawn from the state's key.

    Returns ``(order [steps, batch_size] int32, step_keys [steps, 2], next_key [2])``: the
    shuffled row indices of each minibatch (the last incomplete one dropped), the key of each
    step, and the key the next epoch starts from. Device-resident and streamed epochs both use
    this, so they see the same minibatches and the same noise.
    """
    steps = n_data // batch_size
    key, shuffle_key, next_key = jax.random.split(rng_key, 3)
    order = jax.random.permutation(shuffle_key, n_data)[: steps * batch_size].reshape(steps, batch_size)
    return order, jax.random.split(key, steps), next_key


def _scan_steps(step: Callable, params, opt_state, masks: Masks, batches, mesh: Mesh | None,
                gather: Callable | None = None):
    """``lax.scan`` of ``step`` over ``batches`` (a pytree with a leading ``[steps]`` axis that ends
    in the step keys). ``gather(batch) -> (x, y)`` turns one scanned element into a minibatch;
    with a ``mesh``, the minibatch is kept sharded along the batch axis and the carry replicated."""

    def body(carry, inputs):
        params, opt_state = carry
        *batch, step_key = inputs
        x, y = gather(*batch) if gather is not None else batch
        if mesh is not None:
            x, y = jax.lax.with_sharding_constraint((x, y), batch_sharding(mesh))
        params, opt_state, stats = step(params, opt_state, step_key, x, y, masks)
        if mesh is not None:
            params, opt_state = jax.lax.with_sharding_constraint((params, opt_state), replicated(mesh))
        return (params, opt_state), stats

    return jax.lax.scan(body, (params, opt_state), batches)


def make_epoch(step: Callable, n_data: int, batch_size: int, mesh: Mesh | None = None) -> Callable:
    """One epoch: shuffle, then ``lax.scan`` of ``step`` over ``n_data // batch_size`` minibatches.

    Returns ``epoch(state, x, y) -> (state, EpochStats)``; ``x [N, ...]``, ``y [N, ...]`` on device.
    The last incomplete minibatch of each shuffled epoch is dropped (static shapes).
    With a ``mesh`` (see :mod:`sparse_bnn.distributed`), ``x``/``y`` are expected replicated: the
    shuffled indices are sharded along the batch axis, so each device gathers its own rows and
    every minibatch is sharded over ``"data"``; parameters and optimiser state stay replicated.
    """

    def epoch(state: TrainState, x: jax.Array, y: jax.Array):
        order, step_keys, next_key = epoch_plan(state.rng_key, n_data, batch_size)
        if mesh is not None:
            order = jax.lax.with_sharding_constraint(order, chunk_sharding(mesh))
        (params, opt_state), (loss, nll, kl) = _scan_steps(
            step, state.params, state.opt_state, state.masks, (order, step_keys), mesh,
            gather=lambda index: (x[index], y[index]))
        stats = EpochStats(jnp.mean(loss), jnp.mean(nll), jnp.mean(kl))
        return TrainState(params, opt_state, next_key, state.epoch + 1, state.masks), stats

    return epoch


class StreamingEpoch:
    """One epoch fed from host memory in chunks of ``chunk_steps`` minibatches, with prefetching.

    ``epoch(state, x, y) -> (state, EpochStats)`` with ``x``, ``y`` host arrays (NumPy, or a
    ``numpy.memmap``): the permutation of :func:`epoch_plan` is gathered on the host one chunk
    ``[chunk_steps, batch_size, ...]`` at a time, put on the mesh sharded along the batch axis,
    and run by one jitted ``lax.scan``; the next chunk is gathered and sent while the devices
    work on the current one. The same seed gives the same result as :func:`make_epoch`.
    """

    def __init__(self, step: Callable, n_data: int, batch_size: int, mesh: Mesh, chunk_steps: int):
        if int(chunk_steps) <= 0:
            raise ValueError(f"chunk_steps must be positive, got {chunk_steps}")
        self.n_data, self.batch_size, self.mesh = n_data, batch_size, mesh
        self.steps = n_data // batch_size
        self.chunk_steps = min(int(chunk_steps), self.steps)
        self.columns = local_batch_slice(mesh, batch_size)
        self._plan = jax.jit(lambda key: epoch_plan(key, n_data, batch_size), out_shardings=replicated(mesh))

        def run_chunk(params, opt_state, masks, x_chunk, y_chunk, step_keys):
            return _scan_steps(step, params, opt_state, masks, (x_chunk, y_chunk, step_keys), mesh)

        self._run_chunk = jax.jit(run_chunk, donate_argnums=(0, 1), out_shardings=replicated(mesh))
        self._compiled: dict[int, Any] = {}

    def chunk_bounds(self) -> list[tuple[int, int]]:
        """``[(first step, end step), ...]`` of every chunk of an epoch."""
        return [(start, min(start + self.chunk_steps, self.steps)) for start in range(0, self.steps, self.chunk_steps)]

    def compile(self, state: TrainState, x: np.ndarray, y: np.ndarray) -> None:
        """Compile the chunk scans ahead of time (one for full chunks, one for a shorter last chunk)."""
        for steps in sorted({end - start for start, end in self.chunk_bounds()}):
            self._executable(state, x, y, steps)

    def _executable(self, state: TrainState, x: np.ndarray, y: np.ndarray, steps: int):
        if steps not in self._compiled:
            def chunk_spec(array):
                shape = (steps, self.batch_size, *array.shape[1:])
                return jax.ShapeDtypeStruct(shape, array.dtype, sharding=chunk_sharding(self.mesh))
            keys = jax.ShapeDtypeStruct((steps, *state.rng_key.shape), state.rng_key.dtype,
                                        sharding=replicated(self.mesh))
            self._compiled[steps] = self._run_chunk.lower(
                state.params, state.opt_state, state.masks, chunk_spec(x), chunk_spec(y), keys).compile()
        return self._compiled[steps]

    def _load(self, x: np.ndarray, y: np.ndarray, order: np.ndarray, step_keys: np.ndarray,
              bounds: tuple[int, int]):
        start, end = bounds
        index = order[start:end, self.columns]  # this process's rows of each global minibatch
        shape = lambda array: (end - start, self.batch_size, *array.shape[1:])  # noqa: E731
        return (place_chunk(np.take(x, index, axis=0), self.mesh, shape(x)),
                place_chunk(np.take(y, index, axis=0), self.mesh, shape(y)),
                place(step_keys[start:end], replicated(self.mesh)))

    def __call__(self, state: TrainState, x: np.ndarray, y: np.ndarray) -> tuple[TrainState, EpochStats]:
        order, step_keys, next_key = self._plan(state.rng_key)
        order, step_keys = np.asarray(order), np.asarray(step_keys)
        bounds = self.chunk_bounds()
        params, opt_state, per_step = state.params, state.opt_state, []
        upcoming = self._load(x, y, order, step_keys, bounds[0])
        for i, (start, end) in enumerate(bounds):
            current = upcoming
            (params, opt_state), stats = self._executable(state, x, y, end - start)(
                params, opt_state, state.masks, *current)
            if i + 1 < len(bounds):  # dispatch is asynchronous: gather and send the next chunk meanwhile
                upcoming = self._load(x, y, order, step_keys, bounds[i + 1])
            per_step.append(stats)
        loss, nll, kl = (jnp.concatenate(values) for values in zip(*per_step))
        stats = EpochStats(jnp.mean(loss), jnp.mean(nll), jnp.mean(kl))
        return TrainState(params, opt_state, next_key, state.epoch + 1, state.masks), stats


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
    # copies: the epoch donates its state, and the caller's arrays must survive it
    params = {k: jnp.copy(v) for k, v in (bnn.init_params() if params is None else params).items()}
    masks = masks or Masks()
    masks = Masks({k: jnp.asarray(v, jnp.float32) for k, v in masks.units.items()},
                  {k: jnp.asarray(v, jnp.float32) for k, v in masks.weights.items()})
    return TrainState(params, optimizer.init(params), jax.random.PRNGKey(seed), jnp.zeros((), jnp.int32), masks)


def check_checkpoint_interval(seconds: float) -> float:
    """``seconds`` as a float, or ``ValueError`` unless it is ``>= 0`` (``inf``: at the end only)."""
    seconds = float(seconds)
    if not seconds >= 0.0:
        raise ValueError(f"checkpoint_interval must be >= 0 seconds (0: after every epoch), got {seconds}")
    return seconds


def kept_units(bnn: SparseBNN, params: Mapping[str, jax.Array], threshold: float = 0.5,
               masks: Masks | None = None) -> dict[str, int]:
    """Units per hidden layer kept by the median-probability model (and not masked off)."""
    from sparse_bnn.posterior import keep_masks
    keep = keep_masks(bnn, params, threshold, masks)
    return {l.name: int(np.sum(np.asarray(keep[l.name]))) if l.name in keep else l.units
            for l in bnn.layers[:-1]}


def epoch_summary(bnn: SparseBNN, state: TrainState, evaluate: Callable | None) -> dict:
    """The history fields every training scheme records after an epoch: ``kept`` units per hidden
    layer and, with a validation set (``evaluate`` from :func:`make_validation`), its metrics."""
    summary = {"kept": kept_units(bnn, state.params, masks=state.masks)}
    if evaluate is not None:
        summary.update(evaluate(state.params, state.masks))
    return summary


def save_checkpoint(directory: str | Path, state: TrainState, history: list[dict]) -> None:
    """Write ``history`` then ``state``, each atomically (temp file + rename).

    A crash between the two renames leaves a history one epoch ahead of the checkpoint, never
    behind it; :func:`load_checkpoint` drops the records past the checkpoint's epoch."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = serialization.to_bytes({"params": state.params, "opt_state": state.opt_state,
                                      "rng_key": state.rng_key, "epoch": state.epoch,
                                      "masks": {"units": state.masks.units, "weights": state.masks.weights}})
    for name, data in ((HISTORY_FILE, json.dumps(history, indent=1).encode()), (CHECKPOINT_FILE, payload)):
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
    # records of epochs the checkpoint does not hold (a crash between the two writes)
    history = [record for record in history if int(record.get("epoch", 0)) <= int(state.epoch)]
    return state, history


def fit(bnn: SparseBNN, x, y, *, epochs: int, batch_size: int = 1024,
        optimizer: optax.GradientTransformation | None = None, seed: int = 0,
        augment: Callable | None = None, progress: bool = True,
        validation: tuple[Any, Any] | None = None, checkpoint_dir: str | Path | None = None,
        resume: bool = False, callbacks: Sequence[Callable[[int, dict, TrainState], None]] = (),
        masks: Masks | None = None, init_params: Mapping[str, jax.Array] | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL, mesh: Mesh | None = None,
        devices: int | Sequence[jax.Device] | None = None,
        streaming: bool | None = None, stream_chunk_steps: int | None = None) -> FitResult:
    """Fit ``bnn`` to ``(x, y)`` by SVI, data-parallel over a device mesh.

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
      checkpoint_dir: where checkpoints go (each written atomically): see :func:`run_epochs`.
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one.
      callbacks: ``callback(epoch, record, state)`` after each epoch.
      masks: fixed unit/entry masks (:class:`sparse_bnn.model.Masks`), e.g. for fine-tuning.
      init_params: start from these variational parameters instead of the initialisation.
      checkpoint_interval: seconds of training between checkpoints (``0``: after every epoch);
        the last epoch is always written.
      mesh: a :class:`jax.sharding.Mesh` with an axis ``"data"``: every minibatch is sharded along
        it, parameters and optimiser state are replicated, XLA reduces the gradients
        (:mod:`sparse_bnn.distributed`). ``batch_size`` is the global batch and must divide by
        the size of the ``"data"`` axis.
      devices: instead of ``mesh``: the first ``N`` local devices (or a list of devices); by
        default every device (one device: the plain single-device computation).
      streaming: ``True`` keeps the data in host memory and streams each epoch to the devices in
        chunks with prefetching; ``False`` puts the data on every device; ``None`` chooses by
        size (:func:`sparse_bnn.distributed.should_stream`). Both give the same result.
      stream_chunk_steps: minibatches per streamed chunk (default: about
        ``STREAM_CHUNK_BYTES`` of inputs per chunk).

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
    if stream_chunk_steps is not None and int(stream_chunk_steps) <= 0:
        raise ValueError(f"stream_chunk_steps must be positive, got {stream_chunk_steps}")
    checkpoint_interval = check_checkpoint_interval(checkpoint_interval)
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
    mesh = resolve_mesh(mesh, devices)
    check_batch_size(batch_size, mesh)
    state = place(state, replicated(mesh))
    step = make_step(bnn, optimizer, augment)
    if streaming is None:
        streaming = should_stream(x.nbytes + y.nbytes, mesh)
    started = time.perf_counter()
    if streaming:
        if stream_chunk_steps is None:
            stream_chunk_steps = max(1, STREAM_CHUNK_BYTES // (batch_size * max(1, x[0].nbytes)))
        x_data, y_data = x, y
        compiled = StreamingEpoch(step, n_data, batch_size, mesh, stream_chunk_steps)
        compiled.compile(state, x_data, y_data)
    else:
        x_data, y_data = place((x, y), replicated(mesh))
        epoch_fn = jax.jit(make_epoch(step, n_data, batch_size, mesh), donate_argnums=0,
                           out_shardings=replicated(mesh))
        compiled = epoch_fn.lower(state, x_data, y_data).compile()
    compile_seconds = time.perf_counter() - started
    evaluate = make_validation(bnn, validation, mesh)

    def finish_epoch(state: TrainState, record: dict) -> TrainState:
        record.update(epoch_summary(bnn, state, evaluate))
        return state

    state = run_epochs(
        state, history, epochs=epochs, run_epoch=lambda state: compiled(state, x_data, y_data),
        finish_epoch=finish_epoch,
        result=lambda state: FitResult(bnn, state.params, history, state, compile_seconds),
        checkpoint_dir=checkpoint_dir, checkpoint_interval=checkpoint_interval, callbacks=callbacks,
        progress=progress)
    return FitResult(bnn, state.params, history, state, compile_seconds)


def run_epochs(state: TrainState, history: list[dict], *, epochs: int,
               run_epoch: Callable[[TrainState], tuple[TrainState, EpochStats]],
               finish_epoch: Callable[[TrainState, dict], TrainState],
               result: Callable[[TrainState], Any],
               checkpoint_dir: str | Path | None = None,
               save: Callable[[TrainState, list[dict]], None] | None = None,
               checkpoint_interval: float = CHECKPOINT_INTERVAL,
               callbacks: Sequence[Callable[[int, dict, TrainState], None]] = (),
               progress: bool = False, description: str = "epochs",
               postfix: Callable[[dict], dict] = lambda record: {}) -> TrainState:
    """The epoch loop every training function shares (fit, BMR, shrinking).

    Each epoch: ``run_epoch(state) -> (state, stats)``; ``finish_epoch(state, record)``
    completes the history record (kept units, validation, pruning...) and may return a changed
    state; then the record is appended, callbacks called and the progress bar advanced.
    ``run_epoch`` and ``result`` may close over variables that ``finish_epoch`` changes
    (shrinking swaps the model and its compiled epoch). Returns the final state.

    Checkpoints (``save(state, history)``, by default :func:`save_checkpoint` into
    ``checkpoint_dir``) are written after the last epoch and after every epoch that ends
    ``checkpoint_interval`` seconds or more after the loop started or last wrote one (``0``:
    every epoch), so a killed run resumes at most that much training behind. A non-finite loss
    writes the state before the diverging epoch (the last good one) and raises
    :class:`DivergenceError` holding ``result(last_good_state)``.
    """
    if save is None and checkpoint_dir is not None:
        save = lambda state, history: save_checkpoint(checkpoint_dir, state, history)
    checkpoint_interval = check_checkpoint_interval(checkpoint_interval)
    saved_at = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=epochs, initial=int(state.epoch), desc=description, unit="epoch")
    try:
        while int(state.epoch) < epochs:
            # a copy (the epoch donates its state) that keeps each array's sharding and, unlike
            # jnp.copy, compiles nothing: a shrinking run would compile one copy per new shape
            last_good = jax.tree_util.tree_map(lambda v: jax.device_put(v, may_alias=False), state)
            started = time.perf_counter()
            new_state, stats = run_epoch(state)
            stats = jax.device_get(stats)
            seconds = time.perf_counter() - started
            if not all(np.isfinite(v) for v in stats):
                where = ""
                if save is not None:
                    save(last_good, history)
                    where = f"; the last good checkpoint (epoch {int(last_good.epoch)}) is in {checkpoint_dir}"
                raise DivergenceError(
                    f"the loss became non-finite in epoch {int(last_good.epoch) + 1} (loss={stats.loss}, "
                    f"nll={stats.nll}, kl={stats.kl}); training stopped{where}. Try a smaller learning rate.",
                    result(last_good))
            state = new_state
            record = {"epoch": int(state.epoch), "loss": float(stats.loss), "nll": float(stats.nll),
                      "kl": float(stats.kl), "seconds": seconds}
            state = finish_epoch(state, record)
            history.append(record)
            if save is not None and (int(state.epoch) >= epochs
                                     or time.perf_counter() - saved_at >= checkpoint_interval):
                save(state, history)
                saved_at = time.perf_counter()
            for callback in callbacks:
                callback(int(state.epoch), record, state)
            if bar is not None:
                shown = {"loss": f"{record['loss']:.4f}", **postfix(record)}
                if "kept" in record and "kept" not in shown:
                    shown["kept"] = "/".join(map(str, record["kept"].values()))
                if "val_accuracy" in record:
                    shown["acc"] = f"{record['val_accuracy']:.4f}"
                bar.set_postfix(shown)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return state


def make_validation(bnn: SparseBNN, validation, mesh: Mesh | None = None) -> Callable | None:
    """``evaluate(params, masks) -> {"val_accuracy" | "val_rmse": float}`` with the posterior-mean
    network: what every training loop (fit, BMR, shrinking) records after an epoch."""
    if validation is None:
        return None
    from sparse_bnn.posterior import posterior_mean_params
    x_val, y_val = validate_data(bnn, *validation)
    x_device = jnp.asarray(x_val) if mesh is None else place(x_val, replicated(mesh))
    # x is an argument, not a closed-over constant: XLA would otherwise constant-fold it
    outputs_fn = jax.jit(lambda params, masks, x: bnn.functional.apply(
        posterior_mean_params(bnn, params, masks=masks)[0], x))

    def evaluate(params, masks):
        outputs = np.asarray(outputs_fn(params, masks, x_device))
        if bnn.likelihood == "categorical":
            return {"val_accuracy": float(np.mean(np.argmax(outputs, -1) == y_val))}
        return {"val_rmse": float(np.sqrt(np.mean((outputs.reshape(y_val.shape) - y_val) ** 2)))}

    return evaluate

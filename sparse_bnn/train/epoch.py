"""The compiled epoch: SVI steps in one ``lax.scan``, on a device mesh, resident or streamed.

The data set lives on the devices (:func:`make_epoch`) or in host memory, streamed in chunks of
minibatches (:class:`StreamingEpoch`); both draw the same permutation and keys from the state
(:func:`epoch_plan`), hence give the same result. Over several devices each minibatch is
sharded along the mesh's ``"data"`` axis and parameters are replicated
(:mod:`sparse_bnn.train.distributed`). :func:`compile_epoch` builds either for a model and is what
the training loop calls again whenever a hook hands it a smaller network.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from sparse_bnn.train.distributed import (batch_sharding, chunk_sharding, local_batch_slice, place, place_chunk,
                                          replicated)
from sparse_bnn.core.elbo import elbo_terms
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.train.state import EpochStats, TrainState

STREAM_CHUNK_BYTES = 64 * 2**20  # inputs per streamed chunk (two chunks are in flight at a time)


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
    With a ``mesh`` (see :mod:`sparse_bnn.train.distributed`), ``x``/``y`` are expected replicated: the
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


class TrainingData(NamedTuple):
    """Where an epoch's data live: on the mesh (``x_device``, ``y_device`` replicated) or in host
    memory, streamed ``chunk_steps`` minibatches at a time (``x_device`` is then ``None``)."""

    x: np.ndarray
    y: np.ndarray
    mesh: Mesh
    batch_size: int
    chunk_steps: int | None = None
    x_device: jax.Array | None = None
    y_device: jax.Array | None = None

    @property
    def n_data(self) -> int:
        return int(self.x.shape[0])

    @property
    def streaming(self) -> bool:
        return self.x_device is None


def training_data(x: np.ndarray, y: np.ndarray, mesh: Mesh, batch_size: int, streaming: bool,
                  chunk_steps: int | None = None) -> TrainingData:
    """Put ``(x, y)`` where the epochs will read them (see :class:`TrainingData`).

    ``chunk_steps`` (streaming only) defaults to about ``STREAM_CHUNK_BYTES`` of inputs.
    """
    if chunk_steps is not None and int(chunk_steps) <= 0:
        raise ValueError(f"stream_chunk_steps must be positive, got {chunk_steps}")
    if streaming:
        if chunk_steps is None:
            chunk_steps = max(1, STREAM_CHUNK_BYTES // (batch_size * max(1, x[0].nbytes)))
        return TrainingData(x, y, mesh, batch_size, int(chunk_steps))
    x_device, y_device = place((x, y), replicated(mesh))
    return TrainingData(x, y, mesh, batch_size, None, x_device, y_device)


def compile_epoch(bnn: SparseBNN, optimizer: optax.GradientTransformation, data: TrainingData,
                  template: TrainState, augment: Callable | None = None
                  ) -> Callable[[TrainState], tuple[TrainState, EpochStats]]:
    """``run_epoch(state) -> (state, EpochStats)`` for ``bnn`` on ``data``, compiled now.

    ``template`` fixes the state's shapes and shardings (place it on ``data.mesh`` first). The
    state passed in is donated. Resident data: one jitted ``lax.scan`` over the whole epoch;
    streamed data: one per chunk (:class:`StreamingEpoch`).
    """
    step = make_step(bnn, optimizer, augment)
    if data.streaming:
        epoch = StreamingEpoch(step, data.n_data, data.batch_size, data.mesh, data.chunk_steps)
        epoch.compile(template, data.x, data.y)
        return lambda state: epoch(state, data.x, data.y)
    # on one device the sharding annotations inside the scan only cost time
    inner_mesh = data.mesh if data.mesh.devices.size > 1 else None
    epoch_fn = jax.jit(make_epoch(step, data.n_data, data.batch_size, inner_mesh), donate_argnums=0,
                       out_shardings=replicated(data.mesh))
    compiled = epoch_fn.lower(template, data.x_device, data.y_device).compile()
    return lambda state: compiled(state, data.x_device, data.y_device)

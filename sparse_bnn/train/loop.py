"""The training loop: :func:`fit` runs compiled SVI epochs and calls hooks between them.

Everything a run does besides SVI steps is a hook (:mod:`sparse_bnn.train.hooks`): shrinking
the network (:class:`sparse_bnn.sparsify.shrink.Shrink`), Bayesian model reduction
(:class:`sparse_bnn.sparsify.reduction.Reduction`), kept-unit counts, validation, a user's early stop.
The loop owns what every run shares: the device mesh and where the data live, compiling the
epoch (again whenever a hook hands over a smaller network), the divergence guard, checkpoints
and resuming, callbacks and the progress bar. Since every hook runs on the same loop, every hook
works on one device or several, with the data resident or streamed, and resumes exactly.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from sparse_bnn.train.distributed import check_batch_size, place, replicated, resolve_mesh, should_stream
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.train.checkpoint import read_checkpoint, restore_state, save_checkpoint
from sparse_bnn.train.epoch import compile_epoch, init_state, training_data, validate_data
from sparse_bnn.train.hooks import Hook, KeptUnits, LoopInfo, ProgressBar, Validation, order_hooks
from sparse_bnn.train.state import DivergenceError, EpochStats, FitResult, Fitting, TrainState

# Seconds of training between checkpoint writes (a write fsyncs two files).
CHECKPOINT_INTERVAL = 10.0

Callback = Callable[[int, dict, TrainState], None]
CompileEpoch = Callable[[SparseBNN, TrainState], Callable[[TrainState], tuple[TrainState, EpochStats]]]

__all__ = ["CHECKPOINT_INTERVAL", "Checkpointer", "PreparedFit", "check_checkpoint_interval", "fit", "prepare_fit",
           "run_loop", "run_prepared"]


def check_checkpoint_interval(seconds: float) -> float:
    """``seconds`` as a float, or ``ValueError`` unless it is ``>= 0`` (``inf``: at the end only)."""
    seconds = float(seconds)
    if not seconds >= 0.0:
        raise ValueError(f"checkpoint_interval must be >= 0 seconds (0: after every epoch), got {seconds}")
    return seconds


class Checkpointer:
    """Writes a checkpoint into ``directory`` after the last epoch and after every epoch that ends
    ``interval`` seconds or more after the previous write (``0``: every epoch), so that a killed
    run resumes at most that much training behind."""

    def __init__(self, directory: str | Path, interval: float = CHECKPOINT_INTERVAL,
                 save: Callable[..., None] = save_checkpoint):
        self.directory, self.interval, self._save = Path(directory), check_checkpoint_interval(interval), save
        self._saved_at = time.perf_counter()

    def due(self, epoch: int, epochs: int) -> bool:
        return epoch >= epochs or time.perf_counter() - self._saved_at >= self.interval

    def write(self, state: TrainState, history: list[dict], hooks: dict[str, Any]) -> None:
        self._save(self.directory, state, history, hooks)
        self._saved_at = time.perf_counter()


def fit(bnn: SparseBNN, x, y, *, epochs: int, batch_size: int = 1024,
        optimizer: optax.GradientTransformation | None = None, seed: int = 0,
        augment: Callable | None = None, progress: bool = True,
        validation: tuple[Any, Any] | None = None, hooks: Sequence[Hook] = (),
        checkpoint_dir: str | Path | None = None, resume: bool = False,
        callbacks: Sequence[Callback] = (), masks: Masks | None = None,
        init_params: Mapping[str, jax.Array] | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL, mesh: Mesh | None = None,
        devices: int | Sequence[jax.Device] | None = None,
        streaming: bool | None = None, stream_chunk_steps: int | None = None,
        new_optimizer: bool = False) -> FitResult:
    """Fit ``bnn`` to ``(x, y)`` by SVI, data-parallel over a device mesh, with hooks between epochs.

    Args:
      bnn: the model (network + prior + likelihood).
      x: inputs ``[N, ...]``; y: labels ``[N]`` or targets ``[N]``/``[N, out]``.
      epochs: total epochs (a resumed run continues up to this number).
      batch_size: minibatch size (the last incomplete batch of an epoch is dropped; at most the
        number of examples: a larger one is cut to it, one step per epoch).
      optimizer: any optax transformation (default ``optax.adam(1e-3)``).
      seed: seeds initial shuffling and all guide noise.
      augment: ``(key, x_batch) -> x_batch`` applied inside the jitted step (e.g. flips).
      progress: a progress bar over epochs with the loss and the hooks' fields.
      validation: ``(x_val, y_val)`` evaluated with the posterior-mean network after each epoch
        (the :class:`~sparse_bnn.train.hooks.Validation` hook).
      hooks: :class:`~sparse_bnn.train.hooks.Hook` objects run after every epoch, e.g.
        ``sparse_bnn.sparsify.shrink.Shrink()`` or ``sparse_bnn.sparsify.reduction.Reduction("nodewise")``.
      checkpoint_dir: where checkpoints go (:class:`Checkpointer`).
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (hooks rebuild
        the network it was written with).
      callbacks: ``callback(epoch, record, state)`` after each epoch (after the hooks).
      masks: fixed unit/entry masks (:class:`sparse_bnn.core.model.Masks`), e.g. for fine-tuning.
      init_params: start from these variational parameters instead of the initialisation.
      checkpoint_interval: seconds of training between checkpoints (``0``: after every epoch);
        the last epoch is always written.
      mesh: a :class:`jax.sharding.Mesh` with an axis ``"data"``: every minibatch is sharded along
        it, parameters and optimiser state are replicated, XLA reduces the gradients
        (:mod:`sparse_bnn.train.distributed`). ``batch_size`` is the global batch and must divide by
        the size of the ``"data"`` axis.
      devices: instead of ``mesh``: the first ``N`` local devices (or a list of devices); by
        default every device (one device: the plain single-device computation).
      streaming: ``True`` keeps the data in host memory and streams each epoch to the devices in
        chunks with prefetching; ``False`` puts the data on every device; ``None`` chooses by
        size (:func:`sparse_bnn.train.distributed.should_stream`). Both give the same result.
      stream_chunk_steps: minibatches per streamed chunk (default: about 64 MiB of inputs).
      new_optimizer: resuming, ``optimizer`` differs from the one the checkpoint was written with
        (other learning rates or schedule): keep the checkpoint's Adam moments and step count
        (:func:`sparse_bnn.train.checkpoint.restore_state`).

    Returns:
      :class:`~sparse_bnn.train.state.FitResult`. Raises
      :class:`~sparse_bnn.train.state.DivergenceError` (holding the last good result) when the
      loss stops being finite; with ``checkpoint_dir`` that state is written first.

    ``fit`` is :func:`run_prepared` of :func:`prepare_fit`, which checks every argument and
    restores the checkpoint (checked against the model) before anything compiles or trains.
    """
    return run_prepared(prepare_fit(
        bnn, x, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, seed=seed, augment=augment,
        progress=progress, validation=validation, hooks=hooks, checkpoint_dir=checkpoint_dir, resume=resume,
        callbacks=callbacks, masks=masks, init_params=init_params, checkpoint_interval=checkpoint_interval,
        mesh=mesh, devices=devices, streaming=streaming, stream_chunk_steps=stream_chunk_steps,
        new_optimizer=new_optimizer))


class PreparedFit(NamedTuple):
    """A :func:`fit` checked and ready to compile and train (:func:`prepare_fit`)."""

    fitting: Fitting
    hooks: tuple[Hook, ...]
    hook_states: dict[str, Any]
    history: list[dict]
    epochs: int
    mesh: Mesh
    compile_epoch: CompileEpoch
    checkpointer: Checkpointer | None
    callbacks: tuple[Callback, ...]
    progress: bool


def prepare_fit(bnn: SparseBNN, x, y, *, epochs: int, batch_size: int = 1024,
                optimizer: optax.GradientTransformation | None = None, seed: int = 0,
                augment: Callable | None = None, progress: bool = True,
                validation: tuple[Any, Any] | None = None, hooks: Sequence[Hook] = (),
                checkpoint_dir: str | Path | None = None, resume: bool = False,
                callbacks: Sequence[Callback] = (), masks: Masks | None = None,
                init_params: Mapping[str, jax.Array] | None = None,
                checkpoint_interval: float = CHECKPOINT_INTERVAL, mesh: Mesh | None = None,
                devices: int | Sequence[jax.Device] | None = None,
                streaming: bool | None = None, stream_chunk_steps: int | None = None,
                new_optimizer: bool = False) -> PreparedFit:
    """Check :func:`fit`'s arguments and prepare its loop: initialise the state and the hooks,
    restore the checkpoint when resuming (``ValueError`` naming the first array that does not
    fit the model), place the data. Nothing is compiled or trained yet: :func:`run_prepared`
    does that. The arguments are :func:`fit`'s."""
    if int(epochs) < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    checkpoint_interval = check_checkpoint_interval(checkpoint_interval)
    x, y = validate_data(bnn, x, y)
    n_data = x.shape[0]
    if n_data != bnn.n_data:
        raise ValueError(f"the model was built for n_data={bnn.n_data} but x has {n_data} rows")
    batch_size = min(int(batch_size), n_data)
    optimizer = optimizer if optimizer is not None else optax.adam(1e-3)
    mesh = resolve_mesh(mesh, devices)
    check_batch_size(batch_size, mesh)
    info = LoopInfo(mesh, int(epochs), batch_size, n_data)
    builtins = [KeptUnits()] + ([Validation(*validation)] if validation is not None else [])
    hooks = order_hooks(hooks, builtins)

    fitting = Fitting(bnn, init_state(bnn, optimizer, seed, masks, init_params))
    hook_states: dict[str, Any] = {}
    for hook in hooks:
        fitting, hook_states[hook.name] = hook.init(fitting, info)
    history: list[dict] = []
    saved = read_checkpoint(checkpoint_dir) if resume else None
    if saved is not None:
        for hook in hooks:
            if hook.name in saved.hooks:
                fitting, hook_states[hook.name] = hook.restore(fitting, saved.hooks[hook.name], info)
        restored = restore_state(fitting.state, saved, checkpoint_dir, new_optimizer=new_optimizer)
        fitting = fitting._replace(state=restored)
        history = saved.history

    if streaming is None:
        streaming = should_stream(x.nbytes + y.nbytes, mesh)
    data = training_data(x, y, mesh, batch_size, bool(streaming), stream_chunk_steps)
    checkpointer = Checkpointer(checkpoint_dir, checkpoint_interval) if checkpoint_dir is not None else None
    return PreparedFit(fitting, tuple(hooks), hook_states, history, int(epochs), mesh,
                       lambda model, template: compile_epoch(model, optimizer, data, template, augment),
                       checkpointer, tuple(callbacks), progress)


def run_prepared(prepared: PreparedFit) -> FitResult:
    """Compile and train a :func:`prepare_fit` (see :func:`fit`)."""
    return run_loop(prepared.fitting, prepared.hooks, prepared.hook_states, prepared.history,
                    epochs=prepared.epochs, mesh=prepared.mesh, compile_epoch=prepared.compile_epoch,
                    checkpointer=prepared.checkpointer, callbacks=prepared.callbacks, progress=prepared.progress)


def run_loop(fitting: Fitting, hooks: Sequence[Hook], hook_states: dict[str, Any], history: list[dict], *,
             epochs: int, mesh: Mesh, compile_epoch: CompileEpoch, checkpointer: Checkpointer | None = None,
             callbacks: Sequence[Callback] = (), progress: bool = False) -> FitResult:
    """The epoch loop of :func:`fit`, from a prepared ``fitting`` (hooks initialised, checkpoint
    restored). ``compile_epoch(bnn, template_state) -> run_epoch`` builds the epoch program;
    it is called once, then again whenever a hook returns a different ``bnn``.

    Each epoch: ``run_epoch(state) -> (state, stats)``; a non-finite loss writes the state before
    the epoch (the last good one) and raises :class:`DivergenceError`; otherwise the record
    ``{epoch, loss, nll, kl, seconds}`` goes through every hook's ``update`` (which may add
    fields and change the fitting), the state is put back on the mesh, the epoch is recompiled
    if the network changed, the record is appended, a checkpoint written when due, callbacks
    called and the progress bar advanced.
    """
    compile_seconds, compilations = 0.0, 0

    def compiled_for(fitting: Fitting):
        nonlocal compile_seconds, compilations
        started = time.perf_counter()
        program = compile_epoch(fitting.bnn, fitting.state)
        compile_seconds += time.perf_counter() - started
        compilations += 1
        return program

    def result(fitting: Fitting) -> FitResult:
        extras: dict[str, Any] = {}
        for hook in hooks:
            extras.update(hook.result(hook_states[hook.name]))
        return FitResult(fitting.bnn, fitting.state.params, history, fitting.state, compile_seconds,
                         compilations, hook_states=dict(hook_states), **extras)

    def saved_hooks() -> dict[str, Any]:
        states = {hook.name: hook.to_json(hook_states[hook.name]) for hook in hooks}
        return {name: value for name, value in states.items() if value is not None}

    fitting = fitting._replace(state=place(fitting.state, replicated(mesh)))
    run_epoch, model = compiled_for(fitting), fitting.bnn
    bar = ProgressBar(epochs, int(fitting.state.epoch)) if progress else None
    try:
        while int(fitting.state.epoch) < epochs and not fitting.stop:
            # a copy (the epoch donates its state) that keeps each array's sharding and, unlike
            # jnp.copy, compiles nothing: a shrinking run would compile one copy per new shape
            last_good = jax.tree_util.tree_map(lambda v: jax.device_put(v, may_alias=False), fitting.state)
            started = time.perf_counter()
            state, stats = run_epoch(fitting.state)
            stats = jax.device_get(stats)
            seconds = time.perf_counter() - started
            if not all(np.isfinite(v) for v in stats):
                where = ""
                if checkpointer is not None:
                    checkpointer.write(last_good, history, saved_hooks())
                    where = (f"; the last good checkpoint (epoch {int(last_good.epoch)}) is in "
                             f"{checkpointer.directory}")
                raise DivergenceError(
                    f"the loss became non-finite in epoch {int(last_good.epoch) + 1} (loss={stats.loss}, "
                    f"nll={stats.nll}, kl={stats.kl}); training stopped{where}. Try a smaller learning rate.",
                    result(fitting._replace(state=last_good)))
            fitting = fitting._replace(state=state)
            record = {"epoch": int(state.epoch), "loss": float(stats.loss), "nll": float(stats.nll),
                      "kl": float(stats.kl), "seconds": seconds}
            for hook in hooks:
                before = fitting.state
                fitting, hook_states[hook.name], fields = hook.update(fitting, hook_states[hook.name], record)
                record.update(fields)
                if fitting.state is not before:
                    fitting = fitting._replace(state=place(fitting.state, replicated(mesh)))
            if fitting.bnn is not model:
                run_epoch, model = compiled_for(fitting), fitting.bnn
            history.append(record)
            if checkpointer is not None and (checkpointer.due(record["epoch"], epochs) or fitting.stop):
                checkpointer.write(fitting.state, history, saved_hooks())
            for callback in callbacks:
                callback(record["epoch"], record, fitting.state)
            if bar is not None:
                fields = {}
                for hook in hooks:
                    fields.update(hook.progress(record))
                bar.update(record, fields)
    finally:
        if bar is not None:
            bar.close()
    return result(fitting)

"""One experiment in one run directory: load data, build the model, fit, prune, evaluate, plot.

:func:`run_experiment` is what ``sparse-bnn fit`` calls; notebooks and benchmarks call it too::

    metrics = run_experiment(RunConfig.flat(out="runs/d", data="digits", widths=[32, 32], epochs=5))

The run directory ``RUN`` ends up holding

* ``config.json``: the :class:`~sparse_bnn.experiment.config.RunConfig` (key ``"run"``, nested as
  :meth:`~sparse_bnn.experiment.config.RunConfig.to_dict` writes it; ``RunConfig.from_dict`` reads the
  flat form of older runs too), the network's config and the library version;
* ``checkpoint/`` (and ``checkpoint_finetune/``): the latest checkpoint, written atomically
  every ``checkpoint_interval`` seconds of training and after the last epoch
  (:class:`sparse_bnn.train.loop.Checkpointer`);
* ``history.json``: one record per epoch (loss, nll, kl, kept units, seconds, validation);
* ``history.csv``: the same, one row per epoch, rewritten after every epoch while training
  (:class:`sparse_bnn.train.metrics_log.MetricsLog`);
* ``variational_params.msgpack``: the fitted variational parameters and fixed masks;
* ``compact/``: the compact median-probability network with posterior samples
  (:func:`sparse_bnn.compact.io.load_compact`);
* ``report.json``: the :class:`~sparse_bnn.compact.report.CompressionReport`;
* ``plots/*.png``: loss curves, kept units, inclusion histograms, reliability diagram;
* ``metrics.json``: written last and atomically; its presence marks the run as finished; its
  ``"warnings"`` list the signs of collapse (:mod:`sparse_bnn.experiment.collapse`), also issued as
  :class:`~sparse_bnn.experiment.collapse.CollapseWarning`;
* ``diverged.json``: only while the run's loss has diverged (:mod:`sparse_bnn.experiment.resume`);
* ``.lock``: the lock of the process writing the run (:mod:`sparse_bnn.experiment.lock`).

Every input is checked (options, the run directory, the data set) before anything is written;
then the run takes the directory's lock, and a new run (``--overwrite`` too) is a transaction
that a failure before its first epoch undoes, the replaced run included
(:class:`~sparse_bnn.experiment.run_dir.RunStart`). Guide: ``docs/guide/runs.md``.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

import sparse_bnn
from sparse_bnn import atomic
from sparse_bnn.core import posterior
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.data.preprocess import Dataset, check_dataset, flip_augment
from sparse_bnn.experiment.collapse import CollapseWarning, collapse_warnings, majority_rate
from sparse_bnn.experiment.config import BMR_MODES, RunConfig  # noqa: F401 (BMR_MODES: for old imports)
from sparse_bnn.experiment.evaluate import evaluate_fitted, load_run_dataset, write_json
from sparse_bnn.experiment.lock import RunLock
from sparse_bnn.experiment.resume import check_resumable, fit_command, resumed_record, write_divergence
from sparse_bnn.experiment.run_dir import (RunDirectoryError, RunStart,  # noqa: F401 (RunDirectoryError: re-export)
                                           check_run_directory, run_directory_state)
from sparse_bnn.experiment.run_files import (CHECKPOINT_DIR, CONFIG_FILE, DIVERGED_FILE, FINETUNE_CHECKPOINT_DIR,
                                             HISTORY_FILE, METRICS_FILE, PARAMS_FILE, PLOTS_DIR)
from sparse_bnn.nets import NETS, net_from_config
from sparse_bnn.priors import get_prior
from sparse_bnn.sparsify.reduction import NodeBMRRule, Reduction, resolve_warmup_epochs
from sparse_bnn.sparsify.shrink import Shrink
from sparse_bnn.train import DivergenceError, Hook, fit
from sparse_bnn.train.hooks import format_kept
from sparse_bnn.train.loop import prepare_fit, run_prepared
from sparse_bnn.train.metrics_log import MetricsLog, run_writers

REGRESSION_LIKELIHOOD_NOISE = None  # learned


# ----------------------------------------------------------------------------- building blocks

def net_config(config: RunConfig, dataset: Dataset) -> dict:
    """The network config for the data set's input shape and classes (or outputs for regression):
    the net's own ``default_config`` with the run's ``--widths``, ``--activation`` and ``--net-size``."""
    outputs = dataset.num_classes if dataset.task == "classification" else int(np.prod(dataset.y_train.shape[1:]))
    model = config.model
    try:
        return dict(NETS[model.net].default_config(tuple(dataset.input_shape), outputs, name=model.net,
                                                   widths=list(model.widths), activation=model.activation,
                                                   size=model.net_size))
    except ValueError as error:
        raise ValueError(f"net {model.net!r} does not fit the data set {dataset.name!r}: {error}") from error


def build_model(config: RunConfig, dataset: Dataset, net_cfg: Mapping[str, Any], *,
                freeze_indicators: bool = False) -> SparseBNN:
    """The :class:`SparseBNN` of a run (network seeded by ``config.training.seed``; the prior
    built with ``--sigma0`` and the ``--prior-option`` hyperparameters)."""
    model = config.model
    cls = NETS[model.net]
    sigma_0 = model.sigma0 if model.sigma0 is not None else getattr(cls, "reference_sigma_0", 1.0)
    inclusion = model.inclusion if model.inclusion is not None else getattr(cls, "reference_inclusion", "theory")
    net = net_from_config(dict(net_cfg), seed=config.training.seed)
    likelihood = "categorical" if dataset.task == "classification" else "gaussian"
    prior = get_prior(model.prior, sigma_0=float(sigma_0), **model.prior_options)
    return SparseBNN(net, prior, n_data=len(dataset.x_train),
                     likelihood=likelihood, noise=REGRESSION_LIKELIHOOD_NOISE, inclusion=inclusion,
                     centred=model.centred, temperature=model.temperature, hard=not model.soft,
                     rho_init=model.rho_init, freeze_indicators=freeze_indicators,
                     weight_noise=model.weight_noise, kl_weight=model.kl_weight)


def save_variational_params(path: Path, params: Mapping[str, jax.Array], masks: Masks) -> None:
    """``{"params": {name: array}, "masks": {"units": ..., "weights": ...}}`` as msgpack."""
    payload = {"params": {k: np.asarray(v) for k, v in params.items()},
               "masks": {"units": {k: np.asarray(v) for k, v in masks.units.items()},
                         "weights": {k: np.asarray(v) for k, v in masks.weights.items()}}}
    atomic.write_bytes(path, serialization.msgpack_serialize(payload))


def load_variational_params(path: Path) -> tuple[dict[str, np.ndarray], Masks]:
    """The inverse of :func:`save_variational_params` (msgpack only; no code runs)."""
    payload = serialization.msgpack_restore(Path(path).read_bytes())
    masks = payload.get("masks", {})
    return dict(payload["params"]), Masks(dict(masks.get("units", {})), dict(masks.get("weights", {})))


def prepare_run_directory(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check what ``out`` holds; returns ``True`` when an unfinished run is to be resumed. Writes
    nothing (``--overwrite`` replaces the old run only once the new one has started).

    Raises :class:`RunDirectoryError` for a finished run without ``overwrite``, an unfinished
    one without ``resume``/``overwrite``, ``resume`` with no run to resume or with ``overwrite``,
    or a non-empty folder that is not a run directory.
    """
    return check_run_directory(Path(out), run_directory_state(Path(out)), resume=resume, overwrite=overwrite)


_check_resumable = check_resumable  # its former name


def fit_batch_size(config: RunConfig, dataset: Dataset, log: Callable[[str], None]) -> RunConfig:
    """``config`` with ``--batch-size`` cut to the training set when it is larger (one step per
    epoch), saying so in ``log``; the run records the batch size it trains with."""
    n_train, batch_size = len(dataset.x_train), config.training.batch_size
    if batch_size <= n_train:
        return config
    log(f"note: --batch-size {batch_size} is more than the {n_train} training examples of {dataset.name}; "
        f"training with --batch-size {n_train} (one step per epoch), as config.json records")
    return config.replace(batch_size=n_train)


def training_hooks(config: RunConfig) -> list[Hook]:
    """The hooks of a run's sparse training: BMR (``--bmr``), shrinking (``--shrink``; with
    ``--bmr nodewise`` the units the reduction prunes are removed), or none."""
    if config.bmr.mode != "none":
        warmup = resolve_warmup_epochs(config.bmr.warmup, config.training.epochs)
        if config.shrink.enabled:
            return [Shrink(config.shrink_schedule(), NodeBMRRule(warmup))]
        return [Reduction(config.bmr.mode, warmup)]
    if config.shrink.enabled:
        return [Shrink(config.shrink_schedule())]
    return []


def _check_devices(config: RunConfig) -> None:
    devices = config.training.devices
    if devices is None:
        return
    available = jax.device_count()
    if devices > available:
        raise ValueError(f"--devices {devices} but JAX sees only {available} device(s) "
                         f"({jax.devices()[0].platform})")


# ----------------------------------------------------------------------------- the experiment

def _log_epoch(log: Callable[[str], None], offset: int = 0, label: str = "epoch", units: int | None = None):
    def callback(epoch: int, record: dict, state) -> None:
        kept = format_kept(record["kept"], units)  # 15+33/800: kept per layer over the units at start
        extra = "".join(f" {k}={record[k]:.4f}" for k in ("val_accuracy", "val_rmse") if k in record)
        log(f"{label} {epoch + offset}: loss={record['loss']:.4f} nll={record['nll']:.4f} "
            f"kl={record['kl']:.4f} kept={kept}{extra} ({record['seconds']:.2f}s)")
    return callback


def run_experiment(config: RunConfig | Mapping[str, Any], *, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, log: Callable[[str], None] | None = None,
                   tensorboard: str | Path | None = None) -> dict:
    """Run one experiment into ``config.out`` and return its metrics (also in ``metrics.json``).

    Args:
      config: a :class:`RunConfig` (or a dict: :meth:`RunConfig.from_dict`).
      resume: continue the unfinished run in ``config.out`` from its last checkpoint (a diverged
        run may change its learning rates and schedule: :mod:`sparse_bnn.experiment.resume`).
      overwrite: replace whatever run ``config.out`` holds, once the new one has trained an epoch.
      progress: show fit's progress bar per epoch; otherwise ``log`` gets one line per epoch.
      log: where per-epoch lines and notes go (``None``: nowhere).
      tensorboard: also write the per-epoch metrics as TensorBoard scalars into this folder
        (:class:`~sparse_bnn.train.metrics_log.TensorBoardWriter`); ``RUN/history.csv`` is always written.

    Raises:
      ValueError / DataNotFoundError: bad input; nothing is written then.
      RunDirectoryError: ``config.out`` holds a run that must not be touched, or none to resume.
      sparse_bnn.experiment.lock.RunLockedError: another process is writing ``config.out``.
      sparse_bnn.train.DivergenceError: the loss stopped being finite; the last good checkpoint stays
        in ``RUN/checkpoint``, no ``metrics.json`` is written, and the message shows the command
        that resumes with smaller learning rates.
    """
    config = RunConfig.from_dict(config) if isinstance(config, Mapping) else config
    config.check()
    _check_devices(config)
    note = (lambda message: None) if log is None else log
    out = Path(config.out)
    if prepare_run_directory(out, resume=resume, overwrite=overwrite):
        check_resumable(out, config, ignore=("batch_size",))  # again below, with the batch size fitted
    hooks = training_hooks(config)
    writers = run_writers(out, tensorboard)  # without tensorboardX this fails here, before anything is written
    dataset = check_dataset(load_run_dataset(config))  # bad data fail here, before training
    config = fit_batch_size(config, dataset, note)
    net_cfg = net_config(config, dataset)
    bnn = build_model(config, dataset, net_cfg)
    augment_flag = dataset.flip_augment if config.data.augment is None else config.data.augment
    augment = flip_augment if augment_flag and dataset.is_image else None

    with RunLock(out) as lock:
        if lock.stale_holder is not None:
            note(f"note: {out} was locked by {lock.stale_holder.describe()}, which ended without releasing it")
        state = run_directory_state(out)  # again: another process may have written it meanwhile
        resuming = check_run_directory(out, state, resume=resume, overwrite=overwrite)
        start = RunStart(out, replace=overwrite and state in ("unfinished", "finished"), fresh=not resuming,
                         created=lock.made, log=note)
        try:
            start.begin()
            return _train_and_evaluate(config, dataset, net_cfg, bnn, hooks, augment, start, resuming, progress, log,
                                       writers)
        except DivergenceError as error:
            start.commit()
            raise _diverged(out, config, error) from None
        except BaseException:
            start.rollback()
            raise


def _train_and_evaluate(config: RunConfig, dataset: Dataset, net_cfg: dict, bnn: SparseBNN, hooks: list[Hook],
                        augment, start: RunStart, resuming: bool, progress: bool, log, writers=()) -> dict:
    out = start.out
    changes = check_resumable(out, config) if resuming else {}
    previous = json.loads((out / CONFIG_FILE).read_text()) if resuming and (out / CONFIG_FILE).exists() else {}
    # a run resumed with new learning rates adopts the Adam state of checkpoints written before
    new_optimizer = bool(changes) or bool(previous.get("resumed"))
    training = config.training
    optimizer = config.optimizer(training.epochs, len(dataset.x_train))
    validation = (dataset.x_val, dataset.y_val) if len(dataset.x_val) else None
    quiet_log = (lambda message: None) if log is None else log

    def started(epoch, record, state) -> None:  # the new run trained an epoch: the old one may go
        start.commit()
        (out / DIVERGED_FILE).unlink(missing_ok=True)

    units = sum(layer.units for layer in bnn.layers[:-1])
    callbacks = (started,) + (() if progress else (_log_epoch(quiet_log, units=units),))
    fit_kwargs = dict(epochs=training.epochs, batch_size=training.batch_size, optimizer=optimizer,
                      seed=training.seed, augment=augment, progress=progress, validation=validation,
                      checkpoint_interval=training.checkpoint_interval, devices=training.devices)
    prepared = prepare_fit(bnn, dataset.x_train, dataset.y_train, checkpoint_dir=out / CHECKPOINT_DIR,
                           resume=resuming, new_optimizer=new_optimizer, callbacks=callbacks, **fit_kwargs,
                           hooks=[*hooks, MetricsLog(writers, fields={"phase": "sparse"})])
    resumed = resumed_record(previous, int(prepared.fitting.state.epoch), changes)
    write_json(out / CONFIG_FILE, {
        "run": config.to_dict(), "net_config": net_cfg, "sparse_bnn_version": sparse_bnn.__version__,
        "jax_version": jax.__version__, "dataset": dataset.summary(), "augment": bool(augment is not None),
        "sigma_0": float(bnn.prior.sigma_0), "inclusion": {k: float(v) for k, v in bnn.inclusion.items()},
        **({"resumed": resumed} if resumed else {})})
    started_at = time.perf_counter()
    result = run_prepared(prepared)
    history = [dict(r, phase="sparse") for r in result.history]
    compile_seconds = result.compile_seconds
    final_bnn, params, masks = result.bnn, result.params, result.state.masks
    inclusion = {name: np.asarray(p) for name, p in posterior.inclusion_probs(final_bnn, params).items()}

    if training.fine_tune_epochs > 0:
        keep = posterior.keep_masks(final_bnn, params, config.evaluation.threshold, masks)
        unit_masks = Masks(units={name: jnp.asarray(k, jnp.float32) for name, k in keep.items()},
                           weights=dict(masks.weights))
        # the fitted net's own config: after --shrink it is smaller than net_cfg
        tuned_bnn = build_model(config, dataset, final_bnn.net.config, freeze_indicators=True)
        wanted = tuned_bnn.init_params()
        init = {k: params[k] for k in wanted}
        tuned = fit(tuned_bnn, dataset.x_train, dataset.y_train, init_params=init, masks=unit_masks,
                    checkpoint_dir=out / FINETUNE_CHECKPOINT_DIR, resume=True, new_optimizer=new_optimizer,
                    hooks=[MetricsLog(writers, epoch_offset=training.epochs, fields={"phase": "fine-tune"})],
                    **{**fit_kwargs, "epochs": training.fine_tune_epochs,
                       "optimizer": config.optimizer(training.fine_tune_epochs, len(dataset.x_train)),
                       "callbacks": (started,) + (() if progress else
                                                  (_log_epoch(quiet_log, training.epochs, "fine-tune epoch", units),))})
        history += [dict(r, epoch=r["epoch"] + training.epochs, phase="fine-tune") for r in tuned.history]
        compile_seconds += tuned.compile_seconds
        final_bnn, params, masks = tuned.bnn, tuned.params, tuned.state.masks
    session_seconds = time.perf_counter() - started_at
    for writer in writers:
        writer.close()

    write_json(out / HISTORY_FILE, history)
    save_variational_params(out / PARAMS_FILE, params, masks)
    # after --shrink the fitted network is smaller than the one the run started from: the report
    # compares the compact network with that original dense network, in its unit numbering
    unit_origin = result.unit_origin
    dense = (net_from_config(dict(net_cfg), seed=training.seed), unit_origin) if unit_origin else None
    metrics = evaluate_fitted(final_bnn, params, masks, dataset, config, out, dense=dense)
    metrics.update(training_seconds=float(sum(r["seconds"] for r in history)),
                   compile_seconds=float(compile_seconds), session_seconds=float(session_seconds),
                   epochs=int(training.epochs), fine_tune_epochs=int(training.fine_tune_epochs))
    if dataset.task == "classification":
        metrics["majority_rate"] = majority_rate(dataset.y_test)
    metrics["residual_layers"] = [layer.name for layer in final_bnn.layers if layer.prunable and layer.residual]
    metrics["warnings"] = collapse_warnings(metrics)  # docs/guide/fitting.md, "When a run collapses"
    for message in metrics["warnings"]:
        warnings.warn(message, CollapseWarning, stacklevel=3)
    _plots(out, history, inclusion, metrics.pop("_calibration", None), config.evaluation.threshold, quiet_log)
    start.commit()
    (out / DIVERGED_FILE).unlink(missing_ok=True)
    write_json(out / METRICS_FILE, metrics)
    return metrics


def _diverged(out: Path, config: RunConfig, error: DivergenceError) -> DivergenceError:
    """``error`` recorded in ``RUN/diverged.json``, its message ending with the command that resumes
    the run from its last good checkpoint with a tenth of its learning rates."""
    phase = "fine-tune" if (out / FINETUNE_CHECKPOINT_DIR).exists() else "sparse"
    write_divergence(out, int(error.last_good.state.epoch), phase, str(error))
    training = config.training
    smaller = {"lr": float(f"{training.lr / 10:.3g}")}
    if training.indicator_lr is not None:
        smaller["indicator_lr"] = float(f"{training.indicator_lr / 10:.3g}")
    command = fit_command(config, "--resume", **smaller)
    return DivergenceError(f"{error}\nTo continue from the last good checkpoint with smaller learning rates (a "
                           "diverged run may change --lr, --indicator-lr, --lr-schedule and --lr-final-fraction "
                           f"when it resumes):\n    {command}", error.last_good)


def _plots(out: Path, history: list[dict], inclusion: Mapping[str, np.ndarray], calibration,
           threshold: float, log) -> None:
    from sparse_bnn import plots
    try:
        plots.write_run_plots(out / PLOTS_DIR, history, inclusion, calibration, threshold)
    except Exception as error:  # noqa: BLE001 - a failed figure must not lose a finished run
        log(f"warning: could not draw the plots: {error}")

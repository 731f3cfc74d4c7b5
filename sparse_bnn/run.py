"""One experiment in one run directory: load data, build the model, fit, prune, evaluate, plot.

:func:`run_experiment` is what ``sparse-bnn fit`` calls; notebooks and benchmarks call it too::

    metrics = run_experiment(RunConfig.flat(out="runs/d", data="digits", widths=[32, 32], epochs=5))

The run directory ``RUN`` ends up holding

* ``config.json``: the :class:`~sparse_bnn.config.RunConfig` (key ``"run"``, nested as
  :meth:`~sparse_bnn.config.RunConfig.to_dict` writes it; ``RunConfig.from_dict`` reads the
  flat form of older runs too), the network's config and the library version;
* ``checkpoint/`` (and ``checkpoint_finetune/``): the latest checkpoint, written atomically
  every ``checkpoint_interval`` seconds of training and after the last epoch
  (:class:`sparse_bnn.train.loop.Checkpointer`);
* ``history.json``: one record per epoch (loss, nll, kl, kept units, seconds, validation);
* ``variational_params.msgpack``: the fitted variational parameters and fixed masks;
* ``compact/``: the compact median-probability network with posterior samples
  (:func:`sparse_bnn.compact_io.load_compact`);
* ``report.json``: the :class:`~sparse_bnn.report.CompressionReport`;
* ``plots/*.png``: loss curves, kept units, inclusion histograms, reliability diagram;
* ``metrics.json``: written last and atomically; its presence marks the run as finished.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

import sparse_bnn
from sparse_bnn import atomic, compact_io, metrics as metric_fns, posterior, prune, report as report_lib, run_files
from sparse_bnn.compact_io import compact_outputs
from sparse_bnn.config import BMR_MODES, RunConfig, flat_options  # noqa: F401 (BMR_MODES: for old imports)
from sparse_bnn.data import Dataset, flip_augment
from sparse_bnn.reduction import NodeBMRRule, Reduction, resolve_warmup_epochs
from sparse_bnn.shrink import Shrink
from sparse_bnn.train import Hook, fit
from sparse_bnn.model import Masks, SparseBNN
from sparse_bnn.nets import NETS, FunctionalNet, net_from_config
from sparse_bnn.priors import get_prior
from sparse_bnn.run_files import (CHECKPOINT_DIR, COMPACT_DIR, CONFIG_FILE, FINETUNE_CHECKPOINT_DIR, HISTORY_FILE,
                                  METRICS_FILE, PARAMS_FILE, PLOTS_DIR, REPORT_FILE, read_finished_run)

REGRESSION_LIKELIHOOD_NOISE = None  # learned


class RunDirectoryError(ValueError):
    """The output directory holds a finished or unfinished run that we must not silently touch."""


# ----------------------------------------------------------------------------- building blocks

def net_config(config: RunConfig, dataset: Dataset) -> dict:
    """The network config for the data set's input shape and classes (or 1 output for regression)."""
    outputs = dataset.num_classes if dataset.task == "classification" else int(np.prod(dataset.y_train.shape[1:]))
    model = config.model
    if model.net == "mlp":
        return {"net": "mlp", "in_features": dataset.input_dim, "widths": list(model.widths),
                "out_features": outputs, "activation": model.activation}
    cls = NETS[model.net]
    if hasattr(cls, "default_config"):
        built = dict(cls.default_config(tuple(dataset.input_shape), outputs))
    else:  # until every net has default_config: image nets take (image_size, in_channels, classes)
        if len(dataset.input_shape) != 3 or dataset.input_shape[0] != dataset.input_shape[1]:
            raise ValueError(f"net {model.net!r} needs square images [H, W, C]; the data set "
                             f"{dataset.name!r} has examples of shape {tuple(dataset.input_shape)}")
        size, _, channels = dataset.input_shape
        kwargs = dict(image_size=int(size), in_channels=int(channels), num_classes=int(outputs))
        if model.net.startswith("resnet"):
            kwargs["depth"] = int(model.net.removeprefix("resnet"))
        if "activation" in inspect.signature(cls.__init__).parameters:
            kwargs["activation"] = model.activation
        from flax import nnx
        built = cls(**kwargs, rngs=nnx.Rngs(0)).config
    if model.net.startswith("resnet"):
        built["net"] = model.net
    return built


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
                     weight_noise=model.weight_noise)


def load_run_dataset(config: RunConfig | Mapping[str, Any]) -> Dataset:
    """The data set of a run (its :class:`RunConfig`, or ``config.json``'s ``"run"``), loaded as for
    its training (:func:`sparse_bnn.run_files.load_run_dataset`)."""
    options = config.flat_dict() if isinstance(config, RunConfig) else flat_options(config)
    return run_files.load_run_dataset(options)


def write_json(path: Path, value: Any) -> None:
    atomic.write_json(path, value)


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
    """Check what ``out`` holds; returns ``True`` when an unfinished run is to be resumed.

    Raises :class:`RunDirectoryError` for a finished run without ``overwrite``, an unfinished
    one without ``resume``/``overwrite``, or a non-empty folder that is not a run directory.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise RunDirectoryError(f"--out {out} exists and is not a directory")
    entries = [p for p in out.iterdir()]
    if not entries:
        return False
    is_run = (out / CONFIG_FILE).exists() or (out / METRICS_FILE).exists() or (out / CHECKPOINT_DIR).exists()
    if not is_run:
        raise RunDirectoryError(f"--out {out} is a non-empty folder that is not a sparse-bnn run "
                                "directory; choose a new or empty folder")
    finished = (out / METRICS_FILE).exists()
    if overwrite:
        if finished:  # first un-finish it, so that an interruption cannot leave it looking finished
            (out / METRICS_FILE).unlink()
        shutil.rmtree(out)
        return False
    if finished:
        raise RunDirectoryError(f"{out} already holds a finished run ({METRICS_FILE} exists); "
                                "pass --overwrite to replace it or choose another --out")
    if not resume:
        raise RunDirectoryError(f"{out} holds a started but unfinished run; pass --resume to continue "
                                "it or --overwrite to start again")
    return True


def _check_resumable(out: Path, config: RunConfig) -> None:
    saved_file = out / CONFIG_FILE
    if not saved_file.exists():
        return
    different = config.identity_differences(json.loads(saved_file.read_text()).get("run", {}))
    if different:
        lines = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in different.items())
        raise RunDirectoryError(f"cannot resume {out}: the run was started with other settings ({lines}); "
                                "repeat the original options or pass --overwrite")


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


# ----------------------------------------------------------------------------- evaluation

def compact_predictions(net, x: np.ndarray, task: str) -> np.ndarray:
    """Class probabilities ``[N, C]`` or means ``[N, out]`` of a (compact) network."""
    outputs = compact_outputs(net, x)
    return np.asarray(jax.nn.softmax(outputs, -1)) if task == "classification" else outputs


def bma_predictions(apply: Callable, samples: Mapping, x: np.ndarray, task: str) -> np.ndarray:
    """Bayesian model averaging with ``apply(params, x)`` over stacked samples ``{path: [S, ...]}``.

    Returns class probabilities ``[N, C]`` (mean over samples) or sample means ``[S, N, out]``.
    """
    average = posterior.averaged_probs if task == "classification" else posterior.sampled_outputs
    fn = jax.jit(lambda s, xb: average(apply, s, xb))
    samples = dict(samples)
    return posterior.batched(lambda xb: fn(samples, xb), np.asarray(x, np.float32), 2048)


def score(predictions: np.ndarray, dataset: Dataset, *, noise: float | None = None,
          samples: bool = False) -> dict[str, float]:
    """Test metrics: accuracy/NLL/ECE/Brier, or RMSE/Gaussian NLL (standardised and original units)."""
    if dataset.task == "classification":
        return metric_fns.classification_metrics(jnp.asarray(predictions), jnp.asarray(dataset.y_test))
    y = jnp.asarray(dataset.y_test).reshape(len(dataset.y_test), -1)
    if samples:
        out = metric_fns.regression_metrics(y, sample_means=jnp.asarray(predictions).reshape(
            predictions.shape[0], len(dataset.y_test), -1), noise_std=noise)
    else:
        out = metric_fns.regression_metrics(y, mean=jnp.asarray(predictions).reshape(y.shape), std=noise)
    if dataset.y_std is not None:
        out["rmse_original_units"] = out["rmse"] * float(np.asarray(dataset.y_std).reshape(-1)[0])
    return out


# ----------------------------------------------------------------------------- the experiment

def _log_epoch(log: Callable[[str], None], offset: int = 0, label: str = "epoch"):
    def callback(epoch: int, record: dict, state) -> None:
        kept = "/".join(str(v) for v in record["kept"].values())
        extra = "".join(f" {k}={record[k]:.4f}" for k in ("val_accuracy", "val_rmse") if k in record)
        log(f"{label} {epoch + offset}: loss={record['loss']:.4f} nll={record['nll']:.4f} "
            f"kl={record['kl']:.4f} kept={kept}{extra} ({record['seconds']:.2f}s)")
    return callback


def run_experiment(config: RunConfig | Mapping[str, Any], *, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run one experiment into ``config.out`` and return its metrics (also in ``metrics.json``).

    Args:
      config: a :class:`RunConfig` (or a dict: :meth:`RunConfig.from_dict`).
      resume: continue an unfinished run in ``config.out`` from its last checkpoint.
      overwrite: replace whatever run ``config.out`` holds.
      progress: show fit's progress bar per epoch; otherwise ``log`` gets one line per epoch.
      log: where per-epoch lines and notes go (``None``: nowhere).

    Raises:
      ValueError / DataNotFoundError: bad input (nothing is written then, or an unfinished run).
      RunDirectoryError: ``config.out`` holds a run that must not be touched.
      sparse_bnn.train.DivergenceError: the loss stopped being finite; the last good checkpoint stays
        in ``RUN/checkpoint`` and no ``metrics.json`` is written.
    """
    config = RunConfig.from_dict(config) if isinstance(config, Mapping) else config
    config.check()
    _check_devices(config)
    out = Path(config.out)
    resuming = prepare_run_directory(out, resume=resume, overwrite=overwrite)
    if resuming:
        _check_resumable(out, config)
    hooks = training_hooks(config)
    dataset = load_run_dataset(config)
    net_cfg = net_config(config, dataset)
    bnn = build_model(config, dataset, net_cfg)
    augment_flag = dataset.flip_augment if config.data.augment is None else config.data.augment
    augment = flip_augment if augment_flag and dataset.is_image else None

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, {
        "run": config.to_dict(), "net_config": net_cfg, "sparse_bnn_version": sparse_bnn.__version__,
        "jax_version": jax.__version__, "dataset": dataset.summary(), "augment": bool(augment is not None),
        "sigma_0": float(bnn.prior.sigma_0), "inclusion": {k: float(v) for k, v in bnn.inclusion.items()}})
    training = config.training
    optimizer = config.optimizer(training.epochs, len(dataset.x_train))
    validation = (dataset.x_val, dataset.y_val) if len(dataset.x_val) else None
    checkpoint_dir = out / CHECKPOINT_DIR
    quiet_log = (lambda message: None) if log is None else log
    callbacks = () if progress else (_log_epoch(quiet_log),)
    fit_kwargs = dict(epochs=training.epochs, batch_size=training.batch_size, optimizer=optimizer,
                      seed=training.seed, augment=augment, progress=progress, validation=validation,
                      callbacks=callbacks, checkpoint_interval=training.checkpoint_interval,
                      devices=training.devices)
    started = time.perf_counter()
    result = fit(bnn, dataset.x_train, dataset.y_train, hooks=hooks, checkpoint_dir=checkpoint_dir,
                 resume=True, **fit_kwargs)
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
                    checkpoint_dir=out / FINETUNE_CHECKPOINT_DIR, resume=True,
                    **{**fit_kwargs, "epochs": training.fine_tune_epochs,
                       "optimizer": config.optimizer(training.fine_tune_epochs, len(dataset.x_train)),
                       "callbacks": () if progress else (_log_epoch(quiet_log, training.epochs, "fine-tune epoch"),)})
        history += [dict(r, epoch=r["epoch"] + training.epochs, phase="fine-tune") for r in tuned.history]
        compile_seconds += tuned.compile_seconds
        final_bnn, params, masks = tuned.bnn, tuned.params, tuned.state.masks
    session_seconds = time.perf_counter() - started

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
    _plots(out, history, inclusion, metrics.pop("_calibration", None), config.evaluation.threshold, quiet_log)
    write_json(out / METRICS_FILE, metrics)
    return metrics


def evaluate_fitted(bnn: SparseBNN, params: Mapping[str, jax.Array], masks: Masks, dataset: Dataset,
                    config: RunConfig, out: Path, dense: tuple[Any, Mapping[str, np.ndarray]] | None = None
                    ) -> dict:
    """BMA and compact-network test metrics; writes ``compact/`` and ``report.json``.

    ``dense``: ``(original network, {layer: original index of each unit of bnn.net})`` when
    ``bnn`` was shrunk while training; the compression report then compares the compact
    network with the original dense network (the default compares with ``bnn.net``).
    """
    key = jax.random.PRNGKey(config.training.seed)
    evaluation = config.evaluation
    task = dataset.task
    noise = posterior.noise_scale(bnn, params) if task == "regression" else None
    samples = posterior.sample_params(bnn, params, key, evaluation.samples, masks)  # the draws of posterior.predict
    bma = bma_predictions(bnn.functional.apply, samples, dataset.x_test, task)
    weights, keep = jax.jit(lambda p: posterior.posterior_mean_params(bnn, p, evaluation.threshold, masks))(params)
    keep = {name: np.asarray(k, bool) for name, k in keep.items()}
    compact_net, _ = prune.compact(bnn.net, weights, keep)
    _, compact_samples = prune.compact_samples(bnn.net, samples, keep)
    compact_probs = compact_predictions(compact_net, dataset.x_test, task)
    result = {"task": task, "data": dataset.name, "num_test": int(len(dataset.x_test)),
              "bma": {**score(bma, dataset, noise=noise, samples=True), "samples": int(evaluation.samples)},
              "compact": score(compact_probs, dataset, noise=noise),
              "threshold": float(evaluation.threshold)}
    if noise is not None:
        result["noise_std"] = float(noise)
    dense_net, dense_keep = bnn.net, keep
    if dense is not None:
        from sparse_bnn.shrink import keep_from_origin
        dense_net, origin = dense
        kept_origin = {name: np.asarray(origin[name])[k] for name, k in keep.items()}
        dense_keep = keep_from_origin(dense_net.unit_layers(), kept_origin)
    compression = report_lib.compression_report(
        dense_net, compact_net, dense_keep, dataset.input_shape, measure_latency=evaluation.latency,
        batch_sizes=(1, config.training.batch_size))
    write_json(out / REPORT_FILE, compression.to_dict())
    compact_io.save_compact(out / COMPACT_DIR, compact_net, params_samples=compact_samples, metadata={
        "task": task, "data": dataset.name, "noise_std": noise, "threshold": float(evaluation.threshold),
        "compact_metrics": result["compact"], "preprocessing": dataset.preprocessing()})
    result.update(
        kept_units={l.name: l.kept for l in compression.layers if l.prunable},
        total_units={l.name: l.total for l in compression.layers if l.prunable},
        params_dense=compression.params_dense, params_compact=compression.params_compact,
        flops_dense=compression.flops_dense, flops_compact=compression.flops_compact,
        latency=[{"batch_size": r.batch_size, "dense_s": r.dense_s, "compact_s": r.compact_s,
                  "speedup": r.speedup} for r in compression.latency])
    if task == "classification":
        bins = metric_fns.calibration_bins(jnp.asarray(bma), jnp.asarray(dataset.y_test))
        result["_calibration"] = bins
    return result


def _plots(out: Path, history: list[dict], inclusion: Mapping[str, np.ndarray], calibration,
           threshold: float, log) -> None:
    from sparse_bnn import plots
    try:
        plots.write_run_plots(out / PLOTS_DIR, history, inclusion, calibration, threshold)
    except Exception as error:  # noqa: BLE001 - a failed figure must not lose a finished run
        log(f"warning: could not draw the plots: {error}")


# ----------------------------------------------------------------------------- evaluate / report

def read_run(run_dir: str | os.PathLike) -> tuple[RunConfig, dict]:
    """``(RunConfig, metrics)`` of a finished run; ``ValueError`` if it is not one."""
    options, metrics = read_finished_run(run_dir)
    return RunConfig.from_dict(options), metrics


def evaluate_run(run_dir: str | os.PathLike, *, data_dir: str | None = None) -> dict:
    """Recompute the test metrics from the saved compact model and the data named in config.json.

    Returns ``{"compact": {...}, "compact_bma": {...}}`` (the median-probability network and
    Bayesian model averaging over the saved compact samples).
    """
    run_dir = Path(run_dir)
    config, _ = read_run(run_dir)
    if data_dir is not None:
        config = config.replace(data_dir=data_dir)
    dataset = load_run_dataset(config)
    architecture = compact_io.read_architecture(run_dir / COMPACT_DIR)
    noise = architecture.get("metadata", {}).get("noise_std")
    net = compact_io.load_compact(run_dir / COMPACT_DIR)
    result = {"compact": score(compact_predictions(net, dataset.x_test, dataset.task), dataset, noise=noise)}
    if architecture.get("num_samples"):
        net, samples = compact_io.load_compact_samples(run_dir / COMPACT_DIR)
        result["compact_bma"] = score(bma_predictions(FunctionalNet(net).apply, samples, dataset.x_test, dataset.task),
                                      dataset, noise=noise, samples=True)
    return result


def report_table(run_dir: str | os.PathLike) -> str:
    """The compression table of a finished run, with its test metrics."""
    run_dir = Path(run_dir)
    config, metrics = read_run(run_dir)
    compression = report_lib.CompressionReport.from_json((run_dir / REPORT_FILE).read_text())
    lines = [f"run {run_dir}: {config.model.prior} on {config.data.data}, net {config.model.net}, "
             f"{metrics.get('epochs')} epochs ({metrics.get('training_seconds', 0):.1f}s training)", ""]
    lines.append(compression.table())
    lines.append("")
    names = ("accuracy", "nll", "ece", "brier") if metrics["task"] == "classification" else ("rmse", "nll")
    lines.append(f"{'test':<22}" + "".join(f"{n:>12}" for n in names))
    for label, key in ((f"BMA ({metrics['bma'].get('samples')} samples)", "bma"), ("compact (median)", "compact")):
        lines.append(f"{label:<22}" + "".join(f"{metrics[key][n]:>12.4f}" for n in names))
    return "\n".join(lines)

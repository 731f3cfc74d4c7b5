"""Evaluation of a run: the test metrics of a fitted model (Bayesian model averaging and the
compact median-probability network, :func:`evaluate_fitted`, which also writes ``compact/``
and ``report.json``), :func:`score`, and what ``sparse-bnn evaluate`` and ``sparse-bnn report``
show of a finished run directory (:func:`evaluate_run`, :func:`report_table`).

Training the run is :func:`sparse_bnn.experiment.run.run_experiment`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sparse_bnn import atomic, metrics as metric_fns
from sparse_bnn.compact import io as compact_io, prune, report as report_lib
from sparse_bnn.compact.io import compact_outputs
from sparse_bnn.core import posterior
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.data.checks import check_dataset
from sparse_bnn.data.preprocess import Dataset
from sparse_bnn.errors import InputError, read_json
from sparse_bnn.experiment import run_files
from sparse_bnn.experiment.collapse import collapse_warnings
from sparse_bnn.experiment.config import RunConfig, flat_options
from sparse_bnn.experiment.run_files import COMPACT_DIR, METRICS_FILE, REPORT_FILE, read_finished_run
from sparse_bnn.nets import FunctionalNet


def load_run_dataset(config: RunConfig | Mapping[str, Any]) -> Dataset:
    """The data set of a run (its :class:`RunConfig`, or ``config.json``'s ``"run"``), loaded as for
    its training (:func:`sparse_bnn.experiment.run_files.load_run_dataset`)."""
    options = config.flat_dict() if isinstance(config, RunConfig) else flat_options(config)
    return run_files.load_run_dataset(options)


def write_json(path: Path, value: Any) -> None:
    atomic.write_json(path, value)


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
    compact_bma = bma_predictions(FunctionalNet(compact_net).apply, compact_samples, dataset.x_test, task)
    # full_bma averages samples of the full fitted network; compact_bma those of the compact
    # network, as saved in compact/ (what predict_run and sparse-bnn evaluate average over)
    full = {**score(bma, dataset, noise=noise, samples=True), "samples": int(evaluation.samples)}
    result = {"task": task, "data": dataset.name, "num_test": int(len(dataset.x_test)),
              "full_bma": full, "bma": full,  # "bma": full_bma's former name, for readers of older runs
              "compact_bma": {**score(compact_bma, dataset, noise=noise, samples=True),
                              "samples": int(evaluation.samples)},
              "compact": score(compact_probs, dataset, noise=noise),
              "threshold": float(evaluation.threshold)}
    if noise is not None:
        result["noise_std"] = float(noise)
    dense_net, dense_keep = bnn.net, keep
    if dense is not None:
        from sparse_bnn.sparsify.shrink import keep_from_origin
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
    dataset = check_dataset(load_run_dataset(config))
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
    """The compression table of a finished run, with its test metrics and, below them, the run's
    collapse warnings (``metrics.json``'s ``"warnings"``, :mod:`sparse_bnn.experiment.collapse`; for a
    run written without them, those its metrics show)."""
    run_dir = Path(run_dir)
    config, metrics = read_run(run_dir)
    report_file = run_dir / REPORT_FILE
    try:
        compression = report_lib.CompressionReport.from_dict(read_json(report_file, "compression report"))
    except (TypeError, KeyError, AttributeError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{report_file}: not a compression report ({type(error).__name__}: {error}); the run "
                         "directory is corrupt: fit the run again") from None
    names = ("accuracy", "nll", "ece", "brier") if metrics.get("task") == "classification" else ("rmse", "nll")
    full = "full_bma" if "full_bma" in metrics else "bma"  # runs written before full_bma had this name
    if not all(isinstance(metrics.get(block), dict) and all(isinstance(metrics[block].get(n), (int, float))
                                                            for n in names) for block in (full, "compact")):
        raise InputError(f"{run_dir / METRICS_FILE}: lacks the test metrics {', '.join(names)} of {full} and compact; "
                         "the run directory is corrupt: fit the run again (or sparse-bnn evaluate it)")
    recorded = metrics.get("warnings")
    if recorded is None:  # a run written before the collapse checks: check what its metrics hold
        recorded = collapse_warnings(metrics)
    warnings = [w for w in recorded if isinstance(w, str)] if isinstance(recorded, list) else []
    flag = f"; {len(warnings)} WARNING{'S' if len(warnings) > 1 else ''} below" if warnings else ""
    lines = [f"run {run_dir}: {config.model.prior} on {config.data.data}, net {config.model.net}, "
             f"{metrics.get('epochs')} epochs ({report_lib.run_times(metrics)}){flag}", ""]
    lines.append(compression.table())
    lines.append("")
    lines.append(f"{'test':<28}" + "".join(f"{n:>12}" for n in names))
    rows = [(f"BMA full net ({metrics[full].get('samples')} samples)", full),
            (f"BMA compact ({metrics.get('compact_bma', {}).get('samples')} samples)", "compact_bma"),
            ("compact (median)", "compact")]
    for label, key in rows:
        if isinstance(metrics.get(key), dict) and all(isinstance(metrics[key].get(n), (int, float)) for n in names):
            lines.append(f"{label:<28}" + "".join(f"{metrics[key][n]:>12.4f}" for n in names))
    if warnings:  # sparse_bnn.experiment.collapse: the run's signs of collapse
        lines.append("")
        lines.extend(f"WARNING: {w}" for w in warnings)
    return "\n".join(lines)

"""The files of a run directory, readable without the training stack.

:mod:`sparse_bnn.experiment.run` writes a run directory (see there for what each file holds);
:mod:`sparse_bnn.compact.deploy` reads a finished one to predict with its compact model. Both take the
layout from here. Reading a run imports no training module (only :mod:`sparse_bnn.experiment.config`, which
imports no JAX, and :mod:`sparse_bnn.data`, to reload the data set)::

    options, metrics = read_finished_run("runs/fmnist")   # config.json's "run", metrics.json
    dataset = load_run_dataset(options)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from sparse_bnn.experiment.config import flat_options
from sparse_bnn.data.preprocess import Dataset
from sparse_bnn.data.sources import load_dataset

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.json"
PARAMS_FILE = "variational_params.msgpack"
COMPACT_DIR = "compact"
CHECKPOINT_DIR = "checkpoint"
FINETUNE_CHECKPOINT_DIR = "checkpoint_finetune"
PLOTS_DIR = "plots"
DIVERGED_FILE = "diverged.json"  # left by a run whose loss diverged, beside its last good checkpoint

# The run options that say how its data set was loaded (keyword arguments of load_dataset).
DATASET_OPTIONS = ("data_dir", "validation_fraction", "seed", "download", "n_train", "n_test")

__all__ = ["CHECKPOINT_DIR", "COMPACT_DIR", "CONFIG_FILE", "DATASET_OPTIONS", "DIVERGED_FILE",
           "FINETUNE_CHECKPOINT_DIR", "HISTORY_FILE", "METRICS_FILE", "PARAMS_FILE", "PLOTS_DIR", "REPORT_FILE",
           "load_run_dataset", "read_finished_run"]


def read_finished_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options, metrics)`` of a finished run: the ``"run"`` mapping of its ``config.json`` (the
    fields of a :class:`sparse_bnn.experiment.run.RunConfig`) and its ``metrics.json``.

    Raises:
      ValueError: ``run_dir`` is no run directory, or holds an unfinished run.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{run_dir} is not a sparse-bnn run directory (no {CONFIG_FILE})")
    if not (run_dir / METRICS_FILE).is_file():
        raise ValueError(f"{run_dir} holds an unfinished run (no {METRICS_FILE}); finish it with "
                         "sparse-bnn fit ... --resume")
    from sparse_bnn.errors import InputError, read_json
    saved = read_json(run_dir / CONFIG_FILE, "run configuration")
    metrics = read_json(run_dir / METRICS_FILE, "run's metrics")
    if not (isinstance(saved, dict) and isinstance(saved.get("run"), dict) and isinstance(metrics, dict)):
        raise InputError(f"{run_dir}: {CONFIG_FILE} lacks its \"run\" options or {METRICS_FILE} is no mapping; "
                         "the run directory is corrupt: fit the run again")
    return saved["run"], metrics


def load_run_dataset(options: Mapping[str, Any], data_dir: str | os.PathLike | None = None) -> Dataset:
    """The data set of a run, loaded as for its training.

    Args:
      options: the run's options: ``config.json``'s ``"run"`` as :func:`read_finished_run` returns
        it (nested by section, or flat as older runs wrote it), or the flat ``{name: value}`` of
        :func:`sparse_bnn.experiment.config.flat_options`. It must name ``"data"``; the options of
        :data:`DATASET_OPTIONS` it lacks take :func:`~sparse_bnn.data.sources.load_dataset`'s defaults
        (which are ``RunConfig``'s).
      data_dir: where the data set's files are now, instead of the run's ``data_dir``.
    """
    flat = flat_options(options)
    if data_dir is not None:
        flat["data_dir"] = data_dir
    return load_dataset(flat["data"], **{name: flat[name] for name in DATASET_OPTIONS if name in flat})

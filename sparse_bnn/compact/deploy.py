"""Predictions of a finished run on new examples (``sparse-bnn predict RUN_DIR INPUT``).

A run's compact model (``RUN_DIR/compact``) holds the pruned network, posterior samples of its
parameters and, in its metadata, the preprocessing of the training data
(:meth:`sparse_bnn.data.preprocess.Dataset.preprocessing`). :func:`predict_run` takes examples in the data
set's own units (pixel values 0-255, raw features), prepares them as the training inputs were
prepared (:func:`sparse_bnn.data.preprocess.prepare_inputs`) and returns, for ``N`` examples:

* classification: ``probs [N, C]``, ``label [N]``, the predictive ``entropy [N]`` (nats) and,
  when averaging over samples, ``mutual_information [N]`` between the prediction and the
  weights: the part of the entropy that more data would remove;
* regression: ``mean [N, out]`` and ``std [N, out]`` in the targets' units: the noise plus, when
  averaging over samples, the spread of the sampled means.

By default these average over the saved posterior samples (Bayesian model averaging, as the
run's ``compact_bma`` metrics); ``samples=False`` uses the median-probability network with
posterior-mean weights alone (the run's ``compact`` metrics)::

    predictions = predict_run("runs/fmnist", read_inputs("t10k-images-idx3-ubyte.gz"))
    write_predictions("predictions.csv", predictions)

This module reads the run through :mod:`sparse_bnn.experiment.run_files` and :mod:`sparse_bnn.compact.io`
only: it imports no training module (no NumPyro, no ``sparse_bnn.train``/``run``/``shrink``).
"""
from __future__ import annotations

import contextlib
import csv
import os
import sys
from pathlib import Path
from typing import IO

import jax
import numpy as np

from sparse_bnn.compact import io as compact_io
from sparse_bnn.data.checks import INPUT_KEYS, check_preprocessing
from sparse_bnn.data.formats import IDX_IMAGES_MAGIC, DataNotFoundError, read_csv, read_idx
from sparse_bnn.data.preprocess import prepare_inputs
from sparse_bnn.data.tabular import load_npy, load_npz
from sparse_bnn.errors import InputError, MissingInputError
from sparse_bnn.nets import FunctionalNet
from sparse_bnn.experiment.run_files import COMPACT_DIR, load_run_dataset, read_finished_run

__all__ = ["check_output", "predict_run", "read_inputs", "run_preprocessing", "write_predictions"]


def read_inputs(path: str | os.PathLike) -> np.ndarray:
    """Examples ``[N, ...]`` from ``.npy``, ``.npz`` (array ``x``, or its only array), ``.csv``
    (one example per row, optional header) or an IDX image file (``*-ubyte``, ``.gz`` or not).

    Raises:
      MissingInputError: no such file.
      InputError: an unknown file type, a file that cannot be read as its type, or an ``.npz``
        without a single input array.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"input {path} is a directory; give a file of examples (.npy, .npz, .csv or IDX)")
    if not path.is_file():
        raise MissingInputError(f"input file {path} does not exist")
    name = path.name.lower()
    if name.endswith(".npy"):
        return load_npy(path)
    if name.endswith(".npz"):
        archive = load_npz(path)
        if "x" in archive:
            return archive["x"]
        if len(archive) == 1:
            return next(iter(archive.values()))
        raise InputError(f"{path}: holds arrays {sorted(archive)}; name the inputs 'x' (numpy.savez(FILE, x=...))")
    if name.endswith(".csv"):
        return read_csv(path, with_target=False)[0]
    if "idx" in name or name.removesuffix(".gz").endswith("-ubyte"):
        return read_idx(path, IDX_IMAGES_MAGIC)
    raise InputError(f"{path}: unknown input file type; use .npy, .npz (array 'x'), .csv or an IDX image file")


def run_preprocessing(run_dir: str | os.PathLike, data_dir: str | None = None) -> dict:
    """The preprocessing recorded with the run's compact model; for runs saved before it was
    recorded, recomputed from the training data named in the run's ``config.json``."""
    return _read_model(run_dir, data_dir)[1]


def _read_model(run_dir: str | os.PathLike, data_dir: str | None) -> tuple[dict, dict]:
    """``(architecture.json, preprocessing)`` of a finished run's compact model."""
    run_dir = Path(run_dir)
    options, _ = read_finished_run(run_dir)  # first: its message says what is wrong with a directory that is no run
    architecture = compact_io.read_architecture(run_dir / COMPACT_DIR)
    file = run_dir / COMPACT_DIR / compact_io.ARCHITECTURE
    noise = architecture.get("metadata", {}).get("noise_std")
    if noise is not None and not (type(noise) in (int, float) and np.isfinite(noise) and noise >= 0):
        raise InputError(f"{file}: metadata noise_std {noise!r} is not a number >= 0; the saved model is corrupt")
    if "preprocessing" in architecture.get("metadata", {}):
        return architecture, dict(check_preprocessing(architecture["metadata"]["preprocessing"], str(file),
                                                            required=("task", *INPUT_KEYS)))
    try:
        return architecture, load_run_dataset(options, data_dir).preprocessing()
    except DataNotFoundError as error:
        raise DataNotFoundError(f"{run_dir} was saved without its preprocessing, which is recomputed from its "
                                f"training data; {error}") from error


def predict_run(run_dir: str | os.PathLike, x: np.ndarray, *, samples: bool = True, batch_size: int = 2048,
                data_dir: str | None = None, source: str = "inputs") -> dict[str, np.ndarray]:
    """Predict ``x`` (``[N, *input_shape]`` in the data set's own units) with a finished run.

    Args:
      run_dir: the run directory (``sparse-bnn fit --out``).
      x: the examples; images of one channel may leave the channel axis out or come flattened.
      samples: average over the compact model's posterior samples (else the median network).
      batch_size: examples per forward pass.
      data_dir: where the training data are, for runs saved without their preprocessing.
      source: names the inputs in error messages.

    Returns:
      See the module docstring.

    Warns:
      InputWarning: inputs far outside the range of the training inputs (other units?).

    Raises:
      InputError: not a finished run, a corrupt model, inputs of the wrong shape or with NaN/inf,
        or outputs that are not finite.
    """
    architecture, preprocessing = _read_model(run_dir, data_dir)
    x = prepare_inputs(x, preprocessing, source)
    model_dir = Path(run_dir) / COMPACT_DIR
    if samples and architecture.get("num_samples"):
        net, draws = compact_io.load_compact_samples(model_dir)
        apply = FunctionalNet(net).apply
        outputs_fn = jax.jit(lambda s, xb: compact_io.sampled_outputs(apply, s, xb))
        outputs = compact_io.batched(lambda xb: outputs_fn(draws, xb), x, batch_size)  # [S, N, out]
    else:
        samples = False
        outputs = compact_io.compact_outputs(compact_io.load_compact(model_dir), x, batch_size)[None]  # [1, N, out]
    outputs = np.asarray(outputs, np.float64)
    bad = ~np.isfinite(outputs).reshape(outputs.shape[0], outputs.shape[1], -1).all(axis=(0, 2))
    if bad.any():
        raise InputError(f"{source}: the model's outputs are NaN/inf for {int(bad.sum())} of {len(bad)} examples "
                         f"(first: example {int(np.argmax(bad))}); the inputs are too far from the training data "
                         f"(other units?) or {model_dir} is corrupt")
    if preprocessing["task"] == "classification":
        return _class_predictions(outputs, samples)
    return _regression_predictions(outputs, architecture["metadata"].get("noise_std") or 0.0, preprocessing)


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -np.sum(probs * np.log(np.clip(probs, 1e-300, None)), axis=-1)


def _class_predictions(logits: np.ndarray, samples: bool) -> dict[str, np.ndarray]:
    """From logits ``[S, N, C]``."""
    sample_probs = np.exp(logits - logits.max(-1, keepdims=True))
    sample_probs /= sample_probs.sum(-1, keepdims=True)
    probs = sample_probs.mean(0)
    result = {"label": probs.argmax(-1), "entropy": _entropy(probs)}
    if samples:
        result["mutual_information"] = np.maximum(result["entropy"] - _entropy(sample_probs).mean(0), 0.0)
    result["probs"] = probs
    return result


def _regression_predictions(means: np.ndarray, noise: float, preprocessing: dict) -> dict[str, np.ndarray]:
    """From sampled means ``[S, N, out]`` in standardised units."""
    mean, std = means.mean(0), np.sqrt(means.var(0) + noise ** 2)
    if preprocessing.get("y_std") is not None:
        y_mean, y_std = np.asarray(preprocessing["y_mean"]), np.asarray(preprocessing["y_std"])
        mean, std = mean * y_std + y_mean, std * y_std
    return {"mean": mean, "std": std}


def _columns(predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One column per name, in the order they are written."""
    columns = {}
    for name, values in predictions.items():
        if values.ndim == 1:
            columns[name] = values
        elif name == "probs":
            columns.update({f"p{k}": values[:, k] for k in range(values.shape[1])})
        elif values.shape[1] == 1:
            columns[name] = values[:, 0]
        else:
            columns.update({f"{name}{k}": values[:, k] for k in range(values.shape[1])})
    return columns


def check_output(path: str | os.PathLike | None) -> None:
    """Refuse an output path that cannot take the predictions (a directory, or in a folder that
    does not exist), before any work is done; ``None`` (standard output) is always fine."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--out {path} is a directory; give a file name ending in .csv or .npz")
    if not path.parent.is_dir():
        raise InputError(f"--out {path}: the folder {path.parent} does not exist; create it first")


def write_predictions(path: str | os.PathLike | None, predictions: dict[str, np.ndarray],
                      stream: IO[str] | None = None) -> None:
    """Write :func:`predict_run`'s result: ``.npz`` (its arrays) or CSV (one row per example,
    columns ``label, entropy, mutual_information, p0..`` or ``mean, std``); ``path=None`` writes
    the CSV to ``stream`` (standard output by default)."""
    check_output(path)
    try:
        if path is not None and Path(path).suffix == ".npz":
            np.savez(path, **predictions)
            return
        columns = _columns(predictions)
        rows = zip(*(values.tolist() for values in columns.values()))
        with open(path, "w", newline="") if path is not None else contextlib.nullcontext(stream or sys.stdout) as out:
            writer = csv.writer(out)
            writer.writerow(columns)
            writer.writerows(([value if isinstance(value, int) else f"{value:.6g}" for value in row]
                              for row in rows))
    except (IsADirectoryError, PermissionError, FileNotFoundError) as error:
        raise InputError(f"--out {path}: cannot write the predictions ({error.strerror or error})") from None


"""The named data sets and user files, loaded as a standardised :class:`~sparse_bnn.data.preprocess.Dataset`
(:func:`load_dataset`); the synthetic teacher regression (:func:`make_teacher_regression`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sparse_bnn.data.formats import DataNotFoundError, _check_finite, load_cifar10_folder, load_idx_folder, read_csv
from sparse_bnn.data.locate import find_cifar10_folder, find_idx_folder
from sparse_bnn.data.preprocess import Dataset, _assemble, _check_labels, split_indices
from sparse_bnn.data.tabular import load_npz
from sparse_bnn.errors import InputError

DATASET_NAMES: tuple[str, ...] = (
    "fashion-mnist",
    "mnist",
    "cifar10",
    "digits",
    "breast-cancer",
    "wine",
    "diabetes",
    "mnist1d",
    "teacher",
)

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar_10": "cifar10", "breast_cancer": "breast-cancer",
            "mnist-1d": "mnist1d", "mnist_1d": "mnist1d"}


# ----------------------------------------------------------------------------------------------
# Synthetic teacher regression
# ----------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": lambda a: a / (1.0 + np.exp(-a)),
    "relu": lambda a: np.maximum(a, 0.0),
    "tanh": np.tanh,
}


def teacher_forward(x: np.ndarray, weights: dict[str, np.ndarray],
                    activation: str = "silu") -> np.ndarray:
    """The noiseless teacher: ``act(x @ w1 + b1) @ w2 + b2``, ``x [N, D] -> [N, 1]``."""
    hidden = _ACTIVATIONS[activation](x @ weights["w1"] + weights["b1"])
    return hidden @ weights["w2"] + weights["b2"]


def make_teacher_regression(n: int, in_features: int = 10, hidden: int = 3, noise: float = 0.1,
                            seed: int = 0, activation: str = "silu"
                            ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Regression data from a random one-hidden-layer teacher MLP.

    ``x ~ N(0, I)``, ``y = act(x @ w1 + b1) @ w2 + b2 + noise * eps``, ``eps ~ N(0, 1)``.
    Every teacher hidden unit is active: each ``w1`` column is a random unit vector (so its
    pre-activation is ``N(0, 1)``), ``b1 = 0``, and each output weight has magnitude in
    ``[0.5, 1.5]`` with a random sign. The true number of active hidden units is ``hidden``,
    the target a sparse student network should recover.

    Returns:
      ``x [n, in_features] float32``, ``y [n, 1] float32`` and the teacher's weights
      ``{"w1": [in_features, hidden], "b1": [hidden], "w2": [hidden, 1], "b2": [1]}``.
    """
    if activation not in _ACTIVATIONS:
        raise InputError(f"activation {activation!r} unknown; choose from {sorted(_ACTIVATIONS)}")
    if n < 1 or in_features < 1 or hidden < 1 or noise < 0:
        raise InputError(f"need n, in_features, hidden >= 1 and noise >= 0; got n={n}, "
                         f"in_features={in_features}, hidden={hidden}, noise={noise}")
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((in_features, hidden))
    w1 = directions / np.linalg.norm(directions, axis=0, keepdims=True)
    magnitudes = rng.uniform(0.5, 1.5, size=(hidden, 1))
    w2 = magnitudes * rng.choice([-1.0, 1.0], size=(hidden, 1))
    weights = {"w1": w1, "b1": np.zeros(hidden), "w2": w2, "b2": np.zeros(1)}
    x = rng.standard_normal((n, in_features))
    y = teacher_forward(x, weights, activation) + noise * rng.standard_normal((n, 1))
    return x.astype(np.float32), y.astype(np.float32), weights


# ----------------------------------------------------------------------------------------------
# User files
# ----------------------------------------------------------------------------------------------


def _load_user_file(path: Path, **options: Any) -> Dataset:
    source = str(path)
    x_test = y_test = None
    if path.suffix == ".npz":
        archive = load_npz(path)
        if "x" not in archive or "y" not in archive:
            raise InputError(f"{path}: needs arrays 'x' and 'y' (optionally 'x_test', "
                             f"'y_test'); found {sorted(archive)}")
        x, y = archive["x"], archive["y"]
        if ("x_test" in archive) != ("y_test" in archive):
            raise InputError(f"{path}: give both 'x_test' and 'y_test' or neither")
        if "x_test" in archive:
            x_test, y_test = archive["x_test"], archive["y_test"]
    elif path.suffix == ".csv":
        x, y = read_csv(path)
    else:
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; use .npz or .csv")

    pairs = [("x", "y", x, y)] + ([("x_test", "y_test", x_test, y_test)]
                                  if x_test is not None else [])
    for x_name, y_name, xs, ys in pairs:
        _check_finite(xs, x_name, source)
        _check_finite(ys, y_name, source)
        if xs.ndim < 2:
            raise InputError(f"{path}: {x_name} must have shape [N, ...features], got {xs.shape}")
        if ys.ndim < 1:
            raise InputError(f"{path}: {y_name} must have shape [N] (or [N, 1]), got {ys.shape}")
        if 0 in xs.shape[1:]:
            raise InputError(f"{path}: {x_name} has examples of shape {xs.shape[1:]}, which hold no values")
        if len(xs) != len(ys):
            raise InputError(f"{path}: {x_name} has {len(xs)} rows but {y_name} has {len(ys)}")
    if len(x) == 0:
        raise InputError(f"{path}: x holds no examples; give at least a few")
    if x_test is not None and x_test.shape[1:] != x.shape[1:]:
        raise InputError(f"{path}: x_test examples have shape {x_test.shape[1:]}, "
                         f"x has {x.shape[1:]}")

    classification = np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_
    if x_test is not None and classification != (np.issubdtype(y_test.dtype, np.integer)
                                                  or y_test.dtype == np.bool_):
        raise InputError(f"{path}: y is {y.dtype} but y_test is {y_test.dtype}; "
                         "both must be integer (classification) or float (regression)")
    if classification:
        y = _check_labels(y, "y", source)
        if y_test is not None:
            y_test = _check_labels(y_test, "y_test", source)
        num_classes = int(max(y.max(), y_test.max() if y_test is not None and len(y_test)
                              else 0)) + 1
    else:
        for name, targets in (("y", y), ("y_test", y_test)):
            if targets is not None and not (targets.ndim == 1 or (targets.ndim == 2 and targets.shape[1] == 1)):
                raise InputError(f"{path}: regression targets {name} must have shape [N] or [N, 1], "
                                 f"got {targets.shape}")
        num_classes = None

    is_image = x.ndim == 4
    raw_divisor = 255.0 if is_image and x.dtype == np.uint8 else 1.0
    if x_test is None:
        keep, held = split_indices(len(x), 0.2, np.random.default_rng(options["seed"]),
                                   labels=y if classification else None)
        x, y, x_test, y_test = x[keep], y[keep], x[held], y[held]
    return _assemble(path.stem, "classification" if classification else "regression",
                     x, y, x_test, y_test, num_classes=num_classes, is_image=is_image,
                     flip=False, source=source, raw_divisor=raw_divisor, **options)


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------


def _sklearn_arrays(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn import datasets

    if name == "digits":
        bunch = datasets.load_digits()
        return bunch.data, bunch.target, "classification"  # pixels 0..16
    if name == "breast-cancer":
        bunch = datasets.load_breast_cancer()
        return bunch.data, bunch.target, "classification"
    if name == "wine":
        bunch = datasets.load_wine()
        return bunch.data, bunch.target, "classification"
    bunch = datasets.load_diabetes(scaled=False)
    return bunch.data, bunch.target, "regression"


def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The standard MNIST-1D set (seed 42, 4000/1000), generated offline.

    ``mnist1d.data.make_dataset`` only computes (its ``get_dataset`` would download); it reseeds
    numpy's and python's global generators, so their states are restored afterwards.
    """
    import random

    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError("the mnist1d data set needs the mnist1d package: "
                          "pip install 'sparse_bnn[data]' (or pip install mnist1d)") from error
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        generated = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return generated["x"], generated["y"], generated["x_test"], generated["y_test"]


def load_dataset(name_or_path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 validation_fraction: float = 0.0, standardize: bool = True, seed: int = 0,
                 download: bool = True, n_train: int | None = None, n_test: int | None = None,
                 standardize_targets: bool = True) -> Dataset:
    """Load a named data set or a user ``.npz``/``.csv`` file as a standardised `Dataset`.

    Args:
      name_or_path: one of `DATASET_NAMES`, or a path to ``.npz`` (arrays ``x``, ``y``,
        optionally ``x_test``, ``y_test``) or ``.csv`` (last column the target; integer targets
        mean classification, anything else regression). Without a test split, a seeded 80/20
        split (stratified for classification) is made.
      data_dir: folder searched first for file-based sets (MNIST, Fashion-MNIST, CIFAR-10).
      validation_fraction: fraction of the training examples held out as validation split
        (stratified for classification).
      standardize: standardise inputs with training-split statistics (images: one global
        mean/std after scaling pixels to [0, 1]; tabular: per feature).
      seed: seeds subsampling, splits and the teacher generator.
      download: allow downloading MNIST/Fashion-MNIST into the cache when found nowhere.
      n_train, n_test: keep only this many training / test examples (the first ones after a
        seeded shuffle); validation is then carved out of the ``n_train``. For ``teacher`` they
        are the generated sizes (defaults 1000 and 1000).
      standardize_targets: standardise regression targets (``y_mean``/``y_std`` kept so that
        errors can be reported in original units).

    Raises:
      ValueError: unknown name (the message lists the valid ones) or malformed data.
      DataNotFoundError: the files of a file-based set were found nowhere.
    """
    options = dict(validation_fraction=validation_fraction, standardize=standardize,
                   standardize_targets=standardize_targets, seed=seed)
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.suffix in (".npz", ".csv"):
        if not path.is_file():
            raise DataNotFoundError(f"data file {path} does not exist")
        return _load_user_file(path, n_train=n_train, n_test=n_test, **options)
    name = _ALIASES.get(text.lower(), text.lower())
    if name not in DATASET_NAMES:
        raise InputError(f"unknown data set {text!r}; choose one of {', '.join(DATASET_NAMES)} "
                         "or give a path to a .npz or .csv file")
    subsample = dict(n_train=n_train, n_test=n_test)

    if name in ("fashion-mnist", "mnist"):
        folder = find_idx_folder(name, data_dir, download=download)
        x_train, y_train, x_test, y_test = load_idx_folder(folder)
        return _assemble(name, "classification", x_train[..., None], y_train, x_test[..., None], y_test,
                         num_classes=10, is_image=True, flip=name == "fashion-mnist",
                         source=str(folder), raw_divisor=255.0, **subsample, **options)
    if name == "cifar10":
        folder = find_cifar10_folder(data_dir)
        x_train, y_train, x_test, y_test = load_cifar10_folder(folder)
        return _assemble(name, "classification", x_train, y_train, x_test, y_test, num_classes=10,
                         is_image=True, flip=False, source=str(folder), raw_divisor=255.0,
                         **subsample, **options)
    if name in ("digits", "breast-cancer", "wine", "diabetes"):
        x, y, task = _sklearn_arrays(name)
        keep, held = split_indices(len(x), 0.2, np.random.default_rng(seed),
                                   labels=y if task == "classification" else None)
        num_classes = int(y.max()) + 1 if task == "classification" else None
        return _assemble(name, task, x[keep], y[keep], x[held], y[held],
                         num_classes=num_classes, is_image=False, flip=False,
                         source=f"sklearn.datasets ({name})", raw_divisor=16.0 if name == "digits" else 1.0,
                         **subsample, **options)
    if name == "mnist1d":
        x_train, y_train, x_test, y_test = _mnist1d_arrays()
        return _assemble(name, "classification", x_train, y_train, x_test, y_test,
                         num_classes=10, is_image=False, flip=False,
                         source="mnist1d.data.make_dataset (offline, seed 42)",
                         **subsample, **options)
    # teacher
    num_train = 1000 if n_train is None else n_train
    num_test = 1000 if n_test is None else n_test
    x, y, weights = make_teacher_regression(num_train + num_test, seed=seed)
    info = {"teacher_weights": weights, "true_active_units": [weights["w1"].shape[1]],
            "activation": "silu", "noise": 0.1}
    return _assemble(name, "regression", x[:num_train], y[:num_train], x[num_train:],
                     y[num_train:], num_classes=None, is_image=False, flip=False,
                     source="make_teacher_regression(in_features=10, hidden=3, noise=0.1)",
                     info=info, n_train=None, n_test=None, **options)

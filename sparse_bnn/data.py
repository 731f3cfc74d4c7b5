"""Array data sets for sparse_bnn: host-side numpy loaders, one `Dataset` record for all.

Everything here is plain numpy (the training loop moves arrays to the device itself), except
`flip_augment`, a pure JAX function meant to run inside a jitted `lax.scan`.

Sources (`DATASET_NAMES`, or a path to a user ``.npz``/``.csv`` file):

* ``fashion-mnist``, ``mnist``: IDX files (``train-images-idx3-ubyte[.gz]`` ...), searched in
  ``data_dir``, ``$SPARSE_BNN_DATA`` (and its ``<name>`` subfolder), the Debian system folder
  ``/usr/share/datasets/<name>``, the cache ``$XDG_CACHE_HOME/sparse_bnn/<name>``
  (``~/.cache/...``), then downloaded from the official URLs (md5-checked) when allowed.
* ``cifar10``: the binary batches (``cifar-10-batches-bin``) or the python batches
  (``cifar-10-batches-py``, read through a restricted unpickler) from a user folder.
* ``digits``, ``breast-cancer``, ``wine`` (classification), ``diabetes`` (regression): the
  scikit-learn bundled sets with a seeded 80/20 split (stratified for classification).
* ``mnist1d``: generated offline with the ``mnist1d`` package (4000 train / 1000 test).
* ``teacher``: synthetic regression from a random teacher MLP (`make_teacher_regression`).

Shapes: images are NHWC ``[N, H, W, C]`` float32; tabular data ``[N, D]`` float32; class labels
``[N]`` int32; regression targets ``[N, 1]`` float32.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import os
import pickle
import re
import struct
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DATASET_NAMES",
    "DataNotFoundError",
    "Dataset",
    "flip_augment",
    "load_dataset",
    "make_teacher_regression",
    "prepare_inputs",
    "read_idx",
    "read_cifar10_binary_batch",
    "read_cifar10_python_batch",
    "read_csv",
]

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


class DataNotFoundError(FileNotFoundError):
    """A data set's files were found nowhere; the message lists where we looked and what to do."""


# ----------------------------------------------------------------------------------------------
# The Dataset record
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Dataset:
    """Train/validation/test arrays of one data set, already standardised.

    Attributes:
      name: data set name (``"fashion-mnist"``, a file name for user data, ...).
      task: ``"classification"`` or ``"regression"``.
      x_train, x_val, x_test: float32 inputs ``[N, *input_shape]`` (NHWC for images).
      y_train, y_val, y_test: int32 labels ``[N]`` (classification) or float32 ``[N, 1]``
        (regression, standardised when ``y_std`` is set).
      num_classes: number of classes, ``None`` for regression.
      input_shape: shape of one example, e.g. ``(28, 28, 1)`` or ``(64,)``.
      flip_augment: whether training should apply horizontal-flip augmentation.
      raw_divisor: the source's values are divided by this first (255 for 8-bit images, 16 for
        scikit-learn's digits, else 1).
      mean, std: the input standardisation (``x = (raw / raw_divisor - mean) / std``) from the
        training split: scalars for images, ``[D]`` for tabular data; ``None`` if not standardised.
      y_mean, y_std: the target standardisation (regression), ``[1]`` each, or ``None``.
      source: where the arrays came from (folder, file or generator).
      info: extra facts (e.g. the teacher's weights and true number of active units).
    """

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None
    input_shape: tuple[int, ...]
    flip_augment: bool = False
    raw_divisor: float = 1.0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None
    source: str = ""
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def input_dim(self) -> int:
        """Number of input features once an example is flattened."""
        return int(np.prod(self.input_shape))

    def targets_in_original_units(self, y: np.ndarray) -> np.ndarray:
        """Undo the target standardisation: ``y * y_std + y_mean`` (identity if none)."""
        if self.y_std is None:
            return np.asarray(y)
        return np.asarray(y) * self.y_std + self.y_mean

    def preprocessing(self) -> dict[str, Any]:
        """JSON-able recipe from the source's units to the network's inputs and from its outputs
        back to the source's target units: what :func:`prepare_inputs` and ``sparse-bnn predict``
        apply to new data."""
        def listed(array):
            return None if array is None else np.asarray(array).tolist()
        return {"task": self.task, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "raw_divisor": float(self.raw_divisor), "mean": listed(self.mean), "std": listed(self.std),
                "y_mean": listed(self.y_mean), "y_std": listed(self.y_std)}

    def summary(self) -> dict[str, Any]:
        """JSON-able description: sizes, shapes, classes, standardisation."""
        summary: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "num_train": int(len(self.x_train)),
            "num_val": int(len(self.x_val)),
            "num_test": int(len(self.x_test)),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "flip_augment": bool(self.flip_augment),
            "standardized": self.std is not None,
            "targets_standardized": self.y_std is not None,
            "source": self.source,
        }
        if self.task == "classification":
            counts = np.bincount(self.y_train, minlength=self.num_classes or 0)
            summary["train_class_counts"] = [int(c) for c in counts]
        else:
            summary["y_std_original_units"] = (
                float(self.y_std[0]) if self.y_std is not None else None)
        return summary


# ----------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# ----------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DOWNLOAD_URLS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}

# md5 of the official ``.gz`` files.
IDX_MD5 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}

# Debian's dataset-fashion-mnist installs here; tests monkeypatch this table.
SYSTEM_DATA_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}

_APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped when the name ends in ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError) as error:  # BadGzipFile is an OSError
            raise ValueError(f"{path}: not a valid gzip file ({error}); "
                             "delete it and fetch it again") from error
    return path.read_bytes()


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (raw or ``.gz``) into a uint8 array.

    Args:
      path: the file.
      expected_magic: 2051 (images ``[N, H, W]``) or 2049 (labels ``[N]``); ``None`` accepts
        any unsigned-byte IDX file.

    Returns:
      uint8 array of the shape the header declares.

    Raises:
      ValueError: naming the file, on a bad magic number, an unsupported element type, a
        header or payload shorter than declared, trailing bytes, or zero-sized image dims.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, need at least 4)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    magic = struct.unpack(">I", data[:4])[0]
    if zero != 0:
        raise ValueError(f"{path}: bad IDX magic number {magic:#010x}; "
                         "expected 0x00000803 (images) or 0x00000801 (labels)")
    if dtype_code != 0x08:
        raise ValueError(f"{path}: IDX element type {dtype_code:#04x} unsupported; "
                         "expected 0x08 (unsigned byte)")
    if expected_magic is not None and magic != expected_magic:
        kinds = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
        raise ValueError(
            f"{path}: IDX magic number {magic} ({ndim} dimensions), expected {expected_magic} "
            f"({kinds.get(expected_magic, '?')}); are the image and label files swapped?")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions declared but only "
                         f"{len(data)} bytes in the file")
    dims = struct.unpack(f">{ndim}I", data[4:header_end])
    if magic == IDX_IMAGES_MAGIC and (dims[1] == 0 or dims[2] == 0):
        raise ValueError(f"{path}: image dimensions {dims[1]}x{dims[2]} must be positive")
    expected_bytes = int(np.prod(dims, dtype=np.int64))
    payload_bytes = len(data) - header_end
    if payload_bytes < expected_bytes:
        raise ValueError(f"{path}: truncated payload: header declares dims {list(dims)} "
                         f"({expected_bytes} bytes) but only {payload_bytes} bytes follow; "
                         "the file is incomplete, fetch it again")
    if payload_bytes > expected_bytes:
        raise ValueError(f"{path}: {payload_bytes - expected_bytes} unexpected trailing bytes "
                         f"after the payload of dims {list(dims)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(dims).copy()


def _idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` (raw) or ``folder/stem.gz``, whichever exists (raw preferred)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _folder_has_idx_set(folder: Path) -> bool:
    return all(_idx_file(folder, stem) is not None for stem in IDX_FILES.values())


def load_idx_folder(folder: str | os.PathLike, num_classes: int = 10
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the four MNIST-style IDX files of a folder.

    Returns:
      ``x_train [N, H, W] uint8, y_train [N] uint8, x_test [M, H, W] uint8, y_test [M] uint8``.
    """
    folder = Path(folder)
    arrays = []
    for split in ("train", "test"):
        image_path = _idx_file(folder, IDX_FILES[f"{split}_images"])
        label_path = _idx_file(folder, IDX_FILES[f"{split}_labels"])
        if image_path is None or label_path is None:
            raise DataNotFoundError(f"{folder}: missing {split} IDX files "
                                    f"({IDX_FILES[f'{split}_images']}[.gz], "
                                    f"{IDX_FILES[f'{split}_labels']}[.gz])")
        images = read_idx(image_path, IDX_IMAGES_MAGIC)
        labels = read_idx(label_path, IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(f"{image_path} holds {len(images)} images but {label_path} holds "
                             f"{len(labels)} labels; the two files must match")
        if len(labels) and labels.max() >= num_classes:
            raise ValueError(f"{label_path}: label {int(labels.max())} out of range "
                             f"0..{num_classes - 1}")
        arrays += [images, labels]
    return tuple(arrays)  # type: ignore[return-value]


def _cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "sparse_bnn"


def _search_places(name: str, data_dir: str | os.PathLike | None) -> list[tuple[str, Path | None]]:
    """The folders looked in, in order, each with a description for error messages."""
    places: list[tuple[str, Path | None]] = []
    if data_dir is not None:
        places += [("data_dir argument (--data-dir)", Path(data_dir)),
                   (f"data_dir argument, subfolder {name}", Path(data_dir) / name)]
    else:
        places.append(("data_dir argument (--data-dir): not given", None))
    env_dir = os.environ.get("SPARSE_BNN_DATA")
    if env_dir:
        places += [("$SPARSE_BNN_DATA", Path(env_dir)),
                   (f"$SPARSE_BNN_DATA, subfolder {name}", Path(env_dir) / name)]
    else:
        places.append(("$SPARSE_BNN_DATA: not set", None))
    if name in SYSTEM_DATA_DIRS:
        package = _APT_PACKAGES.get(name)
        label = f"system folder (Debian package {package})" if package else "system folder"
        places.append((label, SYSTEM_DATA_DIRS[name]))
    places.append(("cache ($XDG_CACHE_HOME or ~/.cache)", _cache_root() / name))
    return places


def _format_places(places: list[tuple[str, Path | None]]) -> str:
    return "\n".join(f"  {i}. {label}" + (f": {folder}" if folder is not None else "")
                     for i, (label, folder) in enumerate(places, start=1))


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, destination: Path, md5: str, timeout: float = 60.0) -> None:
    """Download ``url`` to ``destination`` atomically (temp file + ``os.replace``), md5-checked."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=destination.name + ".")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                out.write(chunk)
        actual = _md5(Path(temp_name))
        if actual != md5:
            raise ValueError(f"{url}: md5 {actual} does not match the published {md5}")
        os.replace(temp_name, destination)
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)


def _download_idx_set(name: str, folder: Path) -> None:
    for file_name, md5 in IDX_MD5[name].items():
        target = folder / file_name
        if target.is_file() and _md5(target) == md5:
            continue
        download_file(DOWNLOAD_URLS[name] + file_name, target, md5)


def find_idx_folder(name: str, data_dir: str | os.PathLike | None = None,
                    download: bool = True) -> Path:
    """The first folder holding the four IDX files of ``name`` (downloading as a last resort).

    Raises:
      DataNotFoundError: listing every place looked and how to get the data.
    """
    places = _search_places(name, data_dir)
    for _, folder in places:
        if folder is not None and _folder_has_idx_set(folder):
            return folder
    cache_folder = _cache_root() / name
    if download:
        try:
            _download_idx_set(name, cache_folder)
            return cache_folder
        except (OSError, ValueError) as error:
            download_note = f"download from {DOWNLOAD_URLS[name]} failed: {error}"
    else:
        download_note = f"download from {DOWNLOAD_URLS[name]}: skipped (download=False)"
    stems = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
    hints = []
    if name in _APT_PACKAGES:
        hints.append(f"sudo apt-get install {_APT_PACKAGES[name]}   "
                     f"(installs into {SYSTEM_DATA_DIRS[name]})")
    hints += [f"download the four .gz files from {DOWNLOAD_URLS[name]} into a folder and pass "
              "--data-dir FOLDER (or set SPARSE_BNN_DATA=FOLDER)",
              "or work offline on a bundled set: --data digits"]
    raise DataNotFoundError(
        f"{name} not found. Each place needs the files {stems}. Looked in, in this order:\n"
        f"{_format_places(places)}\n  {len(places) + 1}. {download_note}\n"
        "To get the data:\n" + "\n".join(f"  * {hint}" for hint in hints))


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------

CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def read_cifar10_binary_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch (records of 1 label byte + 3072 CHW bytes).

    Returns:
      ``images [N, 32, 32, 3] uint8`` (NHWC) and ``labels [N] uint8``.
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % CIFAR10_RECORD_BYTES:
        raise ValueError(f"{path}: size {data.size} bytes is not a positive multiple of the "
                         f"CIFAR-10 record size {CIFAR10_RECORD_BYTES}; the file is truncated "
                         "or not a CIFAR-10 binary batch")
    records = data.reshape(-1, CIFAR10_RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise ValueError(f"{path}: label {int(labels.max())} out of range 0..9")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return images, labels


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused."""

    _BUILTINS = {"dict": dict, "list": list, "bytes": bytes, "str": str, "int": int}

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in self._BUILTINS:
            return self._BUILTINS[name]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only plain containers and numpy arrays "
            "are allowed in a CIFAR-10 python batch")


def read_cifar10_python_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One python batch (pickled dict with ``data [N, 3072]`` CHW and ``labels``), read safely.

    Returns:
      ``images [N, 32, 32, 3] uint8`` (NHWC) and ``labels [N] uint8``.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            batch = _RestrictedUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: {error}") from error
        except Exception as error:
            raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({error})") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, found {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: keys {sorted(batch)} lack 'data' and 'labels'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data has dtype {data.dtype} and shape {data.shape}, "
                         "expected uint8 [N, 3072]")
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return images, labels.astype(np.uint8)


def _cifar10_folder_kind(folder: Path) -> tuple[str, Path] | None:
    for kind, sub, first in (("bin", "cifar-10-batches-bin", "data_batch_1.bin"),
                             ("py", "cifar-10-batches-py", "data_batch_1")):
        for candidate in (folder / sub, folder):
            if (candidate / first).is_file():
                return kind, candidate
    return None


def load_cifar10_folder(folder: str | os.PathLike
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 from a folder holding (or being) ``cifar-10-batches-bin`` or ``-py``.

    The binary batches are preferred when both are present.

    Returns:
      ``x_train [50000, 32, 32, 3] uint8, y_train, x_test [10000, 32, 32, 3] uint8, y_test``.
    """
    found = _cifar10_folder_kind(Path(folder))
    if found is None:
        raise DataNotFoundError(f"{folder}: no cifar-10-batches-bin or cifar-10-batches-py")
    kind, batch_folder = found
    suffix, reader = (".bin", read_cifar10_binary_batch) if kind == "bin" else (
        "", read_cifar10_python_batch)
    train_names = [f"data_batch_{i}{suffix}" for i in range(1, 6)]
    missing = [n for n in train_names + [f"test_batch{suffix}"]
               if not (batch_folder / n).is_file()]
    if missing:
        raise DataNotFoundError(f"{batch_folder}: missing CIFAR-10 batches {missing}")
    train = [reader(batch_folder / n) for n in train_names]
    x_test, y_test = reader(batch_folder / f"test_batch{suffix}")
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
            x_test, y_test)


def find_cifar10_folder(data_dir: str | os.PathLike | None = None) -> Path:
    places = [(label, folder) for label, folder in _search_places("cifar10", data_dir)]
    for _, folder in places:
        if folder is not None and _cifar10_folder_kind(folder) is not None:
            return folder
    raise DataNotFoundError(
        "cifar10 not found (needs cifar-10-batches-bin/ or cifar-10-batches-py/). "
        f"Looked in, in this order:\n{_format_places(places)}\n"
        f"To get the data: download the binary (or python) version from {CIFAR10_URL}, "
        "unpack it into a folder and pass --data-dir FOLDER (or set SPARSE_BNN_DATA=FOLDER); "
        "or work offline on a bundled set: --data digits")


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
        raise ValueError(f"activation {activation!r} unknown; choose from {sorted(_ACTIVATIONS)}")
    if n < 1 or in_features < 1 or hidden < 1 or noise < 0:
        raise ValueError(f"need n, in_features, hidden >= 1 and noise >= 0; got n={n}, "
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
# Splits, subsampling, standardisation
# ----------------------------------------------------------------------------------------------


def split_indices(num_examples: int, fraction: float, rng: np.random.Generator,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split into ``(keep, held_out)`` index arrays, held out ~``fraction``.

    With ``labels``, the split is stratified: each class contributes
    ``round(fraction * class_count)`` examples to the held-out part.
    """
    if labels is None:
        order = rng.permutation(num_examples)
        n_held = int(round(fraction * num_examples))
        return np.sort(order[n_held:]), np.sort(order[:n_held])
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held.append(members[: int(round(fraction * len(members)))])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(num_examples), held_out)
    return keep, held_out


def _subsample(x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator,
               what: str) -> tuple[np.ndarray, np.ndarray]:
    if n is None:
        return x, y
    if not 1 <= n <= len(x):
        raise ValueError(f"{what}={n} but only {len(x)} examples are available; "
                         f"pass 1 <= {what} <= {len(x)}")
    chosen = rng.permutation(len(x))[:n]
    return x[chosen], y[chosen]


def _scale_raw(x: np.ndarray, raw_divisor: float) -> np.ndarray:
    """``float32(x) / raw_divisor`` (no copy of float32 data when the divisor is 1)."""
    x = x.astype(np.float32, copy=False)
    return x if raw_divisor == 1 else x / np.float32(raw_divisor)


def _standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x - mean) / std).astype(np.float32)


def _standardize_inputs(x_train: np.ndarray, others: list[np.ndarray], is_image: bool
                        ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Standardise with training statistics: one scalar for images, per feature otherwise.

    Zero-variance features get ``std = 1`` (they become 0 everywhere in the training split).
    """
    axes = None if is_image else 0
    mean = np.asarray(x_train.mean(axis=axes, dtype=np.float64))
    std = np.asarray(x_train.std(axis=axes, dtype=np.float64))
    std = np.where(std > 0, std, 1.0)
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    return _standardize(x_train, mean, std), [_standardize(x, mean, std) for x in others], mean, std


def prepare_inputs(x: np.ndarray, preprocessing: Mapping[str, Any], source: str = "inputs") -> np.ndarray:
    """New examples in the source's units -> the network's inputs, as the training data were made.

    Args:
      x: ``[N, *input_shape]`` numbers in the units of the data set's files (pixel values 0-255
        for the IDX and CIFAR-10 sets and for uint8 images of a ``.npz``, 0-16 for digits, raw
        features for tabular data). Images of one channel may leave the channel axis out, and
        examples of one channel or tabular data may come flattened (``[N, prod(input_shape)]``).
      preprocessing: :meth:`Dataset.preprocessing` of the training data.
      source: names the inputs in error messages.

    Returns:
      float32 ``[N, *input_shape]``.

    Raises:
      ValueError: non-numeric or non-finite values, or examples of another shape.
    """
    x = np.asarray(x)
    _check_finite(x, "the inputs", source)
    shape = tuple(preprocessing["input_shape"])
    flat = int(np.prod(shape))
    if x.shape[1:] != shape:
        single_channel = len(shape) == 1 or shape[-1] == 1
        if x.ndim >= 2 and single_channel and (x.shape[1:] == shape[:-1] or x.shape[1:] == (flat,)):
            x = x.reshape(len(x), *shape)
        else:
            raise ValueError(f"{source}: examples of shape {x.shape[1:]}, but the model takes {shape}"
                             + (f" (or {flat} values per example)" if single_channel and len(shape) > 1 else ""))
    x = _scale_raw(x, preprocessing["raw_divisor"])
    if preprocessing["mean"] is not None:
        x = _standardize(x, np.asarray(preprocessing["mean"], np.float32), np.asarray(preprocessing["std"], np.float32))
    return x


def _check_finite(array: np.ndarray, what: str, source: str) -> None:
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise ValueError(f"{source}: {what} has non-numeric dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            first = np.argwhere(bad)[0]
            raise ValueError(f"{source}: {what} holds {int(bad.sum())} NaN/inf values "
                             f"(first at index {tuple(int(i) for i in first)}); "
                             "remove or impute them first")


def _check_labels(y: np.ndarray, what: str, source: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{source}: {what} labels must have shape [N], got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_:
        raise ValueError(f"{source}: {what} labels must be integers, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise ValueError(f"{source}: {what} labels must be integers >= 0, found {int(y.min())}; "
                         "relabel the classes 0..K-1 (or store float targets for regression)")
    return y.astype(np.int32)


def _assemble(name: str, task: str, x_train: np.ndarray, y_train: np.ndarray,
              x_test: np.ndarray, y_test: np.ndarray, *, num_classes: int | None,
              is_image: bool, validation_fraction: float, standardize: bool,
              standardize_targets: bool, seed: int, n_train: int | None, n_test: int | None,
              flip: bool, source: str, info: dict[str, Any] | None = None,
              raw_divisor: float = 1.0) -> Dataset:
    """Subsample, carve the validation split, scale (``/ raw_divisor``) and standardise with
    training statistics."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must lie in [0, 1)")
    rng = np.random.default_rng(seed)
    x_train, y_train = _subsample(x_train, y_train, n_train, rng, "n_train")
    x_test, y_test = _subsample(x_test, y_test, n_test, rng, "n_test")
    classification = task == "classification"
    keep, held = split_indices(len(x_train), validation_fraction, rng,
                               labels=y_train if classification else None)
    if len(keep) == 0:
        raise ValueError(f"validation_fraction={validation_fraction} leaves no training data")
    x_val, y_val = x_train[held], y_train[held]
    if len(held):
        x_train, y_train = x_train[keep], y_train[keep]

    x_train, x_val, x_test = (_scale_raw(x, raw_divisor) for x in (x_train, x_val, x_test))
    mean = std = None
    if standardize:
        x_train, (x_val, x_test), mean, std = _standardize_inputs(x_train, [x_val, x_test],
                                                                   is_image)
    y_mean = y_std = None
    if classification:
        y_train, y_val, y_test = (y.astype(np.int32) for y in (y_train, y_val, y_test))
    else:
        y_train, y_val, y_test = (y.astype(np.float32).reshape(-1, 1)
                                  for y in (y_train, y_val, y_test))
        if standardize_targets:
            y_train, (y_val, y_test), y_mean, y_std = _standardize_inputs(
                y_train, [y_val, y_test], is_image=False)
    return Dataset(name=name, task=task, x_train=x_train, y_train=y_train, x_val=x_val,
                   y_val=y_val, x_test=x_test, y_test=y_test, num_classes=num_classes,
                   input_shape=tuple(int(d) for d in x_train.shape[1:]), flip_augment=flip,
                   raw_divisor=float(raw_divisor), mean=mean, std=std, y_mean=y_mean, y_std=y_std, source=source,
                   info=info or {})


# ----------------------------------------------------------------------------------------------
# User files
# ----------------------------------------------------------------------------------------------

_INTEGER = re.compile(r"^[+-]?\d+$")


def read_csv(path: Path, with_target: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Numeric CSV, optional header row, last column the target (``None`` without one).

    Integer-looking targets (no decimal point) give int64 labels, anything else float64.
    """
    with open(path, newline="") as f:
        rows = [(line_no, row) for line_no, row in enumerate(csv.reader(f), start=1)
                if row and any(field.strip() for field in row)]
    if not rows:
        raise ValueError(f"{path}: the CSV file is empty")

    def is_number(field: str) -> bool:
        try:
            float(field)
            return True
        except ValueError:
            return False

    if not all(is_number(field) for field in rows[0][1]):
        rows = rows[1:]  # header
    if not rows:
        raise ValueError(f"{path}: the CSV file has a header but no data rows")
    width = len(rows[0][1])
    if width < 1 + with_target:
        raise ValueError(f"{path}: need at least one feature column and a target column")
    values = np.empty((len(rows), width), dtype=np.float64)
    target_is_integer = True
    for i, (line_no, row) in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"{path}, line {line_no}: {len(row)} columns, expected {width}")
        for j, field in enumerate(row):
            field = field.strip()
            try:
                values[i, j] = float(field)
            except ValueError:
                raise ValueError(f"{path}, line {line_no}, column {j + 1}: {field!r} is not "
                                 "a number (missing values must be removed or imputed)") from None
        target_is_integer &= bool(_INTEGER.match(row[-1].strip()))
    _check_finite(values, "the data", str(path))
    if not with_target:
        return values, None
    x, y = values[:, :-1], values[:, -1]
    return x, (y.astype(np.int64) if target_is_integer else y)


def _load_user_file(path: Path, **options: Any) -> Dataset:
    source = str(path)
    x_test = y_test = None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise ValueError(f"{path}: needs arrays 'x' and 'y' (optionally 'x_test', "
                                 f"'y_test'); found {sorted(archive.files)}")
            x, y = archive["x"], archive["y"]
            if ("x_test" in archive) != ("y_test" in archive):
                raise ValueError(f"{path}: give both 'x_test' and 'y_test' or neither")
            if "x_test" in archive:
                x_test, y_test = archive["x_test"], archive["y_test"]
    elif path.suffix == ".csv":
        x, y = read_csv(path)
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .npz or .csv")

    pairs = [("x", "y", x, y)] + ([("x_test", "y_test", x_test, y_test)]
                                  if x_test is not None else [])
    for x_name, y_name, xs, ys in pairs:
        _check_finite(xs, x_name, source)
        _check_finite(ys, y_name, source)
        if xs.ndim < 2:
            raise ValueError(f"{path}: {x_name} must have shape [N, ...features], got {xs.shape}")
        if len(xs) != len(ys):
            raise ValueError(f"{path}: {x_name} has {len(xs)} rows but {y_name} has {len(ys)}")
    if x_test is not None and x_test.shape[1:] != x.shape[1:]:
        raise ValueError(f"{path}: x_test examples have shape {x_test.shape[1:]}, "
                         f"x has {x.shape[1:]}")

    classification = np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_
    if x_test is not None and classification != (np.issubdtype(y_test.dtype, np.integer)
                                                  or y_test.dtype == np.bool_):
        raise ValueError(f"{path}: y is {y.dtype} but y_test is {y_test.dtype}; "
                         "both must be integer (classification) or float (regression)")
    if classification:
        y = _check_labels(y, "y", source)
        if y_test is not None:
            y_test = _check_labels(y_test, "y_test", source)
        num_classes = int(max(y.max(), y_test.max() if y_test is not None and len(y_test)
                              else 0)) + 1
    else:
        if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            raise ValueError(f"{path}: regression targets must have shape [N] or [N, 1], "
                             f"got {y.shape}")
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
        raise ValueError(f"unknown data set {text!r}; choose one of {', '.join(DATASET_NAMES)} "
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


# ----------------------------------------------------------------------------------------------
# Augmentation (JAX, jit-friendly)
# ----------------------------------------------------------------------------------------------


def flip_augment(key: jax.Array, x_batch: jax.Array) -> jax.Array:
    """Flip each NHWC image left-right with probability 1/2; identity for non-image data.

    Pure and shape-static, so it runs inside a jitted ``lax.scan``. Which images are flipped
    is ``jax.random.bernoulli(key, 0.5, (batch,))``. Each image gathers its columns in its own
    order (reversed or not): inside XLA:CPU's training step that costs half of selecting
    between the batch and its reverse (``jnp.where(flip, x[:, :, ::-1], x)``, the same values):
    0.33 against 0.75 ms per step of 1024 Fashion-MNIST images, a sixth of the SS-GHS step of a
    16-64 unit MLP.

    Args:
      key: PRNG key.
      x_batch: ``[B, H, W, C]`` images (anything of another rank is returned unchanged).
    """
    if x_batch.ndim != 4:
        return x_batch
    batch, _, width, _ = x_batch.shape
    flip = jax.random.bernoulli(key, 0.5, (batch,))
    columns = jnp.arange(width)
    order = jnp.where(flip[:, None], width - 1 - columns, columns)  # [B, W]
    return jnp.take_along_axis(x_batch, order[:, None, :, None], axis=2)

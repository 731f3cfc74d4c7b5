"""The file formats of the data sets, read into numpy: IDX (MNIST, Fashion-MNIST), the CIFAR-10
binary and python batches (the latter through a restricted unpickler); numeric CSV and the
checks of numeric arrays are :mod:`sparse_bnn.data.tabular` (re-exported here).

Where the files are looked for and downloaded is :mod:`sparse_bnn.data.locate`; the named data
sets are :mod:`sparse_bnn.data.sources`.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sparse_bnn.errors import InputError, MissingInputError
from sparse_bnn.data.tabular import _check_finite, read_csv  # noqa: F401  (re-exports)


class DataNotFoundError(MissingInputError):
    """A data set's files were found nowhere; the message lists where we looked and what to do."""


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


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped when the name ends in ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
            raise InputError(f"{path}: not a valid gzip file ({error}); "
                             "delete it and fetch it again") from None
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read the file ({error})") from None


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (raw or ``.gz``) into a uint8 array.

    Args:
      path: the file.
      expected_magic: 2051 (images ``[N, H, W]``) or 2049 (labels ``[N]``); ``None`` accepts
        any unsigned-byte IDX file.

    Returns:
      uint8 array of the shape the header declares.

    Raises:
      InputError: naming the file, on a bad magic number, an unsupported element type, a
        header or payload shorter than declared, trailing bytes, or zero-sized image dims.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise InputError(f"{path}: truncated IDX header ({len(data)} bytes, need at least 4)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    magic = struct.unpack(">I", data[:4])[0]
    if zero != 0:
        raise InputError(f"{path}: bad IDX magic number {magic:#010x}; "
                         "expected 0x00000803 (images) or 0x00000801 (labels)")
    if dtype_code != 0x08:
        raise InputError(f"{path}: IDX element type {dtype_code:#04x} unsupported; "
                         "expected 0x08 (unsigned byte)")
    if expected_magic is not None and magic != expected_magic:
        kinds = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
        raise InputError(
            f"{path}: IDX magic number {magic} ({ndim} dimensions), expected {expected_magic} "
            f"({kinds.get(expected_magic, '?')}); are the image and label files swapped?")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise InputError(f"{path}: truncated IDX header: {ndim} dimensions declared but only "
                         f"{len(data)} bytes in the file")
    dims = struct.unpack(f">{ndim}I", data[4:header_end])
    if magic == IDX_IMAGES_MAGIC and (dims[1] == 0 or dims[2] == 0):
        raise InputError(f"{path}: image dimensions {dims[1]}x{dims[2]} must be positive")
    expected_bytes = int(np.prod(dims, dtype=np.int64))
    payload_bytes = len(data) - header_end
    if payload_bytes < expected_bytes:
        raise InputError(f"{path}: truncated payload: header declares dims {list(dims)} "
                         f"({expected_bytes} bytes) but only {payload_bytes} bytes follow; "
                         "the file is incomplete, fetch it again")
    if payload_bytes > expected_bytes:
        raise InputError(f"{path}: {payload_bytes - expected_bytes} unexpected trailing bytes "
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
    arrays, image_files = [], []
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
            raise InputError(f"{image_path} holds {len(images)} images but {label_path} holds "
                             f"{len(labels)} labels; the two files must match")
        if len(labels) and labels.max() >= num_classes:
            raise InputError(f"{label_path}: label {int(labels.max())} out of range "
                             f"0..{num_classes - 1}")
        arrays += [images, labels]
        image_files.append(image_path)
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise InputError(f"{image_files[1]} holds images of {'x'.join(map(str, arrays[2].shape[1:]))} pixels, "
                         f"{image_files[0]} of {'x'.join(map(str, arrays[0].shape[1:]))}; the training and "
                         "test images must have one size")
    return tuple(arrays)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------

CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32


def read_cifar10_binary_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch (records of 1 label byte + 3072 CHW bytes).

    Returns:
      ``images [N, 32, 32, 3] uint8`` (NHWC) and ``labels [N] uint8``.
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % CIFAR10_RECORD_BYTES:
        raise InputError(f"{path}: size {data.size} bytes is not a positive multiple of the "
                         f"CIFAR-10 record size {CIFAR10_RECORD_BYTES}; the file is truncated "
                         "or not a CIFAR-10 binary batch")
    records = data.reshape(-1, CIFAR10_RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise InputError(f"{path}: label {int(labels.max())} out of range 0..9")
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
            raise InputError(f"{path}: {error}") from error
        except Exception as error:
            raise InputError(f"{path}: not a readable CIFAR-10 python batch ({error})") from error
    if not isinstance(batch, dict):
        raise InputError(f"{path}: expected a dict, found {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise InputError(f"{path}: keys {sorted(batch)} lack 'data' and 'labels'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InputError(f"{path}: data has dtype {data.dtype} and shape {data.shape}, "
                         "expected uint8 [N, 3072]")
    if labels.shape != (len(data),):
        raise InputError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise InputError(f"{path}: labels of dtype {labels.dtype}, expected integers 0..9")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise InputError(f"{path}: labels outside 0..9")
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

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

Bad files and arrays raise :class:`sparse_bnn.errors.InputError` naming the file; doubtful ones
warn (:class:`sparse_bnn.errors.InputWarning`). Beside the four modules below,
:mod:`~sparse_bnn.data.tabular` reads CSV, ``.npy`` and ``.npz`` files, :mod:`~sparse_bnn.data.checks`
checks a data set before training (`check_dataset`) and new inputs against the training range,
and :mod:`~sparse_bnn.data.checksums` checks the files found on disk against the published checksums.

The code lives in four modules: :mod:`~sparse_bnn.data.formats` (IDX, CIFAR-10 batches, CSV),
:mod:`~sparse_bnn.data.preprocess` (the `Dataset` record, splits, standardisation,
`prepare_inputs`, `flip_augment`), :mod:`~sparse_bnn.data.locate` (where the files are looked
for, downloads) and :mod:`~sparse_bnn.data.sources` (`load_dataset`, the named sets, the teacher).
This package re-exports their public names, so ``from sparse_bnn.data import load_dataset,
Dataset`` works as when ``sparse_bnn.data`` was one module.
"""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.data.formats import (CIFAR10_RECORD_BYTES, DataNotFoundError, IDX_FILES, IDX_IMAGES_MAGIC,
                                     IDX_LABELS_MAGIC, load_cifar10_folder, load_idx_folder, read_cifar10_binary_batch,
                                     read_cifar10_python_batch, read_csv, read_idx)
from sparse_bnn.data.checks import check_dataset, check_input_range, check_preprocessing
from sparse_bnn.data.preprocess import Dataset, flip_augment, prepare_inputs, split_indices
from sparse_bnn.data.locate import (CIFAR10_URL, DOWNLOAD_URLS, IDX_MD5, SYSTEM_DATA_DIRS, download_file,
                                    find_cifar10_folder, find_idx_folder)
from sparse_bnn.data.sources import DATASET_NAMES, load_dataset, make_teacher_regression, teacher_forward

__all__ = ["DATASET_NAMES", "DataNotFoundError", "Dataset", "check_dataset", "flip_augment", "load_dataset", "make_teacher_regression",
           "prepare_inputs", "read_idx", "read_cifar10_binary_batch", "read_cifar10_python_batch", "read_csv"]

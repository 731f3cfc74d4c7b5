"""Numeric files: CSV (:func:`read_csv`), numpy's ``.npy`` and ``.npz`` read without pickle
(:func:`load_npy`, :func:`load_npz`), and the checks every numeric array read goes through.

Every error is an :class:`~sparse_bnn.errors.InputError` naming the file (and line and column).
"""
from __future__ import annotations

import csv
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sparse_bnn.errors import InputError


def _check_finite(array: np.ndarray, what: str, source: str) -> None:
    """Refuse non-numeric (strings, objects), complex and NaN/inf values, naming ``source``."""
    if np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{source}: {what} has complex dtype {array.dtype}; sparse_bnn takes real numbers "
                         "only: give the real part (or split real and imaginary parts into features) yourself")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise InputError(f"{source}: {what} has non-numeric dtype {array.dtype}; give numbers")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            first = np.argwhere(bad)[0]
            raise InputError(f"{source}: {what} holds {int(bad.sum())} NaN/inf values "
                             f"(first at index {tuple(int(i) for i in first)}); "
                             "remove or impute them first")


_INTEGER = re.compile(r"^[+-]?\d+$")


def _is_number(field: str) -> bool:
    try:
        float(field)
        return True
    except ValueError:
        return False


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV file with their line numbers."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [(line_no, row) for line_no, row in enumerate(csv.reader(f), start=1)
                    if row and any(field.strip() for field in row)]
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file (not UTF-8); give a numeric CSV file") from None
    except csv.Error as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read the file ({error})") from None


def _has_header(path: Path, line_no: int, row: list[str]) -> bool:
    """Whether the first row is a header: most of its fields are not numbers. A row of numbers
    but for a few fields is neither a header nor data: an error naming its first bad field."""
    words = [j for j, field in enumerate(row) if not _is_number(field.strip())]
    if not words:
        return False
    if 2 * len(words) > len(row):
        return True
    j = words[0]
    raise InputError(f"{path}, line {line_no}, column {j + 1}: {row[j].strip()!r} is not a number, but the "
                     f"other fields of the first row are, so it is no header either; fix the value, or give "
                     "a header of column names")


def read_csv(path: Path, with_target: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Numeric CSV, optional header row, last column the target (``None`` without one).

    The first row is a header when most of its fields are not numbers; a first row of numbers
    but for one or a few fields is an error (a typo, not a header). Integer-looking targets (no
    decimal point) give int64 labels, anything else float64.
    """
    path = Path(path)
    rows = _csv_rows(path)
    if not rows:
        raise InputError(f"{path}: the CSV file is empty")
    if _has_header(path, *rows[0]):
        rows = rows[1:]
    if not rows:
        raise InputError(f"{path}: the CSV file has a header but no data rows")
    width = len(rows[0][1])
    if width < 1 + with_target:
        raise InputError(f"{path}: need at least one feature column and a target column")
    values = np.empty((len(rows), width), dtype=np.float64)
    target_is_integer = True
    for i, (line_no, row) in enumerate(rows):
        if len(row) != width:
            raise InputError(f"{path}, line {line_no}: {len(row)} columns, expected {width}")
        for j, field in enumerate(row):
            field = field.strip()
            try:
                values[i, j] = float(field)
            except ValueError:
                raise InputError(f"{path}, line {line_no}, column {j + 1}: {field!r} is not "
                                 "a number (missing values must be removed or imputed)") from None
        target_is_integer &= bool(_INTEGER.match(row[-1].strip()))
    _check_finite(values, "the data", str(path))
    if not with_target:
        return values, None
    x, y = values[:, :-1], values[:, -1]
    return x, (y.astype(np.int64) if target_is_integer else y)


_NUMPY_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError)


def load_npy(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file (no pickle); :class:`InputError` naming the file otherwise."""
    try:
        with open(path, "rb") as f:  # numpy leaves its own handle open when the file is corrupt
            array = np.load(f, allow_pickle=False)
    except _NUMPY_READ_ERRORS as error:
        raise InputError(f"{path}: not a readable .npy file of numbers ({type(error).__name__}: {error}); "
                         "save it again with numpy.save") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: holds no single array (an .npz archive?); give a .npy file")
    return array


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` archive (no pickle); :class:`InputError` naming the file if the
    archive or one of its arrays cannot be read."""
    try:
        with open(path, "rb") as f:  # numpy leaves its own handle open when the file is corrupt
            archive = np.load(f, allow_pickle=False)
            if not hasattr(archive, "files"):
                raise InputError(f"{path}: a single array, not an .npz archive of named arrays; "
                                 "save it with numpy.savez")
            with archive:
                return {name: archive[name] for name in archive.files}
    except InputError:
        raise
    except _NUMPY_READ_ERRORS as error:
        raise InputError(f"{path}: not a readable .npz archive of numbers ({type(error).__name__}: {error}); "
                         "save it again with numpy.savez") from None

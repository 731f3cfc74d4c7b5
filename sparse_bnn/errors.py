"""The library's own error and warning for bad input, and a JSON reader that names its file.

:class:`InputError` is what every reader of sparse_bnn raises for a file, array or option it
cannot use: a one-line message naming the file (or option), what is wrong and what to do. It is
a ``ValueError``, so code that caught ``ValueError`` before still does; ``sparse-bnn`` turns it
into exit code 2 without a traceback. :class:`InputWarning` flags input that is usable but
probably not what was meant (inputs far outside the training range, classes seen only in the
test split, data files that differ from the published ones).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

__all__ = ["InputError", "InputWarning", "MissingInputError", "read_json", "show_warnings_on_one_line", "warn"]


class InputError(ValueError):
    """A file, array or option that sparse_bnn cannot use; the message says which and what to do."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder that should be there is not; the message names it and what to do."""


class InputWarning(UserWarning):
    """Input that is usable but probably not what was meant; the message says what to check."""


def warn(message: str) -> None:
    """Issue an :class:`InputWarning` (attributed to the caller's caller)."""
    warnings.warn(message, InputWarning, stacklevel=3)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The JSON value in ``path``; :class:`InputError` naming the file if it is missing,
    unreadable or not valid JSON (``what`` says what the file is, for the message)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingInputError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the {what} ({error})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise InputError(f"{path} is not valid JSON ({error}); the {what} is corrupt: restore or "
                         "recreate it") from None


def _one_line(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, InputWarning):
        return f"sparse-bnn: warning: {message}\n"
    return _default_format(message, category, filename, lineno, line)


_default_format = warnings.formatwarning


def show_warnings_on_one_line() -> None:
    """Print each :class:`InputWarning` as one line ``sparse-bnn: warning: ...`` (the command
    line's choice; other warnings keep Python's format)."""
    warnings.formatwarning = _one_line

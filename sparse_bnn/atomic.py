"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every file the library writes that a crash must not corrupt (checkpoints, histories, run
configs, metrics, compact models) goes through :func:`write_bytes`: the data go to a temporary
file ``.NAME.XXXXXXXX.tmp`` in the same folder, are flushed and fsynced, then renamed over the
target. The temporary file is created like any other (mode ``0666`` less the user's umask), so
the target gets the permissions a plain ``open(path, "wb")`` would give it.

A process killed between creating and renaming the temporary file leaves it behind;
:func:`remove_temp_files` removes such leftovers (a run removes those of its directory when it
starts: :mod:`sparse_bnn.experiment.run_dir`).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

__all__ = ["TEMP_SUFFIX", "is_temp_name", "remove_temp_files", "umask_mode", "write_bytes", "write_json"]

TEMP_SUFFIX = ".tmp"
# .NAME.XXXXXXXX.tmp of write_bytes; also the names older versions left (tempfile.mkstemp's
# .NAME.XXXXXXXX) and the staging/retired folders of sparse_bnn.compact.io (.NAME.XXXXXXXX.tmp/.old)
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}(\.tmp|\.old)?$")


def umask_mode(mode: int) -> int:
    """``mode`` less the process's umask: what ``open``/``mkdir`` would give a new file or folder
    (``tempfile`` creates them 0600/0700 instead)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the name of a temporary file or folder an atomic write makes."""
    return bool(_TEMP_NAME.match(name))


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty file beside ``path``, opened for writing; its mode is ``0666 & ~umask``."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    _fsync_folder(path.parent)
    return path


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    """``value`` as JSON (with a final newline), written atomically."""
    return write_bytes(path, (json.dumps(value, indent=indent) + "\n").encode())


def remove_temp_files(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Remove the temporary files (and staging folders) that atomic writes killed midway left in
    ``folder`` (and its subfolders); returns what was removed. Call it only where no other process
    is writing (a run does, holding its directory's lock)."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if is_temp_name(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            removed += remove_temp_files(entry, recursive=True)
    return removed

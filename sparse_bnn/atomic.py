"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every file the library writes that a crash must not corrupt (checkpoints, histories, run
configs, metrics, compact models) goes through :func:`write_bytes`: the data go to a temporary
file in the same folder, are flushed and fsynced, then renamed over the target.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_bytes", "write_json"]


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    """``value`` as JSON (with a final newline), written atomically."""
    return write_bytes(path, (json.dumps(value, indent=indent) + "\n").encode())

"""The owner of a run directory: an exclusive lock that ``sparse-bnn fit`` holds while it writes.

The lock is ``fcntl.flock`` on ``RUN/.lock``; the file holds the holder's pid and host (JSON), so
that a second writer is told who has the run::

    with RunLock("runs/d"):          # RunLockedError (a ValueError) when another process holds it
        ...                          # write the run

The kernel releases a flock when its holder dies, however it dies, so a lock file left behind by a
killed run is stale and the next run takes it over; a released lock's file is empty, so one that
still names a holder tells of a run that was killed (:attr:`RunLock.stale_holder`). The lock never
waits: a second ``fit`` on the same directory fails at once.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from pathlib import Path
from typing import NamedTuple

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_FILE = ".lock"

__all__ = ["LOCK_FILE", "LockHolder", "RunLock", "RunLockedError", "read_holder"]


class RunLockedError(ValueError):
    """Another process holds the run directory's lock."""


class LockHolder(NamedTuple):
    """Who holds (or last held) a run directory's lock."""

    pid: int
    host: str

    def alive(self) -> bool | None:
        """Whether the process still runs (``None``: it runs on another host, so we cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            return True
        return True

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}"


def read_holder(path: str | os.PathLike) -> LockHolder | None:
    """The holder a lock file names, or ``None`` when it names none (empty, unreadable)."""
    try:
        value = json.loads(Path(path).read_text())
        return LockHolder(int(value["pid"]), str(value["host"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RunLock:
    """The exclusive lock of the run directory ``out`` (created if missing), taken on entry.

    Raises :class:`RunLockedError` on entry when another process holds it, naming the holder.
    ``stale_holder``: after entry, the holder a stale lock file named (its process had died
    without releasing, which the kernel did for it), else ``None``; ``made``: whether entry
    created ``out``.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self.stale_holder: LockHolder | None = None
        self.made = False  # whether acquiring the lock created the run directory
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.out.mkdir(parents=True)
            made = True  # by this process: no other can have made it too
        except FileExistsError:
            made = False
        except OSError as error:
            raise RunLockedError(f"--out {self.out}: cannot create the run directory: {error.strerror}") from None
        self.made = made
        try:
            self._lock()
        except BaseException:
            if made:  # leave no trace of a run that never got its lock
                with contextlib.suppress(OSError):
                    self.path.unlink(missing_ok=True)
                    self.out.rmdir()
            raise

    def _lock(self) -> None:
        while True:
            fd = self._open()
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunLockedError(self._held_message()) from None
                raise RunLockedError(f"cannot lock {self.path}: {error.strerror} (the file system may not "
                                     "support locks; use a run directory on a local disk)") from None
            # the file may have been removed (a failed new run removes its folder) between open
            # and flock: then the lock is on a file nobody else will open; take the path's file
            if self._same_file(fd):
                break
            os.close(fd)
        previous = read_holder(self.path)
        if previous is not None and previous != LockHolder(os.getpid(), socket.gethostname()):
            self.stale_holder = previous
        self._fd = fd
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)

    def release(self) -> None:
        """Give the lock up, emptying the file (which stays: removing it would race with a process
        opening it); a file that still names a holder was left by a process that died holding it."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as error:
            raise RunLockedError(f"cannot open the lock file {self.path}: {error.strerror}") from None

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _held_message(self) -> str:
        holder = read_holder(self.path)
        if holder is None:
            who = "another process (it has not written its pid yet)"
        else:
            who = holder.describe()
            if holder.alive() is False:
                who += " (no longer running; a process it started still holds the lock)"
        return (f"--out {self.out} is in use: {who} is writing this run (lock {self.path}). Wait for it "
                "to end, or stop it, or choose another --out")

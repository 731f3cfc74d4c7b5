"""What a run directory holds, and how ``fit`` replaces or starts one without losing the old one.

:func:`run_directory_state` reads what ``--out`` holds (``"new"``, ``"empty"``, ``"unfinished"``,
``"finished"``; :class:`RunDirectoryError` for a folder that is no run directory) and
:func:`check_run_directory` decides whether ``--resume``/``--overwrite`` may go ahead. Neither
writes anything.

:class:`RunStart` then makes starting a run a transaction, under the directory's lock
(:mod:`sparse_bnn.experiment.lock`):

* ``begin()`` removes the temporary files of atomic writes killed midway, finishes or undoes an
  earlier start that was killed, and with ``--overwrite`` moves the old run's files aside into
  ``RUN/.replaced`` (``RUN/.replaced/.complete`` marks that all of them are there);
* ``commit()``, once the new run has trained its first epoch, deletes the old run (renamed
  ``RUN/.replaced-deleting`` first, so a half-deleted old run is never taken for a whole one);
* ``rollback()``, when the new run fails before that, removes what it wrote and moves the old
  run back; a folder the start created is removed.

A start killed between ``begin()`` and ``commit()`` is undone by the next ``begin()`` in that
directory: the old run is back before anything else happens there.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from sparse_bnn import atomic
from sparse_bnn.errors import InputError
from sparse_bnn.experiment.lock import LOCK_FILE
from sparse_bnn.experiment.run_files import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE

REPLACED_DIR = ".replaced"
DELETING_DIR = ".replaced-deleting"
COMPLETE_MARK = ".complete"
# the directory's own bookkeeping: neither part of a run nor a sign of one
BOOKKEEPING = (LOCK_FILE, REPLACED_DIR, DELETING_DIR)

__all__ = ["RunDirectoryError", "RunStart", "check_run_directory", "run_directory_state"]


class RunDirectoryError(InputError):
    """The output directory holds a finished or unfinished run that we must not silently touch,
    or no run where one was expected."""


def _entries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name not in BOOKKEEPING and not atomic.is_temp_name(p.name)]


def run_directory_state(out: Path) -> str:
    """``"new"`` (no such path), ``"empty"``, ``"unfinished"`` or ``"finished"`` (``metrics.json``).

    An interrupted ``--overwrite`` (``RUN/.replaced`` left) counts as the run it replaced. Raises
    :class:`RunDirectoryError` when ``out`` is a file or a non-empty folder that holds no run.
    """
    out = Path(out)
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise RunDirectoryError(f"--out {out} exists and is not a directory; choose a new or empty folder")
    names = {entry.name for entry in _entries(out)}
    aside = out / REPLACED_DIR
    if aside.is_dir():  # the old run: all in .replaced, or (a move aside cut short) split between the two
        old = {entry.name for entry in aside.iterdir() if entry.name != COMPLETE_MARK}
        names = old if (aside / COMPLETE_MARK).exists() else old | names
    if not names:
        return "empty"
    if not names & {CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR}:
        raise RunDirectoryError(f"--out {out} is a non-empty folder that is not a sparse-bnn run "
                                "directory; choose a new or empty folder")
    return "finished" if METRICS_FILE in names else "unfinished"


def check_run_directory(out: Path, state: str, *, resume: bool, overwrite: bool) -> bool:
    """Whether the run in ``out`` (in ``state``, :func:`run_directory_state`) is to be resumed;
    :class:`RunDirectoryError` when it must not be touched as asked."""
    if resume and overwrite:
        raise RunDirectoryError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    if resume and state in ("new", "empty"):
        where = "does not exist" if state == "new" else "is empty"
        raise RunDirectoryError(f"--resume: --out {out} {where}, so there is no run to continue; start one "
                                f"with sparse-bnn fit --out {out} ... (without --resume)")
    if state == "finished" and not overwrite:
        raise RunDirectoryError(f"{out} already holds a finished run ({METRICS_FILE} exists); "
                                "pass --overwrite to replace it or choose another --out")
    if state == "unfinished" and not (resume or overwrite):
        raise RunDirectoryError(f"{out} holds a started but unfinished run; pass --resume to continue "
                                "it or --overwrite to start again")
    return resume


class RunStart:
    """Starting a run in ``out`` as a transaction (module docstring). Call it holding the lock.

    ``replace``: move the run ``out`` holds aside (``--overwrite``); ``fresh``: the run starts from
    nothing (new or replaced), so a failure before :meth:`commit` removes all it wrote.
    ``created``: ``out`` did not exist before the lock made it. ``log`` gets one line per repair.
    """

    def __init__(self, out: Path, *, replace: bool, fresh: bool, created: bool,
                 log: Callable[[str], None] = lambda message: None):
        self.out, self.replace, self.fresh, self.created, self.log = Path(out), replace, fresh, created, log
        self.committed = False

    def begin(self) -> None:
        removed = atomic.remove_temp_files(self.out)
        if removed:
            self.log(f"note: removed {len(removed)} temporary file(s) of writes interrupted earlier in {self.out}")
        self._finish_deleting()
        if (self.out / REPLACED_DIR).is_dir():
            self.log(f"note: an earlier --overwrite of {self.out} was interrupted before the new run started; "
                     "the run it replaced is restored")
            self._restore()
        if self.replace and _entries(self.out):
            aside = self.out / REPLACED_DIR
            aside.mkdir()
            for entry in _entries(self.out):
                os.replace(entry, aside / entry.name)
            atomic.write_bytes(aside / COMPLETE_MARK, b"")

    def commit(self) -> None:
        """The new run has started: the old one goes for good."""
        if self.committed:
            return
        self.committed = True
        if (self.out / REPLACED_DIR).is_dir():
            os.replace(self.out / REPLACED_DIR, self.out / DELETING_DIR)
            self._finish_deleting()

    def rollback(self) -> None:
        """The new run failed before :meth:`commit`: put the directory back as it was."""
        if self.committed or not self.fresh:
            return
        if self.created:
            shutil.rmtree(self.out, ignore_errors=True)
            return
        if (self.out / REPLACED_DIR).is_dir():
            self._restore()
        else:
            self._remove_new_files()
            (self.out / LOCK_FILE).unlink(missing_ok=True)

    def _remove_new_files(self) -> None:
        for entry in _entries(self.out):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _restore(self) -> None:
        aside = self.out / REPLACED_DIR
        if (aside / COMPLETE_MARK).exists():  # else the move aside was cut short: what is left in out is old
            self._remove_new_files()
        for entry in aside.iterdir():
            if entry.name != COMPLETE_MARK:
                os.replace(entry, self.out / entry.name)
        shutil.rmtree(aside)

    def _finish_deleting(self) -> None:
        if (self.out / DELETING_DIR).exists():
            shutil.rmtree(self.out / DELETING_DIR)

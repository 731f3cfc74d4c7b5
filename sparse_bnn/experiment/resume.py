"""Resuming a run: what may differ from the saved config, and how a diverged run goes on.

A resumed run must agree with ``RUN/config.json`` on every identity field
(:meth:`~sparse_bnn.experiment.config.RunConfig.identity_differences`), with one exception: a run
whose loss diverged (``RUN/diverged.json``, written with its last good checkpoint) may continue
with other learning rates and schedule (:data:`LEARNING_RATE_OPTIONS`), and only those. The
change is recorded in ``config.json`` under ``"resumed"``::

    "resumed": [{"epoch": 3, "after": "divergence", "changed": {"lr": [0.1, 0.001]}}]

:func:`fit_command` writes the command line that continues a run (the divergence message shows it).
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Mapping

from sparse_bnn import atomic
from sparse_bnn.experiment.config import RunConfig
from sparse_bnn.experiment.run_dir import RunDirectoryError
from sparse_bnn.experiment.run_files import CONFIG_FILE, DIVERGED_FILE

# the options a diverged run may change when it resumes from its last good checkpoint
LEARNING_RATE_OPTIONS = ("lr", "indicator_lr", "lr_schedule", "lr_final_fraction")
RESUMED_KEY = "resumed"

__all__ = ["LEARNING_RATE_OPTIONS", "check_resumable", "fit_command", "read_divergence", "resumed_record",
           "write_divergence"]


def read_divergence(out: Path) -> dict | None:
    """The record a diverged run left (``{"epoch", "phase", "message"}``), or ``None``."""
    try:
        return json.loads((Path(out) / DIVERGED_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_divergence(out: Path, epoch: int, phase: str, message: str) -> None:
    """Mark the run in ``out`` as diverged after ``epoch`` (its last good checkpoint) of ``phase``."""
    atomic.write_json(Path(out) / DIVERGED_FILE, {"epoch": int(epoch), "phase": phase, "message": message})


def check_resumable(out: Path, config: RunConfig, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """``{flat name: (saved, now)}`` of the learning-rate options a resumed diverged run changes.

    Raises :class:`RunDirectoryError` naming the options that differ from ``RUN/config.json``
    and may not (every identity field but those of ``ignore``; the learning rates and schedule
    too unless the run diverged).
    """
    saved_file = Path(out) / CONFIG_FILE
    if not saved_file.exists():
        return {}
    try:
        saved = json.loads(saved_file.read_text()).get("run", {})
    except (OSError, ValueError) as error:
        raise RunDirectoryError(f"cannot resume {out}: {saved_file} is unreadable ({error}); "
                                "pass --overwrite to start again") from None
    different = {k: v for k, v in config.identity_differences(saved).items() if k not in ignore}
    diverged = read_divergence(out) is not None
    allowed = {k: v for k, v in different.items() if k in LEARNING_RATE_OPTIONS} if diverged else {}
    refused = {k: v for k, v in different.items() if k not in allowed}
    if refused:
        lines = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in refused.items())
        hint = "repeat the original options or pass --overwrite"
        if not diverged and set(refused) & set(LEARNING_RATE_OPTIONS):
            hint += " (the learning rates and schedule may change only when resuming a run that diverged)"
        raise RunDirectoryError(f"cannot resume {out}: the run was started with other settings ({lines}); {hint}")
    return allowed


def resumed_record(saved_config: Mapping[str, Any], epoch: int, changed: Mapping[str, tuple[Any, Any]]) -> list:
    """``config.json``'s ``"resumed"`` list: the saved one, plus this resumption's changes if any."""
    records = list(saved_config.get(RESUMED_KEY, []))
    if changed:
        records.append({"epoch": int(epoch), "after": "divergence",
                        "changed": {name: [before, after] for name, (before, after) in changed.items()}})
    return records


def _words(entry, value: Any) -> list[str]:
    """The command-line words that give ``value`` to the option ``entry``."""
    if value is None:
        return []
    if isinstance(value, bool):
        if entry.default is None:
            return [entry.flag if value else "--no-" + entry.flag[2:]]
        return [entry.flag]  # a switch given only where it differs from its default
    if isinstance(value, Mapping):
        return [word for name, v in value.items() for word in (entry.flag, f"{name}={v}")]
    if isinstance(value, (tuple, list)):
        return [entry.flag, ",".join(map(str, value))]
    return [entry.flag, str(value)]


def fit_command(config: RunConfig, *extra: str, **changes: Any) -> str:
    """``sparse-bnn fit`` with every option of ``config`` that differs from its default, the flat
    options ``changes`` changed, then ``extra`` (e.g. ``"--resume"``), quoted for a POSIX shell."""
    config = config.replace(**changes) if changes else config
    flat = config.flat_dict()
    words = ["sparse-bnn", "fit"]
    for entry in RunConfig.options():
        value = flat[entry.name]
        if entry.name != "out" and value == entry.default:
            continue
        words += _words(entry, value)
    return " ".join(shlex.quote(word) for word in [*words, *extra])

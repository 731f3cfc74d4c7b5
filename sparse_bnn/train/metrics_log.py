"""Per-epoch metrics through pluggable writers: a CSV file, TensorBoard scalars, or your own.

:class:`MetricsLog` is a :class:`~sparse_bnn.train.hooks.Hook` that hands each epoch's record (loss,
nll, kl, kept units per layer, validation metrics, seconds, and the fields other hooks add) to
its writers, flattened to numbers: ``{"kept": {"layer1": 15}}`` becomes ``kept.layer1`` in CSV
and ``kept/layer1`` in TensorBoard. A writer is any object with
``write(epoch, fields)``, ``rewind(epoch)`` (on resume: forget what was written after ``epoch``)
and ``close()``::

    from sparse_bnn.train import fit
    from sparse_bnn.train.metrics_log import CSVWriter, MetricsLog, TensorBoardWriter
    fit(bnn, x, y, epochs=50, hooks=[MetricsLog([CSVWriter("history.csv"), TensorBoardWriter("tb")])])

The hook keeps the last epoch it wrote in checkpoints, so a resumed run's CSV drops the epochs
that the checkpoint had not reached and continues from there.
"""
from __future__ import annotations

import csv
import io
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from sparse_bnn import atomic
from sparse_bnn.train.hooks import Hook

HISTORY_CSV_FILE = "history.csv"

__all__ = ["HISTORY_CSV_FILE", "CSVWriter", "MetricsLog", "MetricsWriter", "TensorBoardWriter", "flatten_record",
           "run_writers"]


class MetricsWriter(Protocol):
    def write(self, epoch: int, fields: Mapping[str, Any]) -> None: ...
    def rewind(self, epoch: int) -> None: ...
    def close(self) -> None: ...


def flatten_record(record: Mapping[str, Any], separator: str = ".") -> dict[str, Any]:
    """The numbers (and strings) of ``record``, one level of mappings joined by ``separator``;
    ``epoch`` and anything else (lists, arrays) are left out."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if key == "epoch":
            continue
        if isinstance(value, Mapping):
            flat.update({f"{key}{separator}{k}": v for k, v in value.items() if isinstance(v, numbers.Number)})
        elif isinstance(value, (numbers.Number, str)):
            flat[key] = value
    return flat


class CSVWriter:
    """One row per epoch in ``path`` (columns ``epoch``, then every field in the order first seen),
    rewritten atomically after each epoch, so that the file is always complete."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def write(self, epoch: int, fields: Mapping[str, Any]) -> None:
        self.rows.append({"epoch": int(epoch), **flatten_record(fields)})
        columns = list(dict.fromkeys(name for row in self.rows for name in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic.write_bytes(self.path, text.getvalue().encode())

    def rewind(self, epoch: int) -> None:
        """Keep the rows of ``path`` up to ``epoch`` (numbers read back as numbers)."""
        self.rows = []
        if self.path.is_file():
            with open(self.path, newline="") as file:
                for row in csv.DictReader(file):
                    if int(row["epoch"]) <= epoch:
                        self.rows.append({k: _number(v) for k, v in row.items() if v != ""})

    def close(self) -> None:
        pass


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class TensorBoardWriter:
    """Each numeric field as a TensorBoard scalar (``add_scalar(tag, value, epoch)``) into ``logdir``
    through ``tensorboardX.SummaryWriter``, or into ``writer``: any object with ``add_scalar`` and
    ``flush`` (and optionally ``close``)."""

    def __init__(self, logdir: str | os.PathLike | None = None, writer: Any = None):
        if writer is None and logdir is None:
            raise ValueError("TensorBoardWriter needs a logdir or a writer")
        if writer is None:
            try:
                import tensorboardX  # noqa: F401 (checked here; the writer is made at the first epoch)
            except ImportError:
                from sparse_bnn.errors import InputError
                raise InputError("--tensorboard needs the tensorboardX package: pip install tensorboardX "
                                 "(or leave out --tensorboard; RUN/history.csv has the same numbers)") from None
        self.logdir, self.writer = logdir, writer

    def write(self, epoch: int, fields: Mapping[str, Any]) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(str(self.logdir), flush_secs=10)
        for tag, value in flatten_record(fields, "/").items():
            if isinstance(value, numbers.Number):
                self.writer.add_scalar(tag, float(value), int(epoch))
        self.writer.flush()

    def rewind(self, epoch: int) -> None:
        pass  # TensorBoard shows the latest value written for a step

    def close(self) -> None:
        if self.writer is not None and hasattr(self.writer, "close"):
            self.writer.close()


class MetricsLog(Hook):
    """Hands every epoch's record to ``writers``. ``epoch_offset`` is added to the epoch (a
    fine-tuning fit continues the numbering of the fit before it) and ``fields`` are added to
    every record (``{"phase": "fine-tune"}``). Its state is the last epoch written."""

    name = "metrics_log"

    def __init__(self, writers: Sequence[MetricsWriter], *, epoch_offset: int = 0,
                 fields: Mapping[str, Any] | None = None):
        self.writers, self.epoch_offset, self.fields = tuple(writers), int(epoch_offset), dict(fields or {})

    def init(self, fitting, info):
        return fitting, int(fitting.state.epoch)

    def update(self, fitting, hook_state, record):
        epoch = int(record["epoch"])
        for writer in self.writers:
            writer.write(epoch + self.epoch_offset, {**self.fields, **record})
        return fitting, epoch, {}

    def to_json(self, hook_state):
        return {"epoch": int(hook_state)}

    def restore(self, fitting, data, info):
        epoch = int(data["epoch"])
        for writer in self.writers:
            writer.rewind(epoch + self.epoch_offset)
        return fitting, epoch


def run_writers(run_dir: str | os.PathLike, tensorboard: str | os.PathLike | None = None) -> list[MetricsWriter]:
    """The writers of a run: ``RUN/history.csv``, and TensorBoard scalars in ``tensorboard`` when given."""
    writers: list[MetricsWriter] = [CSVWriter(Path(run_dir) / HISTORY_CSV_FILE)]
    if tensorboard is not None:
        writers.append(TensorBoardWriter(tensorboard))
    return writers

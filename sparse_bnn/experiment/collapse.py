"""Has a finished run collapsed? Warnings read off its metrics, without training anything.

:func:`collapse_warnings` takes the metrics of a run (the dict ``metrics.json`` holds) and returns
one sentence per sign of collapse, each naming what happened and what to try:

* **pruned away**: a prunable layer kept no unit at all, or every prunable layer kept at most
  :data:`FEW_UNITS` units (and fewer than it had); layers on a residual branch (``metrics``'
  ``"residual_layers"``: a transformer's heads and MLP units, a ResNet block's first conv) are
  left out, since an empty one passes its block's input on;
* **chance-level accuracy**: the test accuracy (BMA or compact) is no better than always
  answering the most frequent test class, plus :data:`MAJORITY_MARGIN`;
* **compact far below BMA**: the compact (median-probability) network's accuracy is more than
  :data:`COMPACT_GAP` below that of Bayesian model averaging.

:func:`~sparse_bnn.experiment.run.run_experiment` records the list in ``metrics.json``
(``"warnings"``) and ``sparse-bnn fit`` / ``report`` print it under the compression table.
Guide: ``docs/guide/fitting.md``, "When a run collapses".
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

FEW_UNITS = 3
"""Every prunable layer keeping at most this many units counts as collapsed."""
MAJORITY_MARGIN = 0.05
"""Accuracy within this of the majority-class rate counts as chance level."""
COMPACT_GAP = 0.10
"""Compact accuracy this far below the BMA accuracy counts as a failed compact network."""

TUNING = "docs/tuning.md, section 'Settings that prune'"
PRUNE_LESS = ("try a smaller --sigma0 (e.g. 0.3), a larger --inclusion, a longer warm-up "
              "(--shrink-warmup / --bmr-warmup), or --rho-init -3 with the indicators no faster than the "
              f"weights (--indicator-lr at most --lr); see {TUNING}")


class CollapseWarning(UserWarning):
    """A finished run shows signs of collapse (:func:`collapse_warnings` says which)."""


def majority_rate(labels: Sequence[int] | np.ndarray) -> float:
    """The share of the most frequent class among ``labels`` (``[N]`` integers): the accuracy of
    always answering that class."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return 0.0
    return float(np.bincount(labels.astype(np.int64)).max() / labels.size)


def _accuracy(metrics: Mapping[str, Any], block: str) -> float | None:
    value = metrics.get(block)
    value = value.get("accuracy") if isinstance(value, Mapping) else None
    return float(value) if isinstance(value, (int, float)) else None


def _counts(value: Any) -> dict[str, int]:
    """``{layer: count}`` of a metrics entry, leaving out what is not a count."""
    if not isinstance(value, Mapping):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def collapse_warnings(metrics: Mapping[str, Any], *, few_units: int = FEW_UNITS,
                      majority_margin: float = MAJORITY_MARGIN, compact_gap: float = COMPACT_GAP) -> list[str]:
    """The signs of collapse in a run's ``metrics`` (as ``metrics.json`` holds them), one sentence
    each; ``[]`` for a healthy run.

    Reads ``kept_units`` / ``total_units`` (``{layer: count}`` of the prunable layers),
    ``residual_layers`` (names of layers on a residual branch, not counted as cutting the network),
    ``full_bma`` (or ``bma``) and ``compact`` (``{"accuracy": ...}``, classification only) and
    ``majority_rate`` (the test set's most frequent class share, :func:`majority_rate`). Missing
    or malformed entries skip their check.
    """
    found: list[str] = []
    kept, total = _counts(metrics.get("kept_units")), _counts(metrics.get("total_units"))
    units = ", ".join(f"{name} {kept[name]}/{total.get(name, '?')}" for name in kept)
    residual = metrics.get("residual_layers")
    if isinstance(residual, (list, tuple)):
        residual = set(map(str, residual))
        kept = {name: count for name, count in kept.items() if name not in residual}
    empty = [name for name, count in kept.items() if count == 0]
    if empty:
        found.append(f"collapse: layer{'s' if len(empty) > 1 else ''} {', '.join(empty)} kept 0 units (kept "
                     f"units: {units}), so the compact network cannot use its input; {PRUNE_LESS}")
    elif kept and all(count <= few_units and count < total.get(name, count + 1) for name, count in kept.items()):
        found.append(f"collapse: every prunable layer kept at most {few_units} units (kept units: {units}); "
                     f"{PRUNE_LESS}")

    full = "full_bma" if _accuracy(metrics, "full_bma") is not None else "bma"
    bma, compact = _accuracy(metrics, full), _accuracy(metrics, "compact")
    rate = metrics.get("majority_rate")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        low = [f"{label} {value:.1%}" for label, value in (("BMA", bma), ("compact", compact))
               if value is not None and value <= rate + majority_margin]
        if low:
            verb = "are" if len(low) > 1 else "is"
            found.append(f"collapse: test accuracy {' and '.join(low)} {verb} no better than always answering "
                         f"the most frequent class ({rate:.1%}, plus a margin of {majority_margin * 100:.0f} "
                         f"points); {PRUNE_LESS}")
    if bma is not None and compact is not None and compact < bma - compact_gap:
        found.append(f"compact network far below BMA: compact accuracy {compact:.1%} vs BMA {bma:.1%} (more than "
                     f"{compact_gap * 100:.0f} points lower): the median-probability network drops units the posterior "
                     "still uses (inclusion probabilities near 0.5, or too few units kept); train longer so that "
                     f"units are decided, add --fine-tune-epochs, or prune less; see {TUNING}")
    return found

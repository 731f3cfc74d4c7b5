"""Figures of a run as PNG files (matplotlib's object-oriented API: no display needed).

Each ``plot_*`` function takes plain data, draws one figure, saves it to ``path`` and returns
the path; :func:`write_run_plots` draws all of them into a folder. The figures are
:class:`matplotlib.figure.Figure` objects drawn by the Agg canvas directly, never through
``pyplot``: importing or using this module leaves matplotlib's backend, and the figures of a
notebook or a GUI, as they were.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_inclusion_histograms", "plot_kept_units", "plot_loss_curves", "plot_reliability",
           "write_run_plots"]


def _figure(figsize: tuple[float, float]) -> Figure:
    """A figure of its own, on an Agg canvas (no pyplot, no global state)."""
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _check_history(history: Sequence[Mapping]) -> None:
    if not history:
        raise ValueError("the history is empty: nothing to plot (train for at least one epoch)")


def plot_loss_curves(history: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Loss, NLL and KL per datum against the epoch (one panel each; log scale where positive)."""
    _check_history(history)
    epochs = [r["epoch"] for r in history]
    fig = _figure((12, 3.5))
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes, ("loss", "nll", "kl")):
        values = np.array([r[key] for r in history], dtype=float)
        ax.plot(epochs, values, marker="." if len(epochs) < 30 else None)
        if np.all(values > 0):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{key} per datum")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_kept_units(history: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Kept units (median-probability model) of each hidden layer against the epoch."""
    _check_history(history)
    epochs = [r["epoch"] for r in history]
    layers = list(history[-1]["kept"])
    fig = _figure((6, 4))
    ax = fig.subplots()
    for layer in layers:
        ax.plot(epochs, [r["kept"].get(layer, np.nan) for r in history], label=layer)
    ax.set_xlabel("epoch")
    ax.set_ylabel("kept units")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if layers:
        ax.legend(fontsize="small", ncol=max(1, len(layers) // 8))
    return _save(fig, path)


def plot_inclusion_histograms(inclusion: Mapping[str, np.ndarray], path: str | os.PathLike,
                              threshold: float = 0.5, bins: int = 20) -> Path:
    """One histogram of posterior inclusion probabilities ``gamma`` per layer."""
    if not inclusion:
        raise ValueError("no inclusion probabilities (the prior has no indicators)")
    names = list(inclusion)
    columns = min(len(names), 4)
    rows = -(-len(names) // columns)
    fig = _figure((3.2 * columns, 2.8 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = np.asarray(inclusion[name], dtype=float).reshape(-1)
        ax.hist(values, bins=np.linspace(0, 1, bins + 1), color="tab:blue")
        ax.axvline(threshold, color="tab:red", lw=1)
        ax.set_title(f"{name}: {int(np.sum(values > threshold))}/{values.size} kept", fontsize="small")
        ax.set_xlabel("inclusion probability")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, path)


def plot_reliability(confidence: np.ndarray, accuracy: np.ndarray, count: np.ndarray,
                     path: str | os.PathLike) -> Path:
    """Reliability diagram from ``metrics.calibration_bins``: accuracy against confidence per bin."""
    confidence, accuracy, count = (np.asarray(a, dtype=float) for a in (confidence, accuracy, count))
    if not confidence.shape == accuracy.shape == count.shape or confidence.ndim != 1:
        raise ValueError(f"confidence, accuracy and count must be vectors of one length, got "
                         f"{confidence.shape}, {accuracy.shape}, {count.shape}")
    n_bins = confidence.size
    edges = np.linspace(0, 1, n_bins + 1)
    filled = count > 0
    fig = _figure((4.5, 4.5))
    ax = fig.subplots()
    ax.bar(edges[:-1][filled], accuracy[filled], width=1 / n_bins, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(confidence[filled], accuracy[filled], "o", color="tab:red", ms=3, label="bin mean confidence")
    ece = float(np.sum(count * np.abs(accuracy - confidence)) / max(np.sum(count), 1))
    ax.set_title(f"reliability (ECE {ece:.4f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small", loc="upper left")
    return _save(fig, path)


def write_run_plots(folder: str | os.PathLike, history: Sequence[Mapping],
                    inclusion: Mapping[str, np.ndarray] | None = None, calibration=None,
                    threshold: float = 0.5) -> list[Path]:
    """All figures of a run into ``folder``: ``loss.png``, ``kept_units.png``,
    ``inclusion.png`` (when there are indicators), ``reliability.png`` (classification)."""
    folder = Path(folder)
    written = []
    if history:
        written += [plot_loss_curves(history, folder / "loss.png"),
                    plot_kept_units(history, folder / "kept_units.png")]
    if inclusion:
        written.append(plot_inclusion_histograms(inclusion, folder / "inclusion.png", threshold))
    if calibration is not None:
        written.append(plot_reliability(*calibration, folder / "reliability.png"))
    return written

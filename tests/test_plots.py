"""Figures: each plot function writes a PNG of the expected size; bad input is refused."""
from __future__ import annotations

import numpy as np
import pytest

from sparse_bnn import plots
from sparse_bnn.metrics import calibration_bins

HISTORY = [{"epoch": e, "loss": 3.0 / e, "nll": 2.0 / e, "kl": 1.0 / e,
            "kept": {"dense0": 50 - 5 * e, "dense1": 20 - e}, "seconds": 0.1} for e in range(1, 6)]


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_write_run_plots_draws_all_four(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=500).astype(np.float32)
    labels = rng.integers(0, 10, 500).astype(np.int32)
    bins = calibration_bins(probs, labels)
    inclusion = {"dense0": rng.uniform(size=50), "dense1": rng.uniform(size=20)}
    written = plots.write_run_plots(tmp_path, HISTORY, inclusion, bins)
    assert sorted(p.name for p in written) == ["inclusion.png", "kept_units.png", "loss.png",
                                               "reliability.png"]
    width, height = _png_size(tmp_path / "loss.png")
    assert width > height > 100  # three panels side by side
    for path in written:
        assert min(_png_size(path)) > 100


def test_optional_figures_are_left_out(tmp_path):
    written = plots.write_run_plots(tmp_path, HISTORY, inclusion={}, calibration=None)
    assert sorted(p.name for p in written) == ["kept_units.png", "loss.png"]


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        plots.plot_loss_curves([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no inclusion"):
        plots.plot_inclusion_histograms({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="vectors of one length"):
        plots.plot_reliability(np.zeros(3), np.zeros(4), np.zeros(3), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()

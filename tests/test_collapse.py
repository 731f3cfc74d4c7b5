"""Collapse warnings (:mod:`sparse_bnn.experiment.collapse`): each sign of collapse fires on a
constructed metrics dict and a healthy run gives none; one short CLI run forced to collapse
records its warnings in ``metrics.json`` and prints them under the compression table."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from sparse_bnn.experiment.collapse import (COMPACT_GAP, FEW_UNITS, MAJORITY_MARGIN, CollapseWarning,
                                            collapse_warnings, majority_rate)

TUNING = "docs/tuning.md, section 'Settings that prune'"


def metrics(kept=(9, 8), total=(100, 100), bma=0.947, compact=0.944, rate=0.10) -> dict:
    """A run's metrics as ``metrics.json`` holds them (the healthy digits run by default)."""
    names = [f"dense{i}" for i in range(len(kept))]
    result = {"task": "classification", "num_test": 360,
              "full_bma": {"accuracy": bma, "nll": 0.23}, "bma": {"accuracy": bma, "nll": 0.23},
              "compact": {"accuracy": compact, "nll": 0.17},
              "kept_units": dict(zip(names, kept)), "total_units": dict(zip(names, total))}
    if rate is not None:
        result["majority_rate"] = rate
    return result


def test_a_healthy_run_gives_no_warning():
    assert collapse_warnings(metrics()) == []
    # few units in one layer only, a small net kept whole, the gap and the margin just not crossed
    assert collapse_warnings(metrics(kept=(2, 40))) == []
    assert collapse_warnings(metrics(kept=(3, 2), total=(3, 2))) == []
    assert collapse_warnings(metrics(bma=0.95, compact=0.95 - COMPACT_GAP + 0.01)) == []
    assert collapse_warnings(metrics(bma=0.5, compact=0.5, rate=0.5 - MAJORITY_MARGIN - 0.01)) == []
    # regression: no accuracies, no majority rate; nothing to check but the units
    assert collapse_warnings({"task": "regression", "full_bma": {"rmse": 0.5}, "compact": {"rmse": 0.5},
                              "kept_units": {"dense0": 5}, "total_units": {"dense0": 50}}) == []
    assert collapse_warnings({}) == []
    assert collapse_warnings({"kept_units": [1], "total_units": "x", "compact": 3, "majority_rate": "0.1"}) == []


def test_a_layer_with_no_kept_unit_warns_and_names_it():
    found = collapse_warnings(metrics(kept=(12, 0), bma=0.9, compact=0.9))
    assert len(found) == 1
    assert "dense1" in found[0] and "kept 0 units" in found[0] and "dense1 0/100" in found[0]
    for advice in ("--sigma0", "--inclusion", "warm-up", "--rho-init", TUNING):
        assert advice in found[0], advice


def test_every_layer_keeping_very_few_units_warns():
    found = collapse_warnings(metrics(kept=(1, 2), bma=0.9, compact=0.9))
    assert len(found) == 1 and f"at most {FEW_UNITS} units" in found[0] and "dense0 1/100, dense1 2/100" in found[0]
    assert collapse_warnings(metrics(kept=(1, 2), bma=0.9, compact=0.9), few_units=1) == []


def test_empty_layers_on_a_residual_branch_do_not_cut_the_network():
    """A ViT block without heads still passes its tokens on: only the accuracy checks apply."""
    vit = metrics(kept=(0, 40, 0, 1), total=(4, 128, 4, 128), bma=0.85, compact=0.85)
    vit["kept_units"] = dict(zip(["block0_heads", "block0_mlp", "block1_heads", "block1_mlp"], (0, 40, 0, 1)))
    vit["total_units"] = dict(zip(vit["kept_units"], (4, 128, 4, 128)))
    assert len(collapse_warnings(vit)) == 1  # without residual_layers the empty layers read as a cut
    vit["residual_layers"] = list(vit["kept_units"])
    assert collapse_warnings(vit) == []
    vit["full_bma"] = vit["bma"] = vit["compact"] = {"accuracy": 0.11}
    assert len(collapse_warnings(vit)) == 1 and "most frequent class" in collapse_warnings(vit)[0]


def test_transformer_and_resnet_blocks_are_residual_and_lenet_layers_are_not():
    from sparse_bnn.nets import NETS, net_from_config
    residual = {name: {layer.name: layer.residual for layer in net_from_config(NETS[name].example_config())
                       .unit_layers() if layer.prunable} for name in ("vit", "mixer", "resnet20", "lenet5-caffe")}
    assert all(residual["vit"].values()) and all(residual["mixer"].values())
    assert not any(residual["lenet5-caffe"].values())
    assert {name for name, flag in residual["resnet20"].items() if flag} == \
           {name for name in residual["resnet20"] if name.startswith("block")}


def test_chance_level_accuracy_warns():
    found = collapse_warnings(metrics(bma=0.12, compact=0.12, rate=0.10))
    assert len(found) == 1
    assert "BMA 12.0% and compact 12.0%" in found[0] and "most frequent class (10.0%" in found[0]
    assert TUNING in found[0]
    only_compact = collapse_warnings(metrics(bma=0.30, compact=0.14, rate=0.10))
    assert any("compact 14.0% is no better" in w for w in only_compact)
    assert collapse_warnings(metrics(bma=0.12, compact=0.12, rate=None)) == []  # no rate: not checked


def test_a_compact_network_far_below_bma_warns():
    found = collapse_warnings(metrics(bma=0.45, compact=0.27))
    assert len(found) == 1 and "compact accuracy 27.0% vs BMA 45.0%" in found[0] and TUNING in found[0]
    # runs written before full_bma had its name: "bma"
    old = metrics(bma=0.45, compact=0.27)
    del old["full_bma"]
    assert collapse_warnings(old) == found


def test_the_reported_digits_collapse_warns_twice():
    """1 + 2 units of 100 + 100, BMA 45%, compact 27%: few units and a failed compact network."""
    found = collapse_warnings(metrics(kept=(1, 2), bma=0.45, compact=0.27))
    assert len(found) == 2 and "at most 3 units" in found[0] and "far below BMA" in found[1]


def test_majority_rate():
    assert majority_rate(np.array([0, 1, 1, 2])) == 0.5
    assert majority_rate(np.arange(10)) == pytest.approx(0.1)
    assert majority_rate(np.array([], np.int64)) == 0.0


FORCED = ["--data", "digits", "--n-train", "200", "--n-test", "100", "--widths", "8,6", "--epochs", "15",
          "--batch-size", "50", "--lr", "1e-2", "--indicator-lr", "0.5", "--inclusion", "1e-6", "--samples", "2",
          "--no-latency", "--quiet"]
"""Indicators 50 times faster than the weights and a prior inclusion of 1e-6 switch every unit of a
tiny MLP off within 15 epochs: both layers keep 0 units and the accuracy is at chance."""


def test_a_forced_collapse_is_recorded_and_printed(tmp_path, capsys):
    from sparse_bnn.cli import main

    run = tmp_path / "collapsed"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)  # the command line prints them instead of warning
        assert main(["fit", *FORCED, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    recorded = json.loads((run / "metrics.json").read_text())
    assert recorded["kept_units"] == {"dense0": 0, "dense1": 0}
    assert 0.1 <= recorded["majority_rate"] < 0.2  # 100 test digits of 10 classes
    found = recorded["warnings"]
    assert found == collapse_warnings(recorded)
    assert any("kept 0 units" in w for w in found) and any("most frequent class" in w for w in found)
    summary = next(line for line in out.splitlines() if line.startswith(f"run {run}:"))
    assert summary.endswith(f"; {len(found)} WARNINGS below")  # the summary line says so
    assert out.rstrip().endswith("\n".join(f"WARNING: {w}" for w in found))  # under the table
    assert main(["report", str(run)]) == 0  # sparse-bnn report shows them too
    assert capsys.readouterr().out.rstrip().endswith(f"WARNING: {found[-1]}")

    # a run written before the checks (no "warnings", no "majority_rate"): report checks its units
    old = {k: v for k, v in recorded.items() if k not in ("warnings", "majority_rate")}
    (run / "metrics.json").write_text(json.dumps(old))
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"WARNING: {collapse_warnings(old)[-1]}")
    assert any("kept 0 units" in w for w in collapse_warnings(old))


def test_the_api_warns_and_returns_the_warnings(tmp_path):
    from sparse_bnn.cli import build_parser, config_from_args
    from sparse_bnn.experiment.run import run_experiment

    config = config_from_args(build_parser().parse_args(["fit", *FORCED, "--out", str(tmp_path / "api")]))
    with pytest.warns(CollapseWarning) as record:
        metrics = run_experiment(config, progress=False)
    assert metrics["warnings"] and metrics["warnings"] == collapse_warnings(metrics)
    assert [str(w.message) for w in record if w.category is CollapseWarning] == metrics["warnings"]
    assert json.loads((tmp_path / "api" / "metrics.json").read_text())["warnings"] == metrics["warnings"]

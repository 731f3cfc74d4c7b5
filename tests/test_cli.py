"""The ``sparse-bnn`` command line, run as ``python -m sparse_bnn`` in subprocesses.

One tiny digits run (module fixture) serves the output, evaluate, report and resume tests;
bad input fails before anything trains.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import serialization

EPOCHS = 200  # long enough (a few seconds) that a SIGKILL lands mid-run
# a decaying learning rate: the resumed run must continue the schedule where it stopped
TINY = ["--data", "digits", "--n-train", "320", "--n-test", "200", "--widths", "12,8",
        "--batch-size", "32", "--lr", "3e-3", "--lr-schedule", "cosine", "--lr-final-fraction", "0.2",
        "--samples", "4", "--no-latency", "--quiet"]


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "sparse_bnn", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "sparse_bnn", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def read_params(run: Path) -> dict:
    return serialization.msgpack_restore((run / "variational_params.msgpack").read_bytes())["params"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "digits"
    result = cli("fit", *TINY, "--epochs", EPOCHS, "--out", run)
    assert result.returncode == 0, result.stderr
    return run


def test_fit_writes_every_promised_file(finished_run):
    run = finished_run
    for name in ("config.json", "history.json", "metrics.json", "report.json",
                 "variational_params.msgpack", "checkpoint/checkpoint.msgpack",
                 "compact/architecture.json", "compact/params.msgpack", "compact/samples.msgpack"):
        assert (run / name).is_file(), name
    for name in ("loss", "kept_units", "inclusion", "reliability"):
        png = (run / "plots" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000, name

    config = json.loads((run / "config.json").read_text())
    assert config["sparse_bnn_version"]
    assert config["net_config"] == {"net": "mlp", "in_features": 64, "widths": [12, 8],
                                    "out_features": 10, "activation": "silu"}
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
    assert all(abs(r["loss"] - r["nll"] - r["kl"]) < 1e-4 * max(1.0, abs(r["loss"])) for r in history)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_test"] == 200
    for block in ("bma", "compact"):
        assert set(metrics[block]) >= {"accuracy", "nll", "ece", "brier"}
        assert 0.25 < metrics[block]["accuracy"] <= 1.0  # chance is 0.1 (few kept units remain)
    # kept units = units whose inclusion probability sigmoid(logit) exceeds 0.5
    params = read_params(run)
    for layer, total in (("dense0", 12), ("dense1", 8)):
        gamma = 1 / (1 + np.exp(-np.asarray(params[f"{layer}.z.logit"], np.float64)))
        assert metrics["kept_units"][layer] == int(np.sum(gamma > 0.5))
        assert metrics["total_units"][layer] == total
        assert history[-1]["kept"][layer] == metrics["kept_units"][layer]
    kept0, kept1 = metrics["kept_units"]["dense0"], metrics["kept_units"]["dense1"]
    assert metrics["params_dense"] == 64 * 12 + 12 + 12 * 8 + 8 + 8 * 10 + 10
    # every pruned layer keeps at least a placeholder unit in the compact network
    k0, k1 = max(kept0, 1), max(kept1, 1)
    assert metrics["params_compact"] == 64 * k0 + k0 + k0 * k1 + k1 + k1 * 10 + 10
    assert metrics["flops_dense"] == 2 * (64 * 12 + 12 * 8 + 8 * 10)
    assert metrics["training_seconds"] > 0 and metrics["compile_seconds"] > 0


def test_compact_model_loads_and_reproduces_compact_metrics(finished_run):
    import jax
    from sparse_bnn.compact.io import load_compact
    from sparse_bnn.data.sources import load_dataset

    metrics = json.loads((finished_run / "metrics.json").read_text())
    net = load_compact(finished_run / "compact")
    data = load_dataset("digits", n_train=320, n_test=200, seed=0)
    logits = np.asarray(net(data.x_test), np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    accuracy = np.mean(np.argmax(probs, -1) == data.y_test)
    nll = -np.mean(np.log(probs[np.arange(len(probs)), data.y_test]))
    assert accuracy == pytest.approx(metrics["compact"]["accuracy"], abs=1e-6)
    assert nll == pytest.approx(metrics["compact"]["nll"], rel=1e-4)
    assert net.widths == tuple(max(metrics["kept_units"][l], 1) for l in ("dense0", "dense1"))
    del jax


def test_evaluate_recomputes_the_test_metrics(finished_run):
    result = cli("evaluate", finished_run, "--json")
    assert result.returncode == 0, result.stderr
    recomputed = json.loads(result.stdout)
    metrics = json.loads((finished_run / "metrics.json").read_text())
    for name in ("accuracy", "nll", "ece", "brier"):
        assert recomputed["compact"][name] == pytest.approx(metrics["compact"][name], rel=1e-5, abs=1e-6)
    assert 0.25 < recomputed["compact_bma"]["accuracy"] <= 1.0


def test_report_prints_the_compression_table(finished_run):
    result = cli("report", finished_run)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((finished_run / "metrics.json").read_text())
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert lines["dense0"][1:3] == [str(metrics["kept_units"]["dense0"]), "12"]
    assert lines["parameters"][1:3] == [f"{metrics['params_dense']:,}", f"{metrics['params_compact']:,}"]
    assert "BMA" in result.stdout and "compact" in result.stdout


def test_sigkill_then_resume_ends_exactly_like_an_uninterrupted_run(finished_run, tmp_path):
    run = tmp_path / "killed"
    # a checkpoint after every epoch, so that the kill lands between two of them
    process = start("fit", *TINY, "--epochs", EPOCHS, "--out", run, "--checkpoint-interval", "0")
    history_file = run / "checkpoint" / "history.json"
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            if history_file.exists():
                try:
                    if len(json.loads(history_file.read_text())) >= 2:
                        break
                except json.JSONDecodeError:
                    pass  # cannot happen with atomic writes, but never mind
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (run / "metrics.json").exists(), "the run finished before it could be killed"
    interrupted_at = len(json.loads(history_file.read_text()))
    assert 2 <= interrupted_at < EPOCHS

    refused = cli("fit", *TINY, "--epochs", EPOCHS, "--out", run)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = cli("fit", *TINY, "--epochs", EPOCHS, "--out", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"epoch {interrupted_at + 1}:" in resumed.stdout and "epoch 1:" not in resumed.stdout

    reference = json.loads((finished_run / "history.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert [(r["loss"], r["nll"], r["kl"], r["kept"]) for r in history] == \
           [(r["loss"], r["nll"], r["kl"], r["kept"]) for r in reference]
    expected, got = read_params(finished_run), read_params(run)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    want = json.loads((finished_run / "metrics.json").read_text())
    have = json.loads((run / "metrics.json").read_text())
    for key in ("bma", "compact", "kept_units", "params_compact"):
        assert have[key] == want[key], key


def test_divergence_exits_3_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "diverged"
    result = cli("fit", *TINY, "--epochs", 3, "--lr", "1e8", "--out", run)
    assert result.returncode == 3, (result.returncode, result.stderr)
    assert "non-finite" in result.stderr and str(run / "checkpoint") in result.stderr
    assert "Traceback" not in result.stderr
    assert (run / "checkpoint" / "checkpoint.msgpack").is_file()
    assert not (run / "metrics.json").exists()


# ----------------------------------------------------------------------------- bad input

def _fails_cleanly(result: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("option, value, valid", [
    ("--data", "no-such-data", ["fashion-mnist", "digits", "diabetes", "teacher"]),
    ("--net", "no-such-net", ["mlp", "lenet5", "resnet20"]),
    ("--prior", "no-such-prior", ["ss-ghs", "ss-gl", "gaussian"]),
])
def test_unknown_names_list_the_valid_ones(tmp_path, option, value, valid):
    args = [a for a in TINY]
    if option in args:
        i = args.index(option)
        del args[i:i + 2]
    result = cli("fit", *args, option, value, "--epochs", 1, "--out", tmp_path / "run")
    _fails_cleanly(result, tmp_path / "run", value, *valid)


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    result = cli("fit", "--data", "fashion-mnist", "--data-dir", missing, "--no-download",
                 "--epochs", 1, "--out", tmp_path / "run")
    _fails_cleanly(result, tmp_path / "run", str(missing), "does not exist")


def test_corrupt_idx_file(tmp_path):
    import struct
    folder = tmp_path / "idx"
    folder.mkdir()
    images = struct.pack(">IIII", 2051, 4, 28, 28) + bytes(4 * 28 * 28)
    labels = struct.pack(">II", 2049, 4) + bytes([0, 1, 2, 3])
    for split in ("train", "t10k"):
        (folder / f"{split}-images-idx3-ubyte").write_bytes(images)
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(labels)
    (folder / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0xDEADBEEF, 4, 28, 28))
    result = cli("fit", "--data", "fashion-mnist", "--data-dir", folder, "--no-download",
                 "--epochs", 1, "--out", tmp_path / "run")
    _fails_cleanly(result, tmp_path / "run", "t10k-images-idx3-ubyte", "magic")


def test_nan_in_csv(tmp_path):
    rows = [f"{i},{i % 3},{i % 2}" for i in range(20)]
    rows[7] = "7,nan,1"
    data = tmp_path / "table.csv"
    data.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    result = cli("fit", "--data", data, "--widths", "4", "--epochs", 1, "--out", tmp_path / "run")
    _fails_cleanly(result, tmp_path / "run", "table.csv", "NaN")


def test_finished_run_is_not_overwritten_without_overwrite(finished_run):
    before = (finished_run / "metrics.json").read_bytes()
    result = cli("fit", *TINY, "--epochs", 1, "--out", finished_run)
    assert result.returncode == 2 and "--overwrite" in result.stderr and "finished" in result.stderr
    assert "Traceback" not in result.stderr
    assert (finished_run / "metrics.json").read_bytes() == before


def test_non_run_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("fit", *TINY, "--epochs", 1, "--out", tmp_path)
    _fails_cleanly(result, tmp_path, "not a sparse-bnn run")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_help_lists_the_choices():
    result = cli("fit", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name in ("ss-ghs", "ss-gl", "ss-ig", "group-horseshoe", "mlp", "lenet5-caffe", "resnet32",
                 "fashion-mnist", "digits", "elementwise", "nodewise", "cosine"):
        assert name in text, name


def test_help_states_only_informative_defaults(capsys):
    from sparse_bnn.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for noise in ("(default: None)", "(default: True)", "(default: False)"):
        assert noise not in text, noise
    # a help text that states its default gets no second one
    assert "(default: 1, or the net's reference value, 0.2 for ResNets) --inclusion" in text
    assert "--epochs EPOCHS passes over the training set (default: 10)" in text
    assert "--widths WIDTHS MLP hidden widths, e.g. 400,400 (default: 400,400)" in text
    assert "--no-download never download MNIST/Fashion-MNIST --validation-fraction" in text
    assert build_parser().parse_args(["fit", "--out", "run"]).widths == [400, 400]


def test_resuming_compares_the_shrink_options_only_of_shrinking_runs(tmp_path):
    """A run started without --shrink when the default factor was 0.5 resumes under today's
    0.25; a shrinking run must repeat its factor."""
    from sparse_bnn.experiment.run import RunConfig, RunDirectoryError, _check_resumable
    run = tmp_path / "run"
    run.mkdir()
    for shrink in (False, True):
        # 0.5: the default until 2026-12-02
        saved = RunConfig.flat(out=str(run), data="digits", shrink=shrink, shrink_factor=0.5)
        (run / "config.json").write_text(json.dumps({"run": saved.to_dict()}))
        now = RunConfig.flat(out=str(run), data="digits", shrink=shrink)
        if shrink:
            with pytest.raises(RunDirectoryError, match="shrink_factor: saved 0.5, now 0.25"):
                _check_resumable(run, now)
            _check_resumable(run, RunConfig.flat(out=str(run), data="digits", shrink=True, shrink_factor=0.5))
        else:
            _check_resumable(run, now)
        with pytest.raises(RunDirectoryError, match="shrink: saved"):
            _check_resumable(run, RunConfig.flat(out=str(run), data="digits", shrink=not shrink))


def test_regression_run_with_fine_tuning(tmp_path):
    from sparse_bnn.compact.io import load_compact
    from sparse_bnn.data.sources import load_dataset
    run = tmp_path / "teacher"
    result = cli("fit", "--data", "teacher", "--n-train", 200, "--n-test", 100, "--widths", 8,
                 "--epochs", 2, "--fine-tune-epochs", 1, "--batch-size", 50, "--samples", 3,
                 "--no-latency", "--quiet", "--out", run)
    assert result.returncode == 0, result.stderr
    history = json.loads((run / "history.json").read_text())
    assert [(r["epoch"], r["phase"]) for r in history] == [(1, "sparse"), (2, "sparse"), (3, "fine-tune")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "regression" and metrics["noise_std"] > 0
    assert set(metrics["compact"]) >= {"rmse", "nll"} and set(metrics["bma"]) >= {"rmse", "nll"}
    # recompute the compact network's RMSE and Gaussian NLL by hand
    data = load_dataset("teacher", n_train=200, n_test=100, seed=0)
    mean = np.asarray(load_compact(run / "compact")(data.x_test), np.float64).reshape(-1)
    y = np.asarray(data.y_test, np.float64).reshape(-1)
    sigma = metrics["noise_std"]
    assert np.sqrt(np.mean((mean - y) ** 2)) == pytest.approx(metrics["compact"]["rmse"], rel=1e-5)
    nll = np.mean(0.5 * ((y - mean) / sigma) ** 2 + np.log(sigma) + 0.5 * np.log(2 * np.pi))
    assert nll == pytest.approx(metrics["compact"]["nll"], rel=1e-5)
    report = cli("report", run)
    assert report.returncode == 0 and "rmse" in report.stdout

"""The command line's extras and what a run shows while it trains: ``--version``, ``--help`` without
JAX, ``fit --config`` replaying a run, plots that leave matplotlib's backend alone, the progress
bar's kept units, and the per-epoch metrics writers (history.csv, TensorBoard)."""
from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import sparse_bnn
from sparse_bnn.cli import build_parser, config_from_args, main
from sparse_bnn.cli_options import replayed_options
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.experiment.config import RunConfig
from sparse_bnn.nets import MLP
from sparse_bnn.priors import get_prior
from sparse_bnn.train import fit
from sparse_bnn.train.hooks import KeptUnits, format_kept
from sparse_bnn.train.metrics_log import CSVWriter, MetricsLog, TensorBoardWriter, flatten_record
from sparse_bnn.train.state import Fitting


def python(code: str, tmp_path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", "SPARSE_BNN_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)


def small_problem(n=192, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x[:, 0] - x[:, 1] > 0).astype(np.int32)


def small_bnn(n=192):
    return SparseBNN(MLP(6, (10, 7), 2, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=n)


# ----------------------------------------------------------------------------- command line

def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"sparse-bnn {sparse_bnn.__version__}"


HELP = """
import contextlib, io, json, sys
from sparse_bnn.cli import main
shown = {}
for words in (["--help"], ["fit", "--help"], ["export", "--help"]):
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            main(words)
        except SystemExit:
            pass
    shown[" ".join(words)] = text.getvalue()
print(json.dumps({"help": shown, "jax": "jax" in sys.modules, "numpy": "numpy" in sys.modules}))
"""


def test_help_imports_no_jax_once_the_option_cache_is_written(tmp_path):
    first = python(HELP, tmp_path)
    assert first.returncode == 0, first.stderr
    cold = json.loads(first.stdout)
    assert list((tmp_path / "cache").glob("cli-options-*.json"))  # the first --help wrote the cache
    second = python(HELP, tmp_path)
    assert second.returncode == 0, second.stderr
    warm = json.loads(second.stdout)
    assert not warm["jax"] and not warm["numpy"]
    assert warm["help"] == cold["help"]  # the cached options give the same help, choices and defaults
    assert "ss-ghs" in warm["help"]["fit --help"] and "--config FILE" in warm["help"]["fit --help"]
    assert "export" in warm["help"]["--help"]


def test_an_unreadable_cache_is_recomputed(tmp_path):
    assert python(HELP, tmp_path).returncode == 0
    for file in (tmp_path / "cache").glob("cli-options-*.json"):
        file.write_text("{not json")
    again = python(HELP, tmp_path)
    assert again.returncode == 0 and "ss-ghs" in json.loads(again.stdout)["help"]["fit --help"]


def test_config_replays_a_run_and_the_command_line_overrides_it(tmp_path):
    saved = RunConfig.flat(out=str(tmp_path / "old"), data="digits", widths=[12, 8], epochs=7, lr=3e-3,
                           prior="ss-gl", prior_options={"lam2_shape": 3.0}, shrink=True, seed=5)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"run": saved.to_dict(), "net_config": {}}))
    for source in (tmp_path / "old" / "config.json", tmp_path / "old"):  # the file, or the run directory
        words = ["fit", "--config", str(source)]
        assert config_from_args(build_parser(replayed_options(source)).parse_args(words)) == saved
    words = ["fit", "--config", str(tmp_path / "old"), "--out", str(tmp_path / "new"), "--epochs", "3",
             "--prior-option", "lam2_shape=4"]
    replayed = config_from_args(build_parser(replayed_options(tmp_path / "old")).parse_args(words))
    assert replayed == saved.replace(out=str(tmp_path / "new"), epochs=3, prior_options={"lam2_shape": 4.0})


@pytest.mark.parametrize("content, message", [(None, "no such run configuration"), ("[1, 2]", "holds no run options"),
                                              ('{"run": {"model": {"net": "nonet"}}}', "unknown net 'nonet'")])
def test_a_bad_config_file_exits_2_naming_it(tmp_path, capsys, content, message):
    file = tmp_path / "config.json"
    if content is not None:
        file.write_text(content)
    assert main(["fit", "--config", str(file), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert str(file) in error and message in error and "Traceback" not in error


# ----------------------------------------------------------------------------- plots

def test_plots_leave_matplotlibs_backend_and_pyplot_alone(tmp_path):
    code = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
from sparse_bnn import plots
history = [{{"epoch": e, "loss": 1.0 / e, "nll": 0.5 / e, "kl": 0.5 / e, "kept": {{"a": 9 - e}}}} for e in (1, 2, 3)]
written = plots.write_run_plots({str(tmp_path)!r}, history, {{"a": [0.1, 0.9, 0.6]}})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert plt.get_fignums() == [], plt.get_fignums()
print(sorted(p.name for p in written))
"""
    done = python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['inclusion.png', 'kept_units.png', 'loss.png']"
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- progress bar

def test_the_progress_bar_shows_kept_units_per_layer_over_the_units_at_start(capsys):
    bnn = small_bnn()
    hook = KeptUnits()
    hook.init(Fitting(bnn, None), None)
    assert hook.progress({"kept": {"layer0": 4, "layer1": 7}}) == {"kept": "4+7/17"}
    assert format_kept({"a": 15, "b": 33}, 800) == "15+33/800" and format_kept({"a": 15, "b": 33}) == "15+33"
    x, y = small_problem()
    result = fit(bnn, x, y, epochs=2, batch_size=64, optimizer=optax.adam(1e-2), progress=True)
    kept = result.history[-1]["kept"]
    assert f"kept={'+'.join(map(str, kept.values()))}/17" in capsys.readouterr().err


# ----------------------------------------------------------------------------- metrics writers

class FakeSummaryWriter:
    def __init__(self):
        self.scalars, self.flushes, self.closed = [], 0, False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def read_csv(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_the_csv_and_tensorboard_writers_get_every_epoch_and_a_resumed_fit_continues_the_csv(tmp_path):
    x, y = small_problem()
    kwargs = dict(batch_size=64, optimizer=optax.adam(1e-2), seed=1, progress=False, checkpoint_interval=0,
                  checkpoint_dir=tmp_path / "checkpoint")
    fake = FakeSummaryWriter()
    first = fit(small_bnn(), x, y, epochs=4, hooks=[MetricsLog([CSVWriter(tmp_path / "h.csv"),
                                                                 TensorBoardWriter(writer=fake)])], **kwargs)
    rows = read_csv(tmp_path / "h.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert list(rows[0]) == ["epoch", "loss", "nll", "kl", "seconds", "kept.dense0", "kept.dense1"]
    for row, record in zip(rows, first.history):
        assert float(row["loss"]) == record["loss"] and int(row["kept.dense1"]) == record["kept"]["dense1"]
    assert len(fake.scalars) == 4 * 6 and fake.flushes == 4
    assert ("kept/dense0", float(first.history[2]["kept"]["dense0"]), 3) in fake.scalars
    assert ("nll", first.history[3]["nll"], 4) in fake.scalars

    # a row the checkpoint never reached (a crash between the CSV write and the checkpoint) goes
    rows.append({**rows[-1], "epoch": "5", "loss": "123.0"})
    with open(tmp_path / "h.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    resumed = fit(small_bnn(), x, y, epochs=6, resume=True, hooks=[MetricsLog([CSVWriter(tmp_path / "h.csv")])],
                  **kwargs)
    rows = read_csv(tmp_path / "h.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in resumed.history]


def test_flatten_record_and_epoch_offset(tmp_path):
    assert flatten_record({"epoch": 3, "loss": 1.5, "kept": {"a": 2}, "phase": "sparse", "widths": [1, 2]}, "/") == \
        {"loss": 1.5, "kept/a": 2, "phase": "sparse"}
    writer = CSVWriter(tmp_path / "h.csv")
    log = MetricsLog([writer], epoch_offset=10, fields={"phase": "fine-tune"})
    log.update(None, 0, {"epoch": 1, "loss": 0.5})
    log.update(None, 1, {"epoch": 2, "loss": 0.25, "val_accuracy": 0.75})
    assert read_csv(tmp_path / "h.csv") == [
        {"epoch": "11", "phase": "fine-tune", "loss": "0.5", "val_accuracy": ""},
        {"epoch": "12", "phase": "fine-tune", "loss": "0.25", "val_accuracy": "0.75"}]
    assert log.to_json(2) == {"epoch": 2}


def read_tensorboard_scalars(folder) -> dict[tuple[str, int], float]:
    """The scalars of the event files in ``folder`` (TFRecord framing, tensorboardX's protobuf)."""
    from tensorboardX.proto import event_pb2
    scalars = {}
    for file in folder.iterdir():
        data, offset = file.read_bytes(), 0
        while offset < len(data):
            length, = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_a_real_tensorboard_writer_writes_the_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    x, y = small_problem()
    writer = TensorBoardWriter(tmp_path / "tb")
    result = fit(small_bnn(), x, y, epochs=2, batch_size=64, progress=False, hooks=[MetricsLog([writer])])
    writer.close()  # tensorboardX writes from a thread of its own; closing drains it
    scalars = read_tensorboard_scalars(tmp_path / "tb")
    assert scalars[("loss", 2)] == pytest.approx(result.history[1]["loss"], rel=1e-6)
    assert scalars[("kept/dense0", 1)] == result.history[0]["kept"]["dense0"]


# ----------------------------------------------------------------------------- a whole run

def test_a_run_writes_history_csv_and_both_bma_figures_and_replays_with_config(tmp_path, capsys):
    from sparse_bnn.experiment.evaluate import evaluate_run, report_table
    run = tmp_path / "run"
    words = ["fit", "--data", "digits", "--n-train", "240", "--n-test", "120", "--widths", "10,6", "--epochs", "3",
             "--fine-tune-epochs", "1", "--batch-size", "48", "--lr", "3e-3", "--samples", "3", "--no-latency",
             "--quiet", "--out", str(run)]
    assert main(words) == 0
    history = json.loads((run / "history.json").read_text())
    rows = read_csv(run / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["phase"] for r in rows] == [r["phase"] for r in history] == ["sparse"] * 3 + ["fine-tune"]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in history]
    assert [int(r["kept.dense0"]) for r in rows] == [r["kept"]["dense0"] for r in history]
    quiet = capsys.readouterr().out
    assert f"kept={history[0]['kept']['dense0']}+{history[0]['kept']['dense1']}/16" in quiet

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["bma"] == metrics["full_bma"] and metrics["compact_bma"]["samples"] == 3
    recomputed = evaluate_run(run)["compact_bma"]  # the average predict_run and evaluate compute
    for name in ("accuracy", "nll", "ece", "brier"):
        assert recomputed[name] == pytest.approx(metrics["compact_bma"][name], rel=1e-5, abs=1e-6)
    table = report_table(run)
    assert "BMA full net (3 samples)" in table and "BMA compact (3 samples)" in table
    full_row = next(line for line in table.splitlines() if line.startswith("BMA full net")).split()
    assert float(full_row[5]) == pytest.approx(metrics["full_bma"]["accuracy"], abs=1e-4)

    # older runs: metrics.json with "bma" only
    old = dict(metrics)
    del old["full_bma"], old["compact_bma"]
    (run / "metrics.json").write_text(json.dumps(old))
    assert "BMA full net (3 samples)" in report_table(run) and "BMA compact" not in report_table(run)

    assert main(["fit", "--config", str(run / "config.json"), "--out", str(tmp_path / "again"), "--epochs", "1",
                 "--quiet"]) == 0
    first, again = (json.loads((folder / "config.json").read_text())["run"] for folder in (run, tmp_path / "again"))
    assert again["training"]["epochs"] == 1 and again["out"] == str(tmp_path / "again")
    assert {**again, "out": None, "training": {**again["training"], "epochs": None}} == \
        {**first, "out": None, "training": {**first["training"], "epochs": None}}


def test_kl_weight_reaches_the_model_and_tempers_only_the_kl():
    """``fit --kl-weight 0.5``: the run's model has ``kl_weight`` 0.5, and its closed-form loss is
    the untempered one less half the (unweighted) KL, draw for draw."""
    from sparse_bnn.data import load_dataset
    from sparse_bnn.experiment.run import build_model, net_config
    dataset = load_dataset("digits", n_train=120, n_test=30)
    models = {}
    for weight in ("1", "0.5"):
        args = build_parser().parse_args(["fit", "--data", "digits", "--widths", "8,5", "--kl-weight", weight,
                                           "--out", "unused"])
        config = config_from_args(args)
        assert config.model.kl_weight == float(weight)
        models[weight] = build_model(config, dataset, net_config(config, dataset))
    full, tempered = models["1"], models["0.5"]
    assert tempered.options.kl_weight == 0.5 and full.options.kl_weight == 1.0
    params = full.init_params()
    x, y = dataset.x_train[:40], dataset.y_train[:40]
    key = jax.random.PRNGKey(3)
    losses = [float(bnn.elbo().loss(key, params, bnn.model, bnn.guide, x, y)) for bnn in (full, tempered)]
    assert losses[0] - losses[1] == pytest.approx(0.5 * float(full.kl(params)), rel=1e-4)


@pytest.mark.parametrize("weight", ["0", "-1", "nan"])
def test_an_impossible_kl_weight_exits_2_naming_the_option(tmp_path, capsys, weight):
    assert main(["fit", "--data", "digits", "--kl-weight", weight, "--out", str(tmp_path / "run")]) == 2
    assert "kl" in capsys.readouterr().err.lower()
    assert not (tmp_path / "run").exists()

"""Run-directory safety: nothing lost, nothing silent.

``sparse-bnn fit`` (its ``main`` in-process; a subprocess only to hold a lock) checks every
input before it writes; ``--overwrite`` replaces a run only once the new one has trained an
epoch; a run directory has one writer; ``--resume`` needs a run, a checkpoint that fits the
model and, after a divergence, may change the learning rates; atomic writes clean up after
themselves and follow the umask.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparse_bnn import atomic
from sparse_bnn.cli import main
from sparse_bnn.experiment.lock import RunLock, read_holder
from sparse_bnn.experiment.run_dir import COMPLETE_MARK, REPLACED_DIR, RunStart, run_directory_state

TINY = ["--data", "digits", "--n-train", "128", "--n-test", "64", "--widths", "6,4", "--batch-size", "32",
        "--samples", "2", "--no-latency", "--quiet"]


def fit(capsys, *args) -> tuple[int, str, str]:
    code = main(["fit", *TINY, *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, (code, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run (but its lock) and its bytes."""
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main(["fit", *TINY, "--epochs", "2", "--checkpoint-interval", "0", "--out", str(run)]) == 0
    return run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


@pytest.fixture
def unfinished(run) -> Path:
    """A run killed after its last checkpoint (epoch 2), before it wrote metrics.json."""
    (run / "metrics.json").unlink()
    return run


# ----------------------------------------------------------------------------- refusals write nothing

REFUSALS = [  # (options, what the message must name)
    (["--data", "digitz"], "digitz"),
    (["--prior", "gaussian", "--shrink"], "--prior gaussian"),
    (["--bmr", "elementwise", "--shrink"], "--bmr nodewise"),
    (["--shrink-warmup", "3"], "--shrink-warmup"),
    (["--lr-final-fraction", "0.5"], "--lr-final-fraction"),
    (["--epochs", "0"], "--epochs"),
    (["--data-dir", "/no/such/folder"], "--data-dir"),
]


@pytest.mark.parametrize("options, named", REFUSALS, ids=[" ".join(o) for o, _ in REFUSALS])
def test_a_refused_new_run_writes_nothing(capsys, tmp_path, options, named):
    out = tmp_path / "new"
    code, _, err = fit(capsys, "--epochs", 2, *options, "--out", out)
    refused(code, err, named)
    assert not out.exists()


@pytest.mark.parametrize("options, named", REFUSALS, ids=[" ".join(o) for o, _ in REFUSALS])
def test_overwrite_with_bad_input_leaves_the_finished_run_intact(capsys, run, options, named):
    before = snapshot(run)
    code, _, err = fit(capsys, "--epochs", 2, *options, "--out", run, "--overwrite")
    refused(code, err, named)
    assert snapshot(run) == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) in ([], [".lock"])


def test_overwrite_replaces_the_run_after_the_new_one_trained(capsys, run):
    old_metrics = json.loads((run / "metrics.json").read_text())
    code, out, err = fit(capsys, "--epochs", 3, "--widths", "5,3", "--out", run, "--overwrite")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["net_config"]["widths"] == [5, 3]
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["total_units"] == {"dense0": 5, "dense1": 3} != old_metrics["total_units"]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".lock"]


def tiny_config(out: Path):
    from sparse_bnn.experiment.config import RunConfig
    return RunConfig.flat(out=str(out), data="digits", n_train=128, n_test=64, widths=[6, 4], batch_size=32,
                          samples=2, latency=False, epochs=2)


@pytest.mark.parametrize("failure", [MemoryError, KeyboardInterrupt])
def test_overwrite_failing_before_the_first_epoch_restores_the_old_run(run, monkeypatch, failure):
    import sparse_bnn.experiment.run as run_module
    before = snapshot(run)

    def fail(prepared):
        assert (run / REPLACED_DIR / "metrics.json").exists() and not (run / "metrics.json").exists()
        raise failure()

    monkeypatch.setattr(run_module, "run_prepared", fail)
    with pytest.raises(failure):
        run_module.run_experiment(tiny_config(run), overwrite=True, progress=False)
    assert snapshot(run) == before and not (run / REPLACED_DIR).exists()


def test_a_failed_new_run_removes_its_folder(tmp_path, monkeypatch):
    import sparse_bnn.experiment.run as run_module

    def fail(prepared):
        assert (tmp_path / "new" / "config.json").exists()
        raise MemoryError()

    monkeypatch.setattr(run_module, "run_prepared", fail)
    with pytest.raises(MemoryError):
        run_module.run_experiment(tiny_config(tmp_path / "new"), progress=False)
    assert not (tmp_path / "new").exists()


def test_an_overwrite_killed_midway_is_undone_at_the_next_start(run):
    before = snapshot(run)
    # killed after the old run went aside and the new one wrote its config
    RunStart(run, replace=True, fresh=True, created=False).begin()
    (run / "config.json").write_text("{}")
    (run / "checkpoint").mkdir()
    assert run_directory_state(run) == "finished"  # it still counts as the run it replaces
    RunStart(run, replace=False, fresh=False, created=False).begin()
    assert snapshot(run) == before and not (run / REPLACED_DIR).exists()
    # killed while moving the old run aside: part of it there, the rest still in place
    (run / REPLACED_DIR).mkdir()
    for name in ("metrics.json", "plots", "checkpoint"):
        os.replace(run / name, run / REPLACED_DIR / name)
    assert not (run / REPLACED_DIR / COMPLETE_MARK).exists()
    assert run_directory_state(run) == "finished"
    RunStart(run, replace=False, fresh=False, created=False).begin()
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- one writer per run

@pytest.fixture
def locked_by_another_process(request):
    """``hold(folder)`` locks ``folder`` in a subprocess until the test ends; returns its pid."""
    holders = []

    def hold(folder: Path) -> int:
        code = ("import sys; from sparse_bnn.experiment.lock import RunLock; lock = RunLock(sys.argv[1]); "
                "lock.acquire(); print('locked', flush=True); sys.stdin.read()")
        holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "locked"
        return holder.pid

    yield hold
    for holder in holders:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.mark.parametrize("mode", ["new", "--resume", "--overwrite"])
def test_a_run_another_process_writes_is_refused_naming_it(capsys, unfinished, tmp_path, locked_by_another_process,
                                                            mode):
    out = tmp_path / "fresh" if mode == "new" else unfinished
    pid = locked_by_another_process(out)
    before = snapshot(out)
    code, _, err = fit(capsys, "--epochs", 2, "--out", out, *([mode] if mode != "new" else []))
    refused(code, err, f"--out {out} is in use", f"pid {pid} on host {socket.gethostname()}")
    assert snapshot(out) == before


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with RunLock(tmp_path) as lock:
        assert lock.stale_holder is not None and lock.stale_holder.pid == dead.pid
        assert lock.stale_holder.alive() is False
        assert read_holder(tmp_path / ".lock").pid == os.getpid()
        with pytest.raises(ValueError, match=f"pid {os.getpid()}"):  # a second holder, even in this process
            RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == ""  # released: names no holder
    with RunLock(tmp_path) as lock:
        assert lock.stale_holder is None


# ----------------------------------------------------------------------------- resuming

@pytest.mark.parametrize("kind", ["missing", "empty", "not a run"])
def test_resume_without_a_run_is_refused_saying_how_to_start_one(capsys, tmp_path, kind):
    out = tmp_path / "out"
    if kind != "missing":
        out.mkdir()
    if kind == "not a run":
        (out / "notes.txt").write_text("mine")
    code, _, err = fit(capsys, "--epochs", 2, "--out", out, "--resume")
    refused(code, err, f"--out {out}", "not a sparse-bnn run" if kind == "not a run" else "sparse-bnn fit --out")
    assert (not out.exists()) if kind == "missing" else sorted(p.name for p in out.iterdir()) == (
        [] if kind == "empty" else ["notes.txt"])


def test_resume_and_overwrite_together_are_refused(capsys, unfinished):
    before = snapshot(unfinished)
    code, _, err = fit(capsys, "--epochs", 2, "--out", unfinished, "--resume", "--overwrite")
    refused(code, err, "--resume", "--overwrite")
    assert snapshot(unfinished) == before


def test_a_checkpoint_of_another_model_is_refused_before_training(capsys, unfinished):
    saved = json.loads((unfinished / "config.json").read_text())
    saved["run"]["model"]["widths"] = [7, 4]  # as if config.json said so, but the checkpoint is of 6,4
    (unfinished / "config.json").write_text(json.dumps(saved))
    before = snapshot(unfinished)
    code, out, err = fit(capsys, "--epochs", 3, "--widths", "7,4", "--out", unfinished, "--resume")
    refused(code, err, str(unfinished / "checkpoint"), "belongs to another model")
    import re
    from flax import serialization
    path, saved_shape, model_shape = re.search(r"(params/\S+) has shape (\(.*?\)) float32, the model shape "
                                               r"(\(.*?\)) float32", err).groups()
    arrays = serialization.msgpack_restore((unfinished / "checkpoint" / "checkpoint.msgpack").read_bytes())
    assert str(arrays["params"][path.split("/", 1)[1]].shape) == saved_shape
    assert model_shape == saved_shape.replace("6", "7") and path.startswith("params/dense0.")
    assert "epoch" not in out
    assert snapshot(unfinished) == before


def test_check_arrays_names_the_first_mismatch_by_path_shape_and_dtype():
    from sparse_bnn.train.checkpoint import check_arrays
    model = {"params": {"a": np.zeros((2, 3), np.float32)}, "epoch": np.zeros((), np.int32)}
    check_arrays(model, {"params": {"a": np.ones((2, 3), np.float32)}, "epoch": np.int32(4) * np.ones((), np.int32)})
    cases = [({"params": {"a": np.zeros((2, 3), np.float64)}, "epoch": np.zeros((), np.int32)},
              r"params/a has shape \(2, 3\) float64, the model shape \(2, 3\) float32"),
             ({"params": {"a": np.zeros((3, 2), np.float32)}, "epoch": np.zeros((), np.int32)},
              r"params/a has shape \(3, 2\) float32"),
             ({"params": {"a": np.zeros((2, 3), np.float32)}}, "it has no epoch"),
             ({"params": {"a": np.zeros((2, 3), np.float32), "b": np.zeros(1, np.float32)},
               "epoch": np.zeros((), np.int32)}, "it holds params/b")]
    for found, message in cases:
        with pytest.raises(ValueError, match=message):
            check_arrays(model, found, "RUN/checkpoint")


def test_adopting_an_optimizer_state_keeps_the_adam_moments_and_step():
    import jax.numpy as jnp
    from flax import serialization
    from sparse_bnn.train import svi_optimizer
    from sparse_bnn.train.checkpoint import adopt_optimizer_state
    params = {"l.w.mu": jnp.zeros(3), "l.z.logit": jnp.zeros(2)}
    saved = serialization.to_state_dict(svi_optimizer(1e-3).init(params))
    saved["0"] = {"count": np.int32(7), "mu": {k: np.full(v.shape, 0.5, np.float32) for k, v in params.items()},
                  "nu": {k: np.full(v.shape, 0.25, np.float32) for k, v in params.items()}}
    new = serialization.to_state_dict(svi_optimizer(1e-4, 1e-2, schedule="cosine", total_steps=20).init(params))
    adopted = adopt_optimizer_state(new, saved)
    assert adopted["0"]["0"] is saved["0"] and int(adopted["0"]["1"]["count"]) == 7 and adopted["1"] == {}


def test_resume_may_not_change_the_learning_rate_of_a_run_that_did_not_diverge(capsys, unfinished):
    before = snapshot(unfinished)
    code, _, err = fit(capsys, "--epochs", 3, "--lr", "1e-4", "--out", unfinished, "--resume")
    refused(code, err, "lr: saved 0.001, now 0.0001", "diverged")
    assert snapshot(unfinished) == before


def test_divergence_shows_the_command_that_resumes_it(capsys, tmp_path):
    out = tmp_path / "diverged"
    code, _, err = fit(capsys, "--epochs", 3, "--lr", "1e8", "--out", out)
    assert code == 3 and "Traceback" not in err, err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:2] == ["sparse-bnn", "fit"] and command[-1] == "--resume"
    assert command[command.index("--lr") + 1] == "10000000.0" and command[command.index("--out") + 1] == str(out)
    marker = json.loads((out / "diverged.json").read_text())
    assert marker["phase"] == "sparse" and (out / "checkpoint" / "checkpoint.msgpack").is_file()
    # the command as shown, with a learning rate that works: the run ends from its last good checkpoint
    command[command.index("--lr") + 1] = "3e-3"
    assert main([*command[1:], "--quiet", "--lr-schedule", "cosine"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in history)
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["training"]["lr"] == 3e-3 and config["run"]["training"]["lr_schedule"] == "cosine"
    assert config["resumed"] == [{"epoch": marker["epoch"], "after": "divergence",
                                  "changed": {"lr": [1e8, 3e-3], "lr_schedule": ["constant", "cosine"]}}]
    assert not (out / "diverged.json").exists() and (out / "metrics.json").is_file()


def test_a_diverged_run_continues_from_its_checkpoint_with_a_new_learning_rate(capsys, unfinished):
    from sparse_bnn.experiment.resume import write_divergence
    write_divergence(unfinished, 2, "sparse", "the loss became non-finite in epoch 3")
    before = json.loads((unfinished / "history.json").read_text())
    code, out, err = fit(capsys, "--epochs", 4, "--lr", "2e-4", "--out", unfinished, "--resume")
    assert code == 0, err
    assert "epoch 3:" in out and "epoch 1:" not in out
    history = json.loads((unfinished / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and history[:2] == [dict(r, phase="sparse") for r in before]
    assert json.loads((unfinished / "config.json").read_text())["resumed"] == [
        {"epoch": 2, "after": "divergence", "changed": {"lr": [1e-3, 2e-4]}}]


# ----------------------------------------------------------------------------- sizes, files, permissions

def test_a_batch_size_larger_than_the_training_set_is_cut_and_recorded(capsys, tmp_path):
    from sparse_bnn.data.sources import load_dataset
    from sparse_bnn.experiment.config import RunConfig
    from sparse_bnn.experiment.run import _check_resumable, fit_batch_size
    out = tmp_path / "run"
    code, stdout, err = fit(capsys, "--epochs", 1, "--batch-size", 1000, "--out", out)
    assert code == 0, err
    assert "note: --batch-size 1000 is more than the 128 training examples of digits; training with --batch-size 128" \
        in stdout
    saved = json.loads((out / "config.json").read_text())["run"]
    assert saved["training"]["batch_size"] == 128
    # resuming with the same options agrees with the record
    asked = RunConfig.flat(**{**RunConfig.from_dict(saved).flat_dict(), "batch_size": 1000})
    used = fit_batch_size(asked, load_dataset("digits", n_train=128, n_test=64), lambda message: None)
    assert used.training.batch_size == 128 and _check_resumable(out, used) == {}


def test_temp_files_of_killed_writes_are_removed_at_the_next_start(capsys, unfinished):
    leftovers = [unfinished / ".history.json.1a2b3c4d.tmp",
                 unfinished / "checkpoint" / ".checkpoint.msgpack.0f0f0f0f.tmp",
                 unfinished / ".config.json.ab_cd123"]  # the last as older versions named them
    for path in leftovers:
        path.write_bytes(b"half a file")
    (unfinished / ".compact.abcdefgh.tmp").mkdir()
    (unfinished / ".keep").write_text("not ours")
    code, out, err = fit(capsys, "--epochs", 2, "--out", unfinished, "--resume")
    assert code == 0, err
    assert "removed 4 temporary file(s)" in out
    assert not any(p.exists() for p in leftovers) and not (unfinished / ".compact.abcdefgh.tmp").exists()
    assert (unfinished / ".keep").read_text() == "not ours"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_mode_of_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = atomic.write_json(tmp_path / "sub" / "file.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in path.parent.iterdir()] == ["file.json"]


def test_a_failed_atomic_write_leaves_no_temp_file(tmp_path):
    (tmp_path / "target").mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        atomic.write_bytes(tmp_path / "target", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
    assert atomic.is_temp_name(".x.json.0a1b2c3d.tmp") and not atomic.is_temp_name(".lock")


def test_run_directory_states(tmp_path):
    from sparse_bnn.experiment.run import RunDirectoryError, prepare_run_directory
    run = tmp_path / "run"
    assert prepare_run_directory(run, resume=False, overwrite=False) is False  # new
    with pytest.raises(RunDirectoryError, match="no run to continue"):
        prepare_run_directory(run, resume=True, overwrite=False)
    run.mkdir()
    (run / ".lock").write_text("")
    assert prepare_run_directory(run, resume=False, overwrite=False) is False  # empty (but for its lock)
    (run / "config.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="--resume"):
        prepare_run_directory(run, resume=False, overwrite=False)
    assert prepare_run_directory(run, resume=True, overwrite=False) is True
    (run / "metrics.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match="--overwrite"):
        prepare_run_directory(run, resume=True, overwrite=False)
    assert prepare_run_directory(run, resume=False, overwrite=True) is False
    assert (run / "metrics.json").exists()  # replaced only once the new run has started

"""Bad input gives one line naming the file or option, exit code 2 and no traceback; doubtful input
a one-line warning. ``sparse-bnn`` runs in-process (``cli.main``) for speed, and in a subprocess
where the real entry point or the memory of a fresh process matters.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from sparse_bnn import cli
from sparse_bnn.compact.io import load_compact, save_compact
from sparse_bnn.data import checksums, locate
from sparse_bnn.data.checks import check_dataset
from sparse_bnn.data.sources import load_dataset
from sparse_bnn.errors import InputError, InputWarning
from sparse_bnn.experiment.run import RunConfig, run_experiment

FIT = ["--net", "mlp", "--widths", "4", "--epochs", "1", "--batch-size", "16", "--samples", "2", "--no-latency",
       "--quiet", "--no-download"]


def run_cli(capsys, *args) -> tuple[int, str]:
    """``(exit code, standard error)`` of ``sparse-bnn ARGS`` run in this process."""
    formatter = warnings.formatwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            code = cli.main([str(a) for a in args])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    finally:
        warnings.formatwarning = formatter
    return code, capsys.readouterr().err


def assert_bad_input(code: int, err: str, *named: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith("sparse-bnn: warning: ")]
    assert len(lines) == 1, err
    for name in named:
        assert str(name) in lines[0], (name, err)


def images(n: int, seed: int, classes=(0, 1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 4, 4, 1]`` float images in [0, 1] whose mean brightness says the class."""
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, n)
    x = np.clip(rng.uniform(0, 0.5, (n, 4, 4, 1)) + 0.2 * y[:, None, None, None], 0, 1)
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run on 4x4 images in [0, 1]; class 3 is only in the test split."""
    folder = tmp_path_factory.mktemp("bad_input")
    x, y = images(96, 0)
    x[0], x[1] = 0.0, 1.0  # the training inputs span [0, 1] exactly
    x_test, y_test = images(24, 1, classes=(0, 1, 2, 3))
    np.savez(folder / "images.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    config = RunConfig.flat(out=str(folder / "run"), data=str(folder / "images.npz"), net="mlp", widths=[4],
                            epochs=1, batch_size=16, samples=2, latency=False)
    with pytest.warns(InputWarning, match=r"classes 3 appear in the test split \(\d+ of 24"):
        run_experiment(config, progress=False)
    return folder / "run"


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def idx_gz(path: Path, array: np.ndarray) -> Path:
    array = np.asarray(array, np.uint8)
    payload = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with gzip.open(path, "wb") as f:
        f.write(payload)
    return path


def idx_folder(folder: Path, train_size=(5, 3), test_size=(5, 3)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    idx_gz(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, *train_size)))
    idx_gz(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 20))
    idx_gz(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, *test_size)))
    idx_gz(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 10))
    return folder


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("SPARSE_BNN_DATA", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_DIRS", {"mnist": tmp_path / "no-system-mnist",
                                                     "fashion-mnist": tmp_path / "no-system-fashion"})


# ----------------------------------------------------------------------------- fit: bad data files

def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


X = np.random.default_rng(0).normal(size=(30, 3))
Y = np.arange(30) % 3

DATA_FILES = {
    "complex_x": lambda d: write_npz(d / "c.npz", x=X + 1j, y=Y),
    "complex_y": lambda d: write_npz(d / "c.npz", x=X, y=Y + 0.5j),
    "string_x": lambda d: write_npz(d / "s.npz", x=np.full((30, 3), "a"), y=Y),
    "object_x": lambda d: write_npz(d / "o.npz", x=np.array([object()] * 30, dtype=object), y=Y),
    "zero_byte_npz": lambda d: _csv(d / "z.npz", ""),
    "garbage_npz": lambda d: (d / "g.npz").write_bytes(os.urandom(200)) and d / "g.npz",
    "truncated_npz": lambda d: (d / "t.npz").write_bytes(write_npz(d / "full.npz", x=X, y=Y).read_bytes()[:300])
    and d / "t.npz",
    "empty_npz": lambda d: write_npz(d / "e.npz"),
    "scalar_y": lambda d: write_npz(d / "y.npz", x=X, y=np.array(3)),
    "no_examples": lambda d: write_npz(d / "n.npz", x=np.zeros((0, 3)), y=np.zeros(0, np.int64)),
    "empty_test": lambda d: write_npz(d / "t.npz", x=X, y=Y, x_test=np.zeros((0, 3)), y_test=np.zeros(0, np.int64)),
    "too_few_for_a_test_split": lambda d: write_npz(d / "f.npz", x=X[:2], y=Y[:2]),
    "test_of_other_width": lambda d: write_npz(d / "w.npz", x=X, y=Y, x_test=X[:, :2], y_test=Y),
    "huge_label": lambda d: write_npz(d / "l.npz", x=X, y=np.where(Y == 2, 10**9, Y)),
    "regression_targets_of_other_width": lambda d: write_npz(d / "r.npz", x=X, y=X[:, 0], x_test=X,
                                                             y_test=X[:, :2]),
    "csv_typo_in_first_row": lambda d: _csv(d / "t.csv", "1.0,2.0x,0\n" + "".join(f"{i},{i},{i % 2}\n"
                                                                                for i in range(20))),
    "csv_binary": lambda d: (d / "b.csv").write_bytes(b"\xff\xfe\x00\x81" * 50) and d / "b.csv",
    "csv_nul_byte": lambda d: _csv(d / "n.csv", "a,b,c\n1,2,0\n1,\x00,1\n"),
    "csv_header_only": lambda d: _csv(d / "h.csv", "a,b,label\n"),
    "missing_file": lambda d: d / "nowhere.npz",
}


@pytest.mark.parametrize("case", sorted(DATA_FILES))
def test_fit_refuses_bad_data_files_before_training(case, tmp_path, capsys):
    path = DATA_FILES[case](tmp_path)
    code, err = run_cli(capsys, "fit", "--data", path, "--out", tmp_path / "out", *FIT)
    assert_bad_input(code, err, path)
    if case == "csv_typo_in_first_row":
        assert "line 1, column 2" in err and "'2.0x'" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_csv_header_needs_most_fields_to_be_words(tmp_path):
    rows = "".join(f"{i},{i * 2},{i % 2}\n" for i in range(20))
    header = load_dataset(_csv(tmp_path / "h.csv", "size,weight,label\n" + rows), standardize=False)
    assert len(header.x_train) + len(header.x_test) == 20  # the header is no example
    data = load_dataset(_csv(tmp_path / "d.csv", "100,200,1\n" + rows), standardize=False)
    assert len(data.x_train) + len(data.x_test) == 21  # a numeric first row is an example
    assert 100.0 in np.concatenate([data.x_train[:, 0], data.x_test[:, 0]])


IDX_CASES = ["corrupt_deflate", "truncated_gzip", "images_of_two_sizes"]


@pytest.mark.parametrize("case", IDX_CASES)
def test_fit_refuses_bad_idx_files(case, tmp_path, capsys):
    folder = idx_folder(tmp_path / "mnist", test_size=(4, 3) if case == "images_of_two_sizes" else (5, 3))
    named = folder / "t10k-images-idx3-ubyte.gz"
    if case != "images_of_two_sizes":
        data = bytearray(named.read_bytes())
        if case == "corrupt_deflate":
            middle = len(data) // 2
            data[middle:middle + 16] = bytes(255 - b for b in data[middle:middle + 16])
        else:
            del data[len(data) // 2:]
        named.write_bytes(bytes(data))
    code, err = run_cli(capsys, "fit", "--data", "mnist", "--data-dir", folder, "--out", tmp_path / "out", *FIT)
    assert_bad_input(code, err, named)


@pytest.mark.parametrize("seed", ["-1", str(2**64), str(2**32)])
def test_fit_refuses_seeds_out_of_range(seed, tmp_path, capsys):
    code, err = run_cli(capsys, "fit", "--data", "digits", "--seed", seed, "--out", tmp_path / "out", *FIT)
    assert_bad_input(code, err, "--seed", seed)


# ----------------------------------------------------------------------------- predict: bad inputs

def _npy(path: Path, array) -> Path:
    np.save(path, array)
    return path


INPUTS = {
    "no_examples": lambda d: _npy(d / "x.npy", np.zeros((0, 16))),
    "zero_byte_npy": lambda d: _csv(d / "x.npy", ""),
    "garbage_npy": lambda d: (d / "x.npy").write_bytes(b"\x93NUMPY" + os.urandom(100)) and d / "x.npy",
    "complex_npy": lambda d: _npy(d / "x.npy", np.ones((2, 16)) * (1 + 1j)),
    "object_npy": lambda d: _npy(d / "x.npy", np.array([None, 1], dtype=object)),
    "npz_without_x": lambda d: write_npz(d / "x.npz", a=np.ones((2, 16)), b=np.ones((2, 16))),
    "npz_without_arrays": lambda d: write_npz(d / "x.npz"),
    "a_directory": lambda d: (d / "folder").mkdir() or d / "folder",
    "wrong_shape": lambda d: _npy(d / "x.npy", np.ones((2, 5))),
    "nan_values": lambda d: _npy(d / "x.npy", np.full((2, 16), np.nan)),
    "values_overflow": lambda d: _npy(d / "x.npy", np.full((2, 16), 3e38)),
    "csv_with_a_typo": lambda d: _csv(d / "x.csv", ",".join(["0.5"] * 15 + ["o.5"]) + "\n"),
}


@pytest.mark.parametrize("case", sorted(INPUTS))
def test_predict_refuses_bad_inputs(case, run, tmp_path, capsys):
    path = INPUTS[case](tmp_path)
    code, err = run_cli(capsys, "predict", run, path)
    assert_bad_input(code, err, path)


@pytest.mark.parametrize("case", ["directory", "missing_folder"])
def test_predict_refuses_bad_out_before_predicting(case, run, tmp_path, capsys):
    x = _npy(tmp_path / "x.npy", images(3, 2)[0])
    out = tmp_path if case == "directory" else tmp_path / "missing" / "p.csv"
    code, err = run_cli(capsys, "predict", run, x, "--out", out)
    assert_bad_input(code, err, "--out", out)


def test_predict_warns_for_inputs_in_other_units_and_runs(run, tmp_path, capsys):
    x = images(5, 3)[0]
    code, err = run_cli(capsys, "predict", run, _npy(tmp_path / "ok.npy", x))
    assert code == 0 and "warning" not in err, err
    code, err = run_cli(capsys, "predict", run, _npy(tmp_path / "pixels.npy", np.round(x * 255)))
    assert code == 0, err
    warning, = [line for line in err.splitlines() if "warning" in line]
    low, high = float(x.min()), float(x.max())
    assert warning.startswith("sparse-bnn: warning: ") and str(tmp_path / "pixels.npy") in warning
    assert "5 of 5 examples" in warning and "[0, 1]" in warning and "0-255" in warning
    assert 0 <= low and high <= 1


# ----------------------------------------------------------------------------- predict: tampered models

def _architecture(run: Path) -> Path:
    return run / "compact" / "architecture.json"


def _set_config(key, value):
    return lambda run: edit_json(_architecture(run), lambda a: a["config"].__setitem__(key, value))


def _set(key, value):
    return lambda run: edit_json(_architecture(run), lambda a: a.__setitem__(key, value))


def _set_preprocessing(key, value):
    return lambda run: edit_json(_architecture(run), lambda a: a["metadata"]["preprocessing"].__setitem__(key, value))


def _write(name, data: bytes):
    return lambda run: (run / name).write_bytes(data)


def _truncate(name):
    return lambda run: (run / name).write_bytes((run / name).read_bytes()[:-20])


MODELS = {
    "architecture_not_json": (_write("compact/architecture.json", b"{\"format\": "), "compact/architecture.json"),
    "architecture_without_config": (lambda r: edit_json(_architecture(r), lambda a: a.pop("config")),
                                    "compact/architecture.json"),
    "null_widths": (_set_config("widths", None), "compact/architecture.json"),
    "huge_widths": (_set_config("widths", [10**12, 32]), "compact/architecture.json"),
    "negative_width": (_set_config("widths", [-3]), "compact/architecture.json"),
    "widths_unlike_the_arrays": (_set_config("widths", [7]), "compact/architecture.json"),
    "width_as_text": (_set_config("widths", ["four"]), "compact/architecture.json"),
    "unknown_net": (_set_config("net", "transformer-xxl"), "compact/architecture.json"),
    "string_shapes": (_set("param_shapes", "all of them"), "compact/architecture.json"),
    "num_samples_negative": (_set("num_samples", -1), "compact/architecture.json"),
    "mean_of_wrong_length": (_set_preprocessing("mean", [0.1, 0.2, 0.3]), "compact/architecture.json"),
    "std_zero": (_set_preprocessing("std", 0.0), "compact/architecture.json"),
    "unknown_task": (_set_preprocessing("task", "clustering"), "compact/architecture.json"),
    "noise_std_text": (lambda r: edit_json(_architecture(r), lambda a: a["metadata"].__setitem__("noise_std", "x")),
                       "compact/architecture.json"),
    "params_truncated": (_truncate("compact/params.msgpack"), "compact/params.msgpack"),
    "samples_garbage": (_write("compact/samples.msgpack", b"\x81\xa1a\xc1" * 8), "compact/samples.msgpack"),
    "config_not_json": (_write("config.json", b"{\"run\": [1, 2"), "config.json"),
    "config_without_run": (_write("config.json", b"{}"), "config.json"),
    "metrics_not_json": (_write("metrics.json", b"\x00\x01"), "metrics.json"),
}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_predict_refuses_tampered_runs(case, run_copy, tmp_path, capsys):
    tamper, named = MODELS[case]
    tamper(run_copy)
    code, err = run_cli(capsys, "predict", run_copy, _npy(tmp_path / "x.npy", images(3, 2)[0]))
    assert_bad_input(code, err, run_copy / named if case != "config_without_run" else run_copy)


def test_predict_refuses_nan_parameters(run_copy, tmp_path, capsys):
    from flax import serialization
    file = run_copy / "compact" / "params.msgpack"
    params = serialization.msgpack_restore(file.read_bytes())
    name = sorted(params)[0]
    params[name] = np.full_like(params[name], np.nan)
    file.write_bytes(serialization.msgpack_serialize(params))
    code, err = run_cli(capsys, "predict", run_copy, _npy(tmp_path / "x.npy", images(3, 2)[0]), "--median")
    assert_bad_input(code, err, file, name, "NaN/inf")


def test_predict_refuses_outputs_that_are_not_finite(run_copy, tmp_path, capsys):
    from flax import serialization
    file = run_copy / "compact" / "params.msgpack"
    params = {name: np.full_like(value, 1e30) for name, value in serialization.msgpack_restore(file.read_bytes()).items()}
    file.write_bytes(serialization.msgpack_serialize(params))
    x = _npy(tmp_path / "x.npy", images(3, 2)[0])
    code, err = run_cli(capsys, "predict", run_copy, x, "--median")
    assert_bad_input(code, err, x, "outputs are NaN/inf for ", run_copy / "compact")


@pytest.mark.parametrize("command", ["report", "evaluate"])
def test_report_and_evaluate_name_the_corrupt_file(command, run_copy, capsys):
    file = run_copy / ("report.json" if command == "report" else "compact/architecture.json")
    file.write_text("[1, 2,")
    code, err = run_cli(capsys, command, run_copy)
    assert_bad_input(code, err, file)


# ----------------------------------------------------------------------------- memory of untrusted models

def test_huge_widths_are_refused_without_allocating(tmp_path):
    from flax import nnx
    from sparse_bnn.nets import MLP
    save_compact(tmp_path / "model", MLP(8, (6,), 3, rngs=nnx.Rngs(0)))
    edit_json(tmp_path / "model" / "architecture.json", lambda a: a["config"].__setitem__("widths", [10**12, 32]))
    script = textwrap.dedent(f"""
        import resource
        from sparse_bnn.compact.io import load_compact
        from sparse_bnn.errors import InputError
        try:
            load_compact({str(tmp_path / "model")!r})
        except InputError as error:
            print("refused:", error)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr
    message, peak_kib = result.stdout.strip().splitlines()
    assert message.startswith("refused: ") and "architecture.json" in message and "1000000000000" in message
    assert int(peak_kib) < 1024 * 1024, peak_kib  # ru_maxrss is in KiB on Linux: the process stayed under 1 GiB


def test_shapes_that_need_more_than_the_memory_bound_are_refused(tmp_path):
    from flax import nnx
    from sparse_bnn.nets import MLP
    save_compact(tmp_path / "model", MLP(8, (6,), 3, rngs=nnx.Rngs(0)))
    assert load_compact(tmp_path / "model", max_bytes=600) is not None  # 8*6 + 6 + 6*3 + 3 = 75 values, 8 bytes each
    with pytest.raises(InputError, match=r"architecture.json: the model would need .* GiB"):
        load_compact(tmp_path / "model", max_bytes=599)


# ----------------------------------------------------------------------------- library-level checks

def test_check_dataset_refuses_what_training_would_fail_on(tmp_path):
    np.savez(tmp_path / "ok.npz", x=X, y=Y)
    dataset = load_dataset(tmp_path / "ok.npz")
    assert check_dataset(dataset) is dataset
    with pytest.raises(InputError, match=f"{tmp_path / 'ok.npz'}: the test split is empty"):
        check_dataset(dataclasses.replace(dataset, x_test=dataset.x_test[:0], y_test=dataset.y_test[:0]))
    with pytest.raises(InputError, match=r"test examples have shape \(2,\) but the training examples \(3,\)"):
        check_dataset(dataclasses.replace(dataset, x_test=dataset.x_test[:, :2]))
    with pytest.raises(InputError, match="test label 5 outside 0..2"):
        check_dataset(dataclasses.replace(dataset, y_test=np.full_like(dataset.y_test, 5)))


def test_downloads_only_over_https(tmp_path):
    assert all(url.startswith("https://") for url in locate.DOWNLOAD_URLS.values())
    with pytest.raises(InputError, match="refusing to download over http"):
        locate.download_file("http://example.org/train-images-idx3-ubyte.gz", tmp_path / "x.gz", "0" * 32)
    assert not list(tmp_path.iterdir())


def test_files_on_disk_are_checked_once_and_again_when_they_change(tmp_path, monkeypatch):
    folder = idx_folder(tmp_path / "mnist")
    md5s = {f.name: checksums.file_md5(f) for f in folder.iterdir()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checksums.verify_idx_files(folder, md5s, tmp_path / "cache") == dict.fromkeys(md5s, True)
    marker = json.loads((folder / checksums.MARKER).read_text())
    assert {name: entry["md5"] for name, entry in marker.items()} == md5s

    hashed = []
    monkeypatch.setattr(checksums, "file_md5", lambda path: hashed.append(path.name) or "0" * 32)
    assert checksums.verify_idx_files(folder, md5s, tmp_path / "cache") == dict.fromkeys(md5s, True)
    assert hashed == []  # recorded size and mtime unchanged: not hashed again

    changed = folder / "t10k-labels-idx1-ubyte.gz"
    idx_gz(changed, np.arange(10) % 3)
    with pytest.warns(InputWarning, match=r"t10k-labels-idx1-ubyte.gz differ from the official files"):
        outcome = checksums.verify_idx_files(folder, md5s, tmp_path / "cache")
    assert hashed == [changed.name] and outcome == {**dict.fromkeys(md5s, True), changed.name: False}


def test_read_only_folders_keep_their_marker_in_the_cache(tmp_path):
    folder = idx_folder(tmp_path / "mnist")
    md5s = {f.name: checksums.file_md5(f) for f in folder.iterdir()}
    checksums.verify_idx_files(folder, md5s, tmp_path / "cache", next_to_files=False)
    assert not (folder / checksums.MARKER).exists()
    kept, = (tmp_path / "cache" / "checksums").iterdir()
    assert set(json.loads(kept.read_text())) == set(md5s)


def test_repacked_official_content_is_recognised(tmp_path):
    """A file gzipped again (another header) is matched by the sha256 of its content."""
    folder = idx_folder(tmp_path / "fashion-mnist")
    content = {f.name.removesuffix(".gz"): checksums.content_sha256(f) for f in folder.iterdir()}
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
        gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes()), mtime=12345))
    outcome = checksums._check(folder / "train-labels-idx1-ubyte.gz", {"train-labels-idx1-ubyte.gz": "0" * 32},
                               content)
    assert outcome["verified"] and outcome["known"]


def test_cli_prints_one_line_and_exit_2_from_the_real_entry_point(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "sparse_bnn", "fit", "--data", str(tmp_path / "x.npz"),
                             "--seed", "-1", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "--seed" in result.stderr, result.stderr


def test_fit_refuses_a_net_size_for_a_net_without_named_sizes(tmp_path, capsys):
    code, err = run_cli(capsys, "fit", "--data", "digits", "--net-size", "small", "--out", tmp_path / "out", *FIT)
    assert_bad_input(code, err, "--net-size", "mlp")
    assert not (tmp_path / "out").exists()

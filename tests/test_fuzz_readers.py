"""Property-based tests of the readers of untrusted files: over random corruptions of valid files
(bytes flipped, truncation, JSON values replaced) every outcome is a correct load or the library's
own :class:`~sparse_bnn.errors.InputError`, never another exception."""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sparse_bnn.compact.io import load_compact_samples, save_compact
from sparse_bnn.data.sources import load_dataset
from sparse_bnn.data.tabular import read_csv
from sparse_bnn.errors import InputError

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def corrupt(data: bytes, flips: list[tuple[int, int]], keep: float) -> bytes:
    """``data`` with the bytes at ``position % len`` xor-ed by ``mask``, then cut to ``keep`` of it."""
    out = bytearray(data)
    for position, mask in flips:
        out[position % len(out)] ^= mask
    return bytes(out[:int(len(out) * keep)])


corruptions = st.tuples(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), max_size=6),
                        st.one_of(st.just(1.0), st.floats(0.0, 1.0)))


def outcome(load, *args):
    """``load(*args)``, or ``None`` when it raised the library's error; anything else propagates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load(*args)
        except InputError as error:
            assert str(error) and "\n" not in str(error)  # one line
            return None


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(0)
    np.savez(folder / "d.npz", x=rng.normal(size=(20, 3)).astype(np.float32), y=np.arange(20) % 2,
             x_test=rng.normal(size=(6, 3)).astype(np.float32), y_test=np.arange(6) % 2)
    csv_text = "a,b,label\n" + "".join(f"{rng.normal():.3f},{rng.normal():.3f},{i % 2}\n" for i in range(20))
    return {"npz": (folder / "d.npz").read_bytes(), "csv": csv_text.encode()}


@FUZZ
@given(change=corruptions)
def test_npz_reader_loads_or_raises_input_error(valid_files, change):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.npz"
        path.write_bytes(corrupt(valid_files["npz"], *change))
        dataset = outcome(load_dataset, path)
        if dataset is not None:
            assert np.all(np.isfinite(dataset.x_train)) and len(dataset.x_train) == len(dataset.y_train)


@FUZZ
@given(change=corruptions)
def test_csv_reader_loads_or_raises_input_error(valid_files, change):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.csv"
        path.write_bytes(corrupt(valid_files["csv"], *change))
        read = outcome(read_csv, path)
        if read is not None:
            x, y = read
            assert np.all(np.isfinite(x)) and len(x) == len(y) and x.ndim == 2
        outcome(load_dataset, path)


# ----------------------------------------------------------------------------- compact models

@pytest.fixture(scope="module")
def valid_model(tmp_path_factory) -> Path:
    from flax import nnx
    from sparse_bnn.nets import MLP, FunctionalNet
    net = MLP(5, (4, 3), 2, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    samples = {path: rng.normal(size=(2, *np.shape(v))).astype(np.float32)
               for path, v in FunctionalNet(net).initial.items()}
    directory = tmp_path_factory.mktemp("model") / "model"
    save_compact(directory, net, samples, metadata={"preprocessing": {"task": "regression"}})
    return directory


def json_paths(value, prefix=()) -> list[tuple]:
    """Every path (keys and indices) into a JSON value."""
    paths = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, inner in items:
        paths += json_paths(inner, prefix + (key,))
    return paths


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 1 << 40) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def load_both(directory: Path):
    """``load_compact_samples`` (which loads the network with ``load_compact`` first)."""
    net, samples = load_compact_samples(directory)
    assert len(samples) == 6 and all(np.all(np.isfinite(np.asarray(s))) for s in samples.values())
    return net


@FUZZ
@given(data=st.data())
def test_load_compact_over_replaced_json_values(valid_model, data):
    architecture = json.loads((valid_model / "architecture.json").read_text())
    path = data.draw(st.sampled_from(json_paths(architecture)[1:]), label="path")
    replacement = data.draw(json_values, label="value")
    target = architecture
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = replacement
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder) / "model"
        shutil.copytree(valid_model, directory)
        (directory / "architecture.json").write_text(json.dumps(architecture))
        outcome(load_both, directory)


@FUZZ
@given(file=st.sampled_from(["architecture.json", "params.msgpack", "samples.msgpack"]), change=corruptions)
def test_load_compact_over_corrupt_bytes(valid_model, file, change):
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder) / "model"
        shutil.copytree(valid_model, directory)
        (directory / file).write_bytes(corrupt((valid_model / file).read_bytes(), *change))
        outcome(load_both, directory)

"""Data-parallel fitting: 4 devices equal 1 device, batches really sharded, streamed epochs equal
device-resident ones, runs reproducible by seed and resumable from checkpoints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from sparse_bnn.train import distributed
from sparse_bnn.train import fit
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets.mlp import MLP
from sparse_bnn.priors import get_prior

REPO = Path(__file__).resolve().parents[1]
N_DATA, FEATURES, BATCH = 200, 6, 32


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_DATA, FEATURES)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)


def make_bnn() -> SparseBNN:
    return SparseBNN(MLP(FEATURES, (16,), 2, rngs=nnx.Rngs(0)), get_prior("ss-gl"), n_data=N_DATA)


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


# -- 4 fake CPU devices, in a subprocess (the device count is fixed when JAX starts) ------------

FOUR_DEVICES = textwrap.dedent(r"""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from tests.test_distributed import make_bnn, make_data, BATCH
    from sparse_bnn.train import fit

    assert jax.device_count() == 4, jax.devices()
    x, y = make_data()
    seen = []

    def spy(key, x_batch):  # an identity "augmentation" that reports how the step's batch is laid out
        jax.debug.inspect_array_sharding(x_batch, callback=seen.append)
        return x_batch

    def describe(sharding):
        return {"devices": len(sharding.device_set), "spec": list(sharding.spec),
                "replicated": sharding.is_fully_replicated}

    common = dict(epochs=3, batch_size=BATCH, progress=False, augment=spy)
    one = fit(make_bnn(), x, y, devices=1, **common)
    one_sharding = describe(seen[-1])
    four = fit(make_bnn(), x, y, validation=(x, y), **common)   # default: every local device
    four_sharding = describe(seen[-1])
    streamed = fit(make_bnn(), x, y, streaming=True, stream_chunk_steps=2, **common)
    streamed_sharding = describe(seen[-1])
    try:
        fit(make_bnn(), x, y, epochs=1, batch_size=30, progress=False)
        batch_error = None
    except ValueError as error:
        batch_error = str(error)
    print("RESULT" + json.dumps({
        "one": {k: np.asarray(v).tolist() for k, v in one.params.items()},
        "four": {k: np.asarray(v).tolist() for k, v in four.params.items()},
        "streamed": {k: np.asarray(v).tolist() for k, v in streamed.params.items()},
        "loss_one": [h["loss"] for h in one.history], "loss_four": [h["loss"] for h in four.history],
        "val_accuracy": four.history[-1]["val_accuracy"],
        "batch_one": one_sharding, "batch_four": four_sharding, "batch_streamed": streamed_sharding,
        "params_four": describe(next(iter(four.params.values())).sharding),
        "batch_error": batch_error,
    }))
""")


@pytest.fixture(scope="module")
def four_device_run() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(REPO)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_four_devices_match_one_device(four_device_run):
    one, four = four_device_run["one"], four_device_run["four"]
    assert one.keys() == four.keys()
    for name in one:
        a, b = np.asarray(one[name]), np.asarray(four[name])
        scale = np.max(np.abs(a))
        assert np.max(np.abs(a - b)) <= 1e-5 * scale, name
    # the runs really trained: parameters moved away from the shared initialisation
    start = make_bnn().init_params()
    assert max(np.max(np.abs(np.asarray(one[k]) - np.asarray(start[k]))) for k in one) > 1e-3
    np.testing.assert_allclose(four_device_run["loss_four"], four_device_run["loss_one"], rtol=1e-5)
    assert 0.0 <= four_device_run["val_accuracy"] <= 1.0


def test_batches_sharded_and_parameters_replicated(four_device_run):
    assert four_device_run["batch_one"]["devices"] == 1
    for run in ("batch_four", "batch_streamed"):
        assert four_device_run[run] == {"devices": 4, "spec": ["data"], "replicated": False}, run
    assert four_device_run["params_four"] == {"devices": 4, "spec": [], "replicated": True}


def test_streaming_on_four_devices_matches_resident(four_device_run):
    for name, value in four_device_run["four"].items():
        np.testing.assert_array_equal(np.asarray(four_device_run["streamed"][name]), np.asarray(value), err_msg=name)


def test_batch_must_divide_by_device_count(four_device_run):
    message = four_device_run["batch_error"]
    assert message is not None and "30" in message and "4 devices" in message


# -- one device, in process --------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run():
    x, y = make_data()
    return fit(make_bnn(), x, y, epochs=4, batch_size=BATCH, seed=3, progress=False, streaming=False)


def test_streaming_equals_device_resident(reference_run):
    x, y = make_data()
    # 6 steps per epoch in chunks of 4: one full chunk and a shorter last one
    streamed = fit(make_bnn(), x, y, epochs=4, batch_size=BATCH, seed=3, progress=False,
                   streaming=True, stream_chunk_steps=4)
    assert_same_params(streamed.params, reference_run.params)
    np.testing.assert_array_equal(np.asarray(streamed.state.rng_key), np.asarray(reference_run.state.rng_key))
    np.testing.assert_allclose([h["loss"] for h in streamed.history],
                               [h["loss"] for h in reference_run.history], rtol=1e-6)


def test_fit_is_deterministic_by_seed(reference_run, tmp_path):
    x, y = make_data()
    again = fit(make_bnn(), x, y, epochs=4, batch_size=BATCH, seed=3, progress=False)
    assert_same_params(again.params, reference_run.params)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in reference_run.history]
    other = fit(make_bnn(), x, y, epochs=4, batch_size=BATCH, seed=4, progress=False)
    name = "layers.0.kernel.loc"
    assert not np.allclose(np.asarray(other.params[name]), np.asarray(reference_run.params[name]))


def test_resume_equals_uninterrupted(reference_run, tmp_path):
    x, y = make_data()
    first = fit(make_bnn(), x, y, epochs=2, batch_size=BATCH, seed=3, progress=False, checkpoint_dir=tmp_path)
    assert len(first.history) == 2 and (tmp_path / "checkpoint.msgpack").exists()
    resumed = fit(make_bnn(), x, y, epochs=4, batch_size=BATCH, seed=3, progress=False,
                  checkpoint_dir=tmp_path, resume=True)
    assert_same_params(resumed.params, reference_run.params)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference_run.history]


# -- meshes and choices, no compilation --------------------------------------------------------

def test_mesh_and_device_arguments_are_checked():
    x, y = make_data()
    with pytest.raises(ValueError, match="axis named 'data'"):
        fit(make_bnn(), x, y, epochs=1, progress=False, mesh=Mesh(np.asarray(jax.devices()), ("batch",)))
    with pytest.raises(ValueError, match="either mesh or devices"):
        fit(make_bnn(), x, y, epochs=1, progress=False, mesh=distributed.data_mesh(), devices=1)
    with pytest.raises(ValueError, match="local device"):
        fit(make_bnn(), x, y, epochs=1, progress=False, devices=jax.local_device_count() + 1)
    with pytest.raises(ValueError, match="stream_chunk_steps"):
        fit(make_bnn(), x, y, epochs=1, progress=False, streaming=True, stream_chunk_steps=0)


def test_data_mesh_and_batch_check():
    mesh = distributed.data_mesh(1)
    assert mesh.axis_names == ("data",) and distributed.data_parallel_size(mesh) == 1
    distributed.check_batch_size(7, mesh)
    fake = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    assert distributed.data_parallel_size(fake) == 1
    assert distributed.local_batch_slice(mesh, 64) == slice(0, 64)


def test_should_stream_compares_data_with_device_memory(monkeypatch):
    mesh = distributed.data_mesh(1)
    monkeypatch.setattr(distributed, "free_device_bytes", lambda mesh: 1000)
    assert not distributed.should_stream(500, mesh)          # exactly half of the free memory fits
    assert distributed.should_stream(501, mesh)
    monkeypatch.setattr(distributed, "free_device_bytes", lambda mesh: None)   # backend says nothing
    assert not distributed.should_stream(100, mesh, fallback_bytes=200)
    assert distributed.should_stream(101, mesh, fallback_bytes=200)

"""Saving and loading compact networks: identical outputs, in a fresh process too."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_bnn.compact.io import load_compact, load_compact_samples, save_compact
from sparse_bnn.nets import MLP, NETS, FunctionalNet, net_from_config
from sparse_bnn.compact.prune import compact_samples


def pruned_mlp():
    net = MLP(12, (10, 8), 3, activation="sigmoid", rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    samples = {path: jnp.asarray(rng.standard_normal((4, *np.shape(v))), jnp.float32)
               for path, v in FunctionalNet(net).initial.items()}
    keep = {"dense0": rng.random(10) < 0.5, "dense1": rng.random(8) < 0.5}
    return compact_samples(net, samples, keep)


def test_round_trip_in_fresh_process(tmp_path):
    small, samples = pruned_mlp()
    directory = tmp_path / "model"
    save_compact(directory, small, samples, metadata={"note": "test"})
    x = np.random.default_rng(1).standard_normal((5, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import json, sys
        import jax, numpy as np
        from sparse_bnn.compact.io import load_compact, load_compact_samples
        x = np.load({str(tmp_path / "x.npy")!r})
        net = load_compact({str(directory)!r})
        net_s, samples = load_compact_samples({str(directory)!r})
        from sparse_bnn.nets import FunctionalNet
        per_sample = jax.vmap(FunctionalNet(net_s).apply, in_axes=(0, None))(samples, x)
        json.dump({{"net": type(net).__name__, "out": np.asarray(net(x)).tolist(),
                   "samples": np.asarray(per_sample).tolist()}}, sys.stdout)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["net"] == "MLP"
    np.testing.assert_array_equal(np.asarray(loaded["out"], np.float32), np.asarray(small(x)))
    expected = jax.vmap(FunctionalNet(small).apply, in_axes=(0, None))(samples, x)
    np.testing.assert_array_equal(np.asarray(loaded["samples"], np.float32), np.asarray(expected))


def test_architecture_file_and_overwrite(tmp_path):
    small, samples = pruned_mlp()
    directory = tmp_path / "model"
    save_compact(directory, small, metadata={"accuracy": 0.9})
    architecture = json.loads((directory / "architecture.json").read_text())
    assert architecture["format_version"] == 1
    assert architecture["config"] == small.config
    assert architecture["param_shapes"]["layers.0.kernel"] == [12, small.widths[0]]
    assert architecture["num_samples"] is None and architecture["metadata"] == {"accuracy": 0.9}
    assert sorted(p.name for p in directory.iterdir()) == ["architecture.json", "params.msgpack"]
    with pytest.raises(ValueError, match="without posterior samples"):
        load_compact_samples(directory)
    save_compact(directory, small, samples)  # replaces atomically: no temp dirs are left over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert json.loads((directory / "architecture.json").read_text())["num_samples"] == 4
    with pytest.raises(FileExistsError):
        save_compact(directory, small, overwrite=False)


def test_missing_and_corrupt_files(tmp_path):
    small, _ = pruned_mlp()
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_compact(tmp_path / "nothing")
    directory = tmp_path / "model"
    save_compact(directory, small)
    params_bytes = (directory / "params.msgpack").read_bytes()

    (directory / "params.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="params.msgpack.*corrupt|params.msgpack holds"):
        load_compact(directory)
    (directory / "params.msgpack").unlink()
    with pytest.raises(FileNotFoundError, match="params.msgpack is missing"):
        load_compact(directory)
    (directory / "params.msgpack").write_bytes(params_bytes)

    architecture = json.loads((directory / "architecture.json").read_text())
    architecture["param_shapes"]["layers.0.kernel"] = [12, 99]
    (directory / "architecture.json").write_text(json.dumps(architecture))
    with pytest.raises(ValueError, match=r"layers\.0\.kernel.*\[12, 99\]"):
        load_compact(directory)
    (directory / "architecture.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_compact(directory)
    (directory / "architecture.json").unlink()
    with pytest.raises(FileNotFoundError, match="architecture.json is missing"):
        load_compact(directory)


def test_bad_samples_rejected(tmp_path):
    small, samples = pruned_mlp()
    bad = {**samples, ("layers", 0, "bias"): jnp.zeros((4, 99))}
    with pytest.raises(ValueError, match=r"layers\.0\.bias"):
        save_compact(tmp_path / "m", small, bad)
    assert not (tmp_path / "m").exists()


NETS_WITH_STATE = sorted(name for name, cls in NETS.items() if hasattr(cls, "example_config"))


@pytest.mark.parametrize("name", NETS_WITH_STATE)
def test_round_trip_registered_nets_keeps_all_state(name, tmp_path):
    """Parameters and non-parameter state (batch statistics) come back exactly."""
    net = net_from_config(NETS[name].example_config(), seed=0)
    _, params, rest = nnx.split(net, nnx.Param, nnx.Not(nnx.RngState), ...)[:3]
    rng = np.random.default_rng(0)
    perturbed = jax.tree_util.tree_map(lambda v: v + rng.standard_normal(v.shape).astype(v.dtype),
                                       (nnx.to_pure_dict(params), nnx.to_pure_dict(rest)))
    nnx.replace_by_pure_dict(params, perturbed[0])
    nnx.replace_by_pure_dict(rest, perturbed[1])
    nnx.update(net, params, rest)
    save_compact(tmp_path / name, net)
    loaded = load_compact(tmp_path / name)
    expected = nnx.to_pure_dict(nnx.state(net, nnx.Not(nnx.RngState)))
    got = nnx.to_pure_dict(nnx.state(loaded, nnx.Not(nnx.RngState)))
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, expected)


def test_saved_directory_follows_the_umask(tmp_path):
    """A compact directory others on the machine may read: ``0777 & ~umask`` (not tempfile's 0700)."""
    import os
    import stat
    net = MLP(4, (3,), 2, rngs=nnx.Rngs(0))
    previous = os.umask(0o022)
    try:
        save_compact(tmp_path / "compact", net)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "compact").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "compact" / "architecture.json").stat().st_mode) == 0o644

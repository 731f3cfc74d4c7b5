"""Any Flax NNX module as a sparse network: inferred unit layers, the compaction check, the hand
declaration as override, and loading a compact custom module in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_bnn.compact.io import load_compact, save_compact
from sparse_bnn.compact.keep import mask_params
from sparse_bnn.compact.prune import compact
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.errors import InputError
from sparse_bnn.nets import MLP, infer_units
from sparse_bnn.nets.base import FunctionalNet, ParamAxis, UnitLayer, with_group_sizes
from sparse_bnn.nets.declare import declare_units
from sparse_bnn.nets.lenet import LeNet5Caffe
from sparse_bnn.priors import get_prior

MODULE = "sbnn_test_custom_nets"
SOURCE = textwrap.dedent('''
    import jax.numpy as jnp
    from flax import nnx


    class SkipMLP(nnx.Module):
        """x [B, din] -> relu(fc1) + relu(fc2(.)) (skip) -> sigmoid(fc3) -> out."""

        def __init__(self, din, width, dout, *, rngs):
            self.din, self.width, self.dout = din, width, dout
            self.fc1 = nnx.Linear(din, width, rngs=rngs)
            self.fc2 = nnx.Linear(width, width, rngs=rngs)
            self.fc3 = nnx.Linear(width, 5, rngs=rngs)
            self.out = nnx.Linear(5, dout, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.fc1(x))
            h = h + nnx.relu(self.fc2(h))
            return self.out(nnx.sigmoid(self.fc3(h)))


    class SmallCNN(nnx.Module):
        """x [B, 12, 12, 1] -> conv 4 + batch norm -> pool -> conv 6 -> pool -> flatten -> dense."""

        def __init__(self, *, rngs):
            self.conv1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.conv2 = nnx.Conv(4, 6, (3, 3), padding="VALID", rngs=rngs)
            self.dense = nnx.Linear(6 * 2 * 2, 7, rngs=rngs)
            self.head = nnx.Linear(7, 3, rngs=rngs)

        def __call__(self, x):
            h = nnx.max_pool(nnx.relu(self.bn(self.conv1(x))), (2, 2), (2, 2))
            h = nnx.max_pool(nnx.gelu(self.conv2(h)), (2, 2), (2, 2))
            return self.head(nnx.silu(self.dense(h.reshape(h.shape[0], -1))))


    class NormMLP(nnx.Module):
        def __init__(self, *, rngs):
            self.fc1 = nnx.Linear(3, 6, rngs=rngs)
            self.norm = nnx.LayerNorm(6, rngs=rngs)
            self.fc2 = nnx.Linear(6, 2, rngs=rngs)

        def __call__(self, x):
            return self.fc2(nnx.relu(self.norm(self.fc1(x))))


    class MixedAdd(nnx.Module):
        """A flattened conv map [B, 4*4*2] added to a dense output of the same size."""

        def __init__(self, *, rngs):
            self.conv = nnx.Conv(1, 2, (3, 3), rngs=rngs)
            self.fc = nnx.Linear(16, 32, rngs=rngs)
            self.head = nnx.Linear(32, 2, rngs=rngs)

        def __call__(self, x):
            flat = nnx.relu(self.conv(x)).reshape(x.shape[0], -1)
            return self.head(flat + nnx.relu(self.fc(x.reshape(x.shape[0], -1))))
''')


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("custom")
    (folder / f"{MODULE}.py").write_text(SOURCE)
    sys.path.insert(0, str(folder))
    try:
        module = __import__(MODULE)
        yield module, folder
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)


def structure(layers):
    """Layers without names: what a declaration says about units."""
    return sorted((l.units, frozenset(l.members), frozenset(l.consumers), l.prunable,
                   round(l.inactive_output, 6), l.weights_per_unit) for l in layers)


def dense(path, columns=True):
    """Members of an nnx.Linear's output units, or (columns=False) its consumer rows."""
    if not columns:
        return ParamAxis((path, "kernel"), 0)
    return ParamAxis((path, "kernel"), 1), ParamAxis((path, "bias"), 0)


def compact_and_masked(net, keep, x):
    params = FunctionalNet(net).initial
    params = {p: v + 0.1 * np.random.default_rng(1).normal(size=v.shape).astype(v.dtype) for p, v in params.items()}
    small, small_params = compact(net, params, keep)
    masked = FunctionalNet(net)(mask_params(net.unit_layers(), params, keep), x)
    return np.asarray(FunctionalNet(small)(small_params, x)), np.asarray(masked), small


def test_skip_mlp_inference_matches_the_hand_declaration(nets):
    module, _ = nets
    net = module.SkipMLP(3, 8, 2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    hand = with_group_sizes(net, [
        UnitLayer("stream", 8, 11, members=(*dense("fc1"), *dense("fc2")),
                  consumers=(dense("fc2", False), dense("fc3", False))),
        UnitLayer("hidden", 5, 8, members=dense("fc3"), consumers=(dense("out", False),), inactive_output=0.5),
        UnitLayer("out", 2, 5, members=dense("out"), prunable=False)])
    inferred = infer_units(net, x)
    assert [l.name for l in inferred] == ["fc1", "fc3", "out"]
    assert structure(inferred) == structure(hand)
    keep = {"fc3": np.array([1, 0, 1, 0, 1], bool)}
    outputs = {}
    for how, layers, keep_named in (("inferred", None, {"fc1": np.arange(8) % 3 == 0, **keep}),
                                    ("hand", hand, {"stream": np.arange(8) % 3 == 0, "hidden": keep["fc3"]})):
        declared = declare_units(module.SkipMLP(3, 8, 2, rngs=nnx.Rngs(0)), x, layers=layers)
        result, masked, small = compact_and_masked(declared, keep_named, x)
        np.testing.assert_allclose(result, masked, atol=1e-5)
        assert small.fc1.kernel.get_value().shape == (3, 3) and small.fc3.kernel.get_value().shape == (3, 3)
        outputs[how] = result
    np.testing.assert_allclose(outputs["inferred"], outputs["hand"], atol=1e-6)
    # the removed sigmoid units send 0.5 each into out's bias: folding it is needed for the match
    assert abs(inferred[1].inactive_output - 0.5) < 1e-6


def test_cnn_inference_matches_the_hand_declaration(nets):
    module, _ = nets
    net = module.SmallCNN(rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(3, 12, 12, 1)).astype(np.float32)
    conv = lambda name: (ParamAxis((name, "kernel"), 3), ParamAxis((name, "bias"), 0))  # noqa: E731
    hand = with_group_sizes(net, [
        UnitLayer("c1", 4, 9, members=(*conv("conv1"), *(ParamAxis(("bn", k), 0) for k in
                                                          ("scale", "bias", "mean", "var"))),
                  consumers=(ParamAxis(("conv2", "kernel"), 2),)),
        UnitLayer("c2", 6, 36, members=conv("conv2"), consumers=(ParamAxis(("dense", "kernel"), 0, interleave=4),)),
        UnitLayer("d", 7, 24, members=dense("dense"), consumers=(dense("head", False),)),
        UnitLayer("head", 3, 7, members=dense("head"), prunable=False)])
    inferred = infer_units(net, x)
    assert structure(inferred) == structure(hand)
    declared = declare_units(net, x)
    keep = {"conv1": np.array([1, 0, 1, 1], bool), "conv2": np.array([0, 1, 1, 0, 1, 0], bool),
            "dense": np.array([1, 1, 0, 0, 1, 0, 1], bool)}
    result, masked, small = compact_and_masked(declared, keep, x)
    np.testing.assert_allclose(result, masked, atol=1e-5)
    assert small.bn.mean.get_value().shape == (3,) and small.dense.kernel.get_value().shape == (12, 4)


@pytest.mark.parametrize("net, x, hand_names", [
    (MLP(5, (6, 4), 3, rngs=nnx.Rngs(0)), np.ones((2, 5), np.float32), None),
    (LeNet5Caffe.from_config(LeNet5Caffe.example_config(), nnx.Rngs(0)), np.ones((2, 16, 16, 1), np.float32), None)])
def test_inference_reproduces_the_library_nets_declarations(net, x, hand_names):
    assert structure(infer_units(net, x)) == structure(net.unit_layers())


def test_a_layer_norm_across_prunable_units_is_refused_naming_the_layer(nets):
    module, _ = nets
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"unit layer 'fc1' .*in 'norm' \(a LayerNorm\)"):
        declare_units(module.NormMLP(rngs=nnx.Rngs(0)), x)
    # declared by hand (norm scale and offset as members), the check refuses it: it really differs
    hand = [UnitLayer("fc1", 6, 3, members=(*dense("fc1"), ParamAxis(("norm", "scale"), 0),
                                            ParamAxis(("norm", "bias"), 0)), consumers=(dense("fc2", False),)),
            UnitLayer("fc2", 2, 6, members=dense("fc2"), prunable=False)]
    with pytest.raises(ValueError, match=r"unit layer 'fc1' of NormMLP does not commute with pruning.*differ"):
        declare_units(module.NormMLP(rngs=nnx.Rngs(0)), x, layers=hand)
    unchecked = declare_units(module.NormMLP(rngs=nnx.Rngs(0)), x, layers=hand, check=False)
    result, masked, _ = compact_and_masked(unchecked, {"fc1": np.array([1, 0, 1, 0, 1, 1], bool)}, x)
    assert np.max(np.abs(result - masked)) > 1e-2
    # kept whole, the same network is accepted
    kept = declare_units(module.NormMLP(rngs=nnx.Rngs(0)), x, not_prunable=("fc1",))
    assert [l.prunable for l in kept.unit_layers()] == [False, False]


def test_a_residual_add_of_different_unit_groupings_is_refused(nets):
    module, _ = nets
    with pytest.raises(ValueError, match=r"unit layer '(conv|fc)' .*laid out differently"):
        declare_units(module.MixedAdd(rngs=nnx.Rngs(0)), np.ones((2, 4, 4, 1), np.float32))


def test_a_hand_declaration_overrides_inference(nets):
    module, _ = nets
    x = np.ones((2, 3), np.float32)
    hand = [UnitLayer("all_hidden", 8, 11, members=(*dense("fc1"), *dense("fc2")),
                      consumers=(dense("fc2", False), dense("fc3", False)), prunable=False),
            UnitLayer("last", 5, 8, members=dense("fc3"), consumers=(dense("out", False),), inactive_output=0.5),
            UnitLayer("out", 2, 5, members=dense("out"), prunable=False)]
    net = declare_units(module.SkipMLP(3, 8, 2, rngs=nnx.Rngs(0)), x, layers=hand)
    assert [(l.name, l.prunable) for l in net.unit_layers()] == [("all_hidden", False), ("last", True), ("out", False)]
    assert net.config["inferred"] is False and net.config["units"] == {"all_hidden": 8, "last": 5, "out": 2}
    bnn = SparseBNN(net, get_prior("ss-ghs"), n_data=100)
    assert [l.name for l in bnn.indicated_layers] == ["last"]
    with pytest.raises(ValueError, match="not prunable"):
        compact(net, FunctionalNet(net).initial, {"all_hidden": np.arange(8) < 4})


def test_sparse_bnn_takes_a_plain_module_with_an_example_input(nets):
    module, _ = nets
    x = np.ones((2, 3), np.float32)
    bnn = SparseBNN(module.SkipMLP(3, 8, 2, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=100, example_input=x)
    assert [l.name for l in bnn.indicated_layers] == ["fc1", "fc3"]
    assert bnn.owner[("fc2", "bias")][0].name == "fc1"
    with pytest.raises(ValueError, match="example_input"):
        SparseBNN(module.SkipMLP(3, 8, 2, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=100)


def test_a_compact_custom_module_loads_in_a_fresh_process(nets, tmp_path):
    module, folder = nets
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    net = declare_units(module.SkipMLP(3, 8, 2, rngs=nnx.Rngs(0)), x)
    keep = {"fc1": np.array([1, 1, 0, 1, 0, 0, 1, 0], bool), "fc3": np.array([0, 1, 1, 0, 1], bool)}
    small, _ = compact(net, FunctionalNet(net).initial, keep)
    save_compact(tmp_path / "model", small)
    np.save(tmp_path / "x.npy", x)
    architecture = json.loads((tmp_path / "model" / "architecture.json").read_text())
    assert architecture["config"]["net"] == f"{MODULE}:SkipMLP"
    assert architecture["config"]["units"] == {"fc1": 4, "fc3": 3, "out": 2}
    code = (f"import json, numpy as np\nfrom sparse_bnn.compact.io import load_compact\n"
            f"net = load_compact({str(tmp_path / 'model')!r})\n"
            f"out = np.asarray(net(np.load({str(tmp_path / 'x.npy')!r})))\n"
            "print(json.dumps({'type': type(net).__name__, 'widths': [net.fc1.out_features, "
            "net.fc3.out_features], 'layers': [l.units for l in net.unit_layers()], 'out': out.tolist()}))")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["type"] == "SkipMLP" and loaded["widths"] == [4, 3] and loaded["layers"] == [4, 3, 2]
    np.testing.assert_allclose(loaded["out"], np.asarray(small(jnp.asarray(x))), atol=1e-6)
    # loaded here too, it is the same network
    np.testing.assert_allclose(np.asarray(load_compact(tmp_path / "model")(x)), loaded["out"], atol=1e-6)


@pytest.mark.parametrize("name, message", [("no_such_package_xyz.nets:Net", "cannot import module"),
                                           ("json:dumps", "not a Flax NNX module class"),
                                           ("os:system('true')", "not an import path"),
                                           ("__import__('os')", "unknown net")])
def test_loading_refuses_a_class_path_that_is_not_an_importable_module_class(nets, tmp_path, name, message):
    module, _ = nets
    x = np.ones((2, 3), np.float32)
    save_compact(tmp_path / "model", declare_units(module.SkipMLP(3, 8, 2, rngs=nnx.Rngs(0)), x, check=False))
    file = tmp_path / "model" / "architecture.json"
    architecture = json.loads(file.read_text())
    architecture["config"]["net"] = name
    file.write_text(json.dumps(architecture))
    with pytest.raises(InputError, match=message):
        load_compact(tmp_path / "model")

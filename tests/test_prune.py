"""Node pruning: the compact network must reproduce the masked dense network."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_bnn.nets import MLP, NETS, FunctionalNet, net_from_config
from sparse_bnn.compact.prune import compact, compact_samples
from sparse_bnn.compact.keep import kept_units, mask_params, threshold_keep
from sparse_bnn.compact.report import CompressionReport, compression_report, count_macs, count_params, jaxpr_macs


def random_params(net, seed: int, scale: float = 0.5) -> dict:
    """Random effective parameters (non-zero biases, so downstream biases matter)."""
    rng = np.random.default_rng(seed)
    return {path: jnp.asarray(scale * rng.standard_normal(np.shape(value)), dtype=value.dtype)
            for path, value in FunctionalNet(net).initial.items()}


def random_keep(net, seed: int, prune_all: str | None = None) -> dict:
    rng = np.random.default_rng(seed)
    keep = {}
    for layer in net.unit_layers():
        if not layer.prunable:
            continue
        keep[layer.name] = rng.random(layer.units) < rng.uniform(0.2, 0.8)
        if layer.name == prune_all:
            keep[layer.name][:] = False
    return keep


def relative_error(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def example_input_shape(net) -> tuple[int, ...]:
    config = net.config
    if hasattr(type(net), "example_input_shape"):
        return tuple(type(net).example_input_shape(config))
    if "in_features" in config:
        return (config["in_features"],)
    if "image_size" in config and "in_channels" in config:
        return (config["image_size"], config["image_size"], config["in_channels"])
    pytest.skip(f"no input shape known for {config['net']!r}; give the class example_input_shape")


def check_compact_matches_masked(net, params, keep, x):
    masked = FunctionalNet(net)(mask_params(net.unit_layers(), params, keep), x)
    small, small_params = compact(net, params, keep)
    assert relative_error(small(x), masked) < 1e-5
    assert relative_error(FunctionalNet(small)(small_params, x), masked) < 1e-5
    return small, small_params


# ----------------------------------------------------------------------------- MLP

@pytest.mark.parametrize("activation", ["silu", "sigmoid", "tanh"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_mlp_matches_masked(activation, seed):
    net = MLP(13, (17, 11, 9), 4, activation=activation, rngs=nnx.Rngs(seed))
    params = random_params(net, seed)
    keep = random_keep(net, seed)
    x = jax.random.normal(jax.random.key(100 + seed), (8, 13))
    small, _ = check_compact_matches_masked(net, params, keep, x)
    assert small.widths == tuple(int(keep[f"dense{i}"].sum()) for i in range(3))
    assert isinstance(small, MLP)


@pytest.mark.parametrize("activation", ["silu", "sigmoid"])
@pytest.mark.parametrize("all_pruned", ["dense0", "dense1", "dense2"])
def test_all_pruned_layer_keeps_downstream_biases(activation, all_pruned):
    net = MLP(10, (8, 7, 6), 3, activation=activation, rngs=nnx.Rngs(0))
    params = random_params(net, 3)
    keep = random_keep(net, 3, prune_all=all_pruned)
    x = jax.random.normal(jax.random.key(5), (6, 10))
    small, _ = check_compact_matches_masked(net, params, keep, x)
    # The placeholder unit keeps the layer buildable; the report counts 0 kept units.
    assert kept_units(net.unit_layers(), keep)[all_pruned] == 0
    assert small.widths[int(all_pruned[-1])] == 1
    # Downstream of an all-pruned layer the output no longer depends on the input.
    out = small(x)
    assert float(jnp.max(jnp.abs(out - out[:1]))) < 1e-6


def test_sigmoid_fold_by_hand():
    """One hidden sigmoid layer: removed unit j adds 0.5 * W2[j] to the output bias."""
    net = MLP(3, (4,), 2, activation="sigmoid", rngs=nnx.Rngs(0))
    params = random_params(net, 7)
    keep = {"dense0": np.array([True, False, True, False])}
    _, small = compact(net, params, keep)
    w2, b2 = params[("layers", 1, "kernel")], params[("layers", 1, "bias")]
    expected_bias = b2 + 0.5 * (w2[1] + w2[3])
    np.testing.assert_allclose(small[("layers", 1, "bias")], expected_bias, rtol=1e-6)
    np.testing.assert_allclose(small[("layers", 1, "kernel")], w2[np.array([0, 2])])
    np.testing.assert_allclose(small[("layers", 0, "kernel")],
                               params[("layers", 0, "kernel")][:, np.array([0, 2])])


def test_mask_params_zeroes_members_only():
    net = MLP(5, (6,), 2, rngs=nnx.Rngs(0))
    params = random_params(net, 0)
    keep = {"dense0": np.array([1, 0, 1, 1, 0, 1])}
    masked = mask_params(net.unit_layers(), params, keep)
    removed = np.array([1, 4])
    assert np.all(np.asarray(masked[("layers", 0, "kernel")])[:, removed] == 0)
    assert np.all(np.asarray(masked[("layers", 0, "bias")])[removed] == 0)
    np.testing.assert_array_equal(masked[("layers", 1, "kernel")], params[("layers", 1, "kernel")])
    np.testing.assert_array_equal(masked[("layers", 0, "kernel")][:, 0], params[("layers", 0, "kernel")][:, 0])


def test_compact_samples_vmap_bma():
    net = MLP(6, (9, 5), 3, activation="sigmoid", rngs=nnx.Rngs(0))
    samples = [random_params(net, s) for s in range(4)]
    stacked = {path: jnp.stack([s[path] for s in samples]) for path in samples[0]}
    keep = random_keep(net, 11)
    x = jax.random.normal(jax.random.key(0), (5, 6))
    small, small_samples = compact_samples(net, stacked, keep)
    assert all(v.shape[0] == 4 for v in small_samples.values())
    outputs = jax.vmap(FunctionalNet(small).apply, in_axes=(0, None))(small_samples, x)
    for s, params in enumerate(samples):
        masked = FunctionalNet(net)(mask_params(net.unit_layers(), params, keep), x)
        assert relative_error(outputs[s], masked) < 1e-5


# ----------------------------------------------------------------------------- every registered net

EXAMPLE_NETS = sorted(name for name, cls in NETS.items() if hasattr(cls, "example_config"))


@pytest.mark.parametrize("name", EXAMPLE_NETS)
def test_compact_registered_nets(name, seed=0):
    net = net_from_config(NETS[name].example_config(), seed=seed)
    params = random_params(net, seed, scale=0.3)
    x = jax.random.normal(jax.random.key(seed), (3, *example_input_shape(net)))
    check_compact_matches_masked(net, params, random_keep(net, seed), x)
    prunable = [layer.name for layer in net.unit_layers() if layer.prunable]
    for all_pruned in (prunable[0], prunable[-1]):
        check_compact_matches_masked(net, params, random_keep(net, seed + 1, prune_all=all_pruned), x)


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_value_error():
    net = MLP(5, (6, 4), 2, rngs=nnx.Rngs(0))
    params = random_params(net, 0)
    layers = net.unit_layers()
    with pytest.raises(ValueError, match=r"dense0.*shape \(5,\).*\(6,\)"):
        compact(net, params, {"dense0": np.ones(5, bool)})
    with pytest.raises(ValueError, match="unknown layers.*conv7"):
        mask_params(layers, params, {"conv7": np.ones(6, bool)})
    with pytest.raises(ValueError, match="not prunable"):
        compact(net, params, {"dense2": np.array([True, False])})
    with pytest.raises(ValueError, match="booleans or 0/1"):
        compact(net, params, {"dense0": np.full(6, 0.7)})
    wrong_shape = {**params, ("layers", 1, "kernel"): jnp.zeros((6, 5))}
    with pytest.raises(ValueError, match=r"layers\.1\.kernel.*\(6, 5\)"):
        compact(net, wrong_shape, {})
    with pytest.raises(ValueError, match=r"layers\.1\.kernel.*\(6, 5\)"):
        mask_params(layers, wrong_shape, {})
    extra = {**params, ("layers", 9, "kernel"): jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"layers\.9\.kernel"):
        compact(net, extra, {})
    missing = {k: v for k, v in params.items() if k != ("layers", 0, "bias")}
    with pytest.raises(ValueError, match=r"lack.*layers\.0\.bias"):
        compact(net, missing, {})
    with pytest.raises(ValueError, match=r"layers\.0\.bias.*\[S, 6\]"):
        compact_samples(net, {k: jnp.stack([v, v]) for k, v in missing.items()}
                        | {("layers", 0, "bias"): jnp.zeros(6)}, {})


def test_threshold_keep():
    keep = threshold_keep({"dense0": [0.1, 0.5, 0.51, 0.99]})
    np.testing.assert_array_equal(keep["dense0"], [False, False, True, True])
    np.testing.assert_array_equal(threshold_keep({"a": [0.1, 0.3]}, 0.2)["a"], [False, True])
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            threshold_keep({"dense0": [0.3]}, bad)
    with pytest.raises(ValueError, match="dense0.*\\[0, 1\\]"):
        threshold_keep({"dense0": [1.3]})


def test_conv_consumer_with_nonzero_inactive_output_is_refused():
    """A conv consumer cannot take the fold: check the error names the layer and the reason."""
    from sparse_bnn.nets.base import ParamAxis, UnitLayer

    class SigmoidConvPair(nnx.Module):
        def __init__(self, channels=(4, 3), *, rngs):
            self.conv0 = nnx.Conv(2, channels[0], (3, 3), rngs=rngs)
            self.conv1 = nnx.Conv(channels[0], channels[1], (3, 3), rngs=rngs)
            self.channels = tuple(channels)

        def __call__(self, x):
            return self.conv1(nnx.sigmoid(self.conv0(x))).mean(axis=(1, 2))

        def unit_layers(self):
            return (UnitLayer("conv0", self.channels[0], 18,
                              (ParamAxis(("conv0", "kernel"), 3), ParamAxis(("conv0", "bias"), 0)),
                              (ParamAxis(("conv1", "kernel"), 2),), inactive_output=0.5),
                    UnitLayer("conv1", self.channels[1], 36,
                              (ParamAxis(("conv1", "kernel"), 3), ParamAxis(("conv1", "bias"), 0)),
                              prunable=False))

        @property
        def config(self):
            return {"net": "sigmoid-conv-pair", "channels": list(self.channels)}

        @classmethod
        def config_with_units(cls, config, units):
            return {**config, "channels": [units.get("conv0", config["channels"][0]), config["channels"][1]]}

    net = SigmoidConvPair(rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="conv0.*padding"):
        compact(net, FunctionalNet(net).initial, {"conv0": np.array([1, 0, 1, 1], bool)})


# ----------------------------------------------------------------------------- report

def test_mac_and_param_counts_by_hand():
    net = MLP(784, (400, 400), 10, rngs=nnx.Rngs(0))
    assert count_params(net) == 784 * 400 + 400 + 400 * 400 + 400 + 400 * 10 + 10 == 478_410
    assert count_macs(net, (784,)) == 784 * 400 + 400 * 400 + 400 * 10 == 477_600
    assert count_macs(net, (28, 28)) == 477_600


def test_conv_macs_by_hand():
    conv = nnx.Conv(4, 6, (3, 3), padding="VALID", feature_group_count=2, rngs=nnx.Rngs(0))
    # output 8x8x6 elements, each 3*3 taps x 2 input channels per group
    assert count_macs(conv, (10, 10, 4)) == 8 * 8 * 6 * 3 * 3 * 2


def test_jaxpr_macs_recurses_into_scan_and_jit():
    w = jnp.ones((5, 7))

    def f(x):
        def body(carry, _):
            return carry, jax.jit(lambda a: a @ w)(carry)
        return jax.lax.scan(body, x, None, length=3)[1]

    assert jaxpr_macs(jax.make_jaxpr(f)(jnp.ones((2, 5)))) == 3 * 2 * 5 * 7


def test_compression_report_mlp_and_json_round_trip():
    net = MLP(784, (400, 400), 10, rngs=nnx.Rngs(0))
    keep = {"dense0": np.arange(400) < 200, "dense1": np.arange(400) < 40}
    small, _ = compact(net, FunctionalNet(net).initial, keep)
    report = compression_report(net, small, keep, (784,), batch_sizes=(1, 8), repeats=2, warmup=1)
    assert [(l.kept, l.total) for l in report.layers] == [(200, 400), (40, 400), (10, 10)]
    assert report.flops_dense == 2 * 477_600
    assert report.flops_compact == 2 * (784 * 200 + 200 * 40 + 40 * 10)
    assert report.params_compact == 784 * 200 + 200 + 200 * 40 + 40 + 40 * 10 + 10
    assert report.density == pytest.approx(report.params_compact / 478_410)
    assert report.unit_density == pytest.approx(240 / 800)
    assert [row.batch_size for row in report.latency] == [1, 8]
    assert all(row.dense_s > 0 and row.compact_s > 0 for row in report.latency)
    again = CompressionReport.from_json(report.to_json())
    assert again == report
    assert json.loads(report.to_json())["flop_ratio"] == pytest.approx(report.flop_ratio)
    table = report.table()
    assert "dense1" in table and "955,200" in table and "latency @ batch 8" in table
    with pytest.raises(ValueError, match="params_dense"):
        CompressionReport.from_dict({k: v for k, v in report.to_dict().items() if k != "params_dense"})

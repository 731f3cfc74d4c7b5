"""benchmarks/frontier.py's deterministic group-lasso baseline: its proximal step and its labels."""
from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_bnn.nets import MLP, FunctionalNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import frontier  # noqa: E402


def test_the_proximal_step_scales_each_node_group_and_zeroes_the_weak_ones():
    net = MLP(5, (4, 3), 2, rngs=nnx.Rngs(0))
    layers = [layer for layer in net.unit_layers() if layer.prunable]
    params = {path: np.array(value) for path, value in FunctionalNet(net).initial.items()}
    kernel_path = next(m.path for m in layers[0].members if np.ndim(params[m.path]) == 2)
    bias_path = next(m.path for m in layers[0].members if np.ndim(params[m.path]) == 1)
    params[kernel_path][:, 2] *= 1e-3  # unit 2 of the first layer: a weak group
    params[bias_path][2] = 0.0
    threshold = 0.05
    shrunk = frontier.group_soft_threshold(layers, {k: jnp.asarray(v) for k, v in params.items()}, threshold)

    kernel, bias = params[kernel_path], params[bias_path]
    for unit in range(4):
        group = np.concatenate([kernel[:, unit], [bias[unit]]])
        factor = max(0.0, 1.0 - threshold * np.sqrt(group.size) / np.linalg.norm(group))
        np.testing.assert_allclose(np.asarray(shrunk[kernel_path])[:, unit], factor * kernel[:, unit], rtol=1e-5)
        np.testing.assert_allclose(np.asarray(shrunk[bias_path])[unit], factor * bias[unit], rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(shrunk[kernel_path])[:, 2] == 0.0)
    norms = frontier.group_norms(layers, shrunk)
    assert [bool(v) for v in np.asarray(norms[layers[0].name]) > 0] == [True, True, False, True]
    output_path = next(p for p in params if p not in {m.path for layer in layers for m in layer.members})
    np.testing.assert_array_equal(np.asarray(shrunk[output_path]), params[output_path])  # no group there


@pytest.mark.parametrize("method,setting,expected", [
    ("ss-ghs", {"sigma0": 0.3}, "ss-ghs sigma0=0.3"),
    ("ss-gl", {"sigma0": 0.3, "kl_weight": 0.3}, "ss-gl sigma0=0.3 beta=0.3 (tempered)"),
    ("ss-ghs", {"kl_weight": 1.0}, "ss-ghs beta=1.0")])
def test_a_tempered_point_says_so(method, setting, expected):
    assert frontier.label(method, setting) == expected


def test_transformers_take_their_own_grid_and_sizes():
    vit = frontier.parse_args(["--net", "vit", "--net-size", "small"])
    assert vit.methods == list(frontier.TRANSFORMER_GRID) and vit.net_size == "small"
    assert frontier.parse_args(["--net", "mlp"]).methods == list(frontier.GRID)
    with pytest.raises(SystemExit):
        frontier.parse_args(["--net", "mlp", "--net-size", "tiny"])

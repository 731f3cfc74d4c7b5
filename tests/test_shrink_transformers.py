"""Shrinking while training on the Vision Transformer and the MLP-Mixer: attention heads and the
hidden units of the token- and channel-mixing MLPs are removed for good and the network is rebuilt
with fewer of them (heads may differ per block), by the spike-and-slab rule and by node-wise BMR.

Checked as for the MLP: the rebuilt network is the masked one (compact == masked), every
surviving unit maps to an original one, and a run resumed from a checkpoint taken after a rebuild
ends exactly like the uninterrupted run."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from sparse_bnn.compact.keep import mask_params
from sparse_bnn.compact.prune import compact
from sparse_bnn.core import posterior
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets import FunctionalNet, net_from_config
from sparse_bnn.priors import get_prior
from sparse_bnn.sparsify.reduction import NodeBMRRule
from sparse_bnn.sparsify.shrink import ShrinkSchedule, fit_shrinking
from sparse_bnn.train import svi_optimizer
from test_hooks_matrix import zero_incoming_weights

N_DATA, BATCH = 128, 32
CONFIGS = {
    "vit": {"net": "vit", "image_size": 8, "in_channels": 3, "num_classes": 2, "patch_size": 4,
            "embed_dim": 16, "depth": 2, "num_heads": [4, 4], "head_dim": 4, "mlp_hidden": [16, 16]},
    "mixer": {"net": "mixer", "image_size": 8, "in_channels": 3, "num_classes": 2, "patch_size": 2,
              "embed_dim": 8, "depth": 2, "token_hidden": [12, 12], "channel_hidden": [16, 16]},
}
SCHEDULE = ShrinkSchedule(warmup_epochs=1, threshold=0.05, patience=1, bucket=2, shrink_factor=1.0)


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_DATA, 8, 8, 3)).astype(np.float32)
    return x, (x[:, :4, :, 0].mean(axis=(1, 2)) > 0).astype(np.int32)


def idle_pattern(index: int, units: int) -> np.ndarray:
    """The units of the ``index``-th prunable layer to make idle: a different number per layer."""
    return np.arange(units) % (index + 2) == 1


def idle_units_start(bnn: SparseBNN) -> dict:
    """Initial parameters with some units of every prunable layer idle: for a spike-and-slab
    model their inclusion logits start at -8 (the gamma rule removes them after the warm-up); for
    a flat model their incoming weights are confidently zero (node-wise BMR removes them)."""
    params = {k: np.asarray(v).copy() for k, v in bnn.init_params().items()}
    for i, layer in enumerate(l for l in bnn.layers if l.prunable):
        idle = idle_pattern(i, layer.units)
        if f"{layer.name}.z.logit" in params:
            params[f"{layer.name}.z.logit"][idle] = -8.0
        else:
            zero_incoming_weights(bnn, params, layer, idle)
    return {k: jnp.asarray(v) for k, v in params.items()}


def run(net: str, rule: str, epochs: int, **kwargs):
    config = CONFIGS[net]
    x, y = make_data()
    if rule == "gamma":
        bnn = SparseBNN(net_from_config(config), get_prior("ss-ghs"), n_data=N_DATA, rho_init=-3.0)
        options = dict(optimizer=svi_optimizer(1e-3, 1e-2), init_params=idle_units_start(bnn))
    else:
        bnn = SparseBNN(net_from_config(config), get_prior("flat"), n_data=N_DATA, rho_init=-3.0)
        options = dict(optimizer=svi_optimizer(1e-3), init_params=idle_units_start(bnn),
                       rule=NodeBMRRule(1, max_prune_fraction=0.5))
    return fit_shrinking(bnn, x, y, epochs=epochs, batch_size=BATCH, shrink=SCHEDULE, progress=False,
                         **options, **kwargs)


def relative_error(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("rule", ["gamma", "bmr"])
@pytest.mark.parametrize("net", ["vit", "mixer"])
def test_transformers_shrink_while_training_and_compact_to_the_masked_network(net, rule):
    result = run(net, rule, epochs=3)
    history = result.history
    assert any(r["compiled"] for r in history)
    original = {layer.name: layer.units for layer in net_from_config(CONFIGS[net]).unit_layers() if layer.prunable}
    final = {layer.name: layer.units for layer in result.bnn.layers if layer.prunable}
    assert final.keys() == original.keys()
    assert sum(final.values()) < sum(original.values())
    idle = {layer.name: set(np.flatnonzero(idle_pattern(i, layer.units)).tolist())
            for i, layer in enumerate(l for l in net_from_config(CONFIGS[net]).unit_layers() if l.prunable)}
    for name, width in final.items():
        origin = result.unit_origin[name]
        assert origin.shape == (width,) and np.all(np.diff(origin) > 0) and origin.max() < original[name]
        gone = {u for event in result.removed if event["layer"] == name for u in event["units"]}
        alive = np.asarray(result.state.masks.units[name]) > 0.5
        assert {int(o) for o in origin[alive]} == set(range(original[name])) - gone
        assert gone == idle[name], name  # exactly the idle units go, so head counts differ per block
    # the rebuilt network is again the architecture, with its new widths in its config
    config = result.bnn.net.config
    if net == "vit":
        assert config["num_heads"] == [final["block0_heads"], final["block1_heads"]]
        assert config["mlp_hidden"] == [final["block0_mlp"], final["block1_mlp"]]
    else:
        assert config["token_hidden"] == [final["block0_token"], final["block1_token"]]
        assert config["channel_hidden"] == [final["block0_channel"], final["block1_channel"]]

    # compact == masked: the posterior-mean network with its switched-off units masked
    masks = result.state.masks
    keep = posterior.keep_masks(result.bnn, result.params, 0.5, masks)
    assert any(not k.all() for k in keep.values()) or any(not np.all(np.asarray(m) > 0.5) for m in masks.units.values())
    mean, _ = posterior.posterior_mean_params(result.bnn, result.params, 0.5, masks)
    x, _ = make_data()
    net_now = result.bnn.net
    masked = FunctionalNet(net_now)(mask_params(net_now.unit_layers(), mean, keep), jnp.asarray(x[:16]))
    small, small_params = compact(net_now, mean, keep)
    assert relative_error(FunctionalNet(small)(small_params, jnp.asarray(x[:16])), masked) < 1e-5


@pytest.mark.parametrize("net, rule", [("vit", "gamma"), ("mixer", "bmr")])
def test_a_shrunk_transformer_resumed_mid_way_ends_like_an_uninterrupted_one(net, rule, tmp_path):
    full = run(net, rule, epochs=4)
    first = run(net, rule, epochs=3, checkpoint_dir=tmp_path, checkpoint_interval=float("inf"))
    assert any(r["compiled"] for r in first.history)
    resumed = run(net, rule, epochs=4, checkpoint_dir=tmp_path, resume=True)
    assert [(r["loss"], r["widths"], r["removed"]) for r in resumed.history] == \
           [(r["loss"], r["widths"], r["removed"]) for r in full.history]
    for name in full.params:
        np.testing.assert_array_equal(resumed.params[name], full.params[name], err_msg=name)

"""Shrinking while training: slicing carries the model over exactly; the run removes and shrinks.

How the loss is compared across widths. The guide draws one noise array per site, with the
site's shape, so the two networks' default draws are unrelated. :class:`fixed_noise` makes the
guide use given standard noise instead (``loc + scale * eps`` for normal and log-normal sites,
the Concrete formula with a given uniform ``u`` for indicators): the small network gets the
full-size noise sliced to its units, so both networks evaluate the *same* joint sample of every
surviving variable, and the ELBO terms are compared exactly (to float32 rounding).

The masked network still carries the *orphaned* variables that shrinking drops (the removed
units' rows in the consumers, released to the prior on removal, and their per-unit scales;
``analytic_kl`` does not mask those), so ``loss_masked - loss_small`` must equal their KL,
computed here independently from ``kl.py``'s closed forms; the likelihood terms must be equal.
"""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from flax import nnx
from numpyro.primitives import Messenger

from sparse_bnn.core.elbo import elbo_terms
from sparse_bnn.train import init_state, svi_optimizer
from sparse_bnn.core.guide import ConcreteBernoulli, softplus
from sparse_bnn.core.kl import kl_lognormal_gamma, kl_lognormal_invgamma, kl_normal
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.nets import MLP, NETS, net_from_config
from sparse_bnn.nets.base import unit_broadcast
from sparse_bnn.priors import get_prior
from sparse_bnn.sparsify.shrink import ShrinkSchedule, fit_shrinking, removal_threshold
from sparse_bnn.sparsify.slicing import (bucketed_width, release_units, shrunk_model, site_unit_axes, slice_masks,
                                         slice_opt_state, slice_sites, slice_variational)


class fixed_noise(Messenger):
    """Guide handler: every latent site takes its value from the given standard noise."""

    def __init__(self, fn, noise):
        self.noise = noise
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or msg["name"] not in self.noise:
            return
        fn, eps = msg["fn"], self.noise[msg["name"]]
        while isinstance(fn, dist.Independent):
            fn = fn.base_dist
        if isinstance(fn, ConcreteBernoulli):
            soft = jax.nn.sigmoid((fn.logits + jnp.log(eps) - jnp.log1p(-eps)) / fn.temperature)
            value = soft + jax.lax.stop_gradient((soft > 0.5).astype(soft.dtype) - soft) if fn.hard else soft
        elif isinstance(fn, dist.LogNormal):
            value = jnp.exp(fn.loc + fn.scale * eps)
        elif isinstance(fn, dist.Normal):
            value = fn.loc + fn.scale * eps
        else:
            raise TypeError(f"no fixed-noise rule for {type(fn).__name__} at {msg['name']}")
        msg["value"] = value


def full_noise(bnn, key):
    """``{site: standard noise}`` for every latent site of the guide (uniforms for indicators)."""
    from numpyro.handlers import seed, substitute, trace
    guide_trace = trace(substitute(seed(bnn.guide, 0), data=bnn.init_params())).get_trace()
    noise = {}
    for name, site in guide_trace.items():
        if site["type"] != "sample":
            continue
        key, sub = jax.random.split(key)
        shape = jnp.shape(site["value"])
        noise[name] = (jax.random.uniform(sub, shape, minval=1e-6, maxval=1 - 1e-6)
                       if name.endswith(".z") else jax.random.normal(sub, shape))
    return noise


def loss_terms(bnn, params, noise, x, y, masks):
    """``(nll, kl)`` per data point with the guide's noise fixed (jit-compiled)."""
    return _loss_terms(bnn, params, noise, x, y, masks)


@functools.partial(jax.jit, static_argnums=0)
def _loss_terms(bnn, params, noise, x, y, masks):
    terms = elbo_terms(jax.random.PRNGKey(0), params, bnn.model, fixed_noise(bnn.guide, noise),
                       bnn.kl, x, y, masks=masks)
    return -terms.log_likelihood / bnn.n_data, terms.kl / bnn.n_data


def randomised_params(bnn, key):
    """Initial params moved off their initialisation so that every slicing mistake shows."""
    params = bnn.init_params()
    keys = jax.random.split(key, len(params))
    out = {}
    for k, (name, value) in zip(keys, params.items()):
        if name.endswith(".rho"):
            out[name] = jax.random.uniform(k, value.shape, minval=-4.0, maxval=-1.0)
        elif name.endswith(".z.logit"):
            out[name] = jax.random.uniform(k, value.shape, minval=-3.0, maxval=4.0)
        else:
            out[name] = value + 0.3 * jax.random.normal(k, value.shape)
    return out


def orphan_kl(bnn, params, keep, unit_masks):
    """KL the masked network carries for variables that the small network no longer has:
    the physically removed units' consumer rows (gated by their owner's gate, as in the KL) and
    their per-unit SS-GHS scales ``s2_a ~ Gamma(1/2, rate 1/A)``, ``s2_b ~ InvGamma(1/2, 1)``."""
    prior = bnn.prior
    gates = {}
    for layer in bnn.layers:
        gate = jnp.ones((layer.units,))
        if bnn.samples_indicator(layer):
            gate = jax.nn.sigmoid(params[f"{layer.name}.z.logit"]) * unit_masks[layer.name]
        gates[layer.name] = gate
    total = 0.0
    for layer in bnn.layers:
        if layer.name not in keep:
            continue
        gone = np.flatnonzero(~keep[layer.name])
        for ref in layer.consumers:
            site = bnn.weight_site(ref.path)
            kl = kl_normal(params[f"{site}.loc"], softplus(params[f"{site}.rho"]), prior.sigma_0**2)
            if ref.path in bnn.owner:  # a free consumer (a ViT's output projection) is not gated
                owner, axis = bnn.owner[ref.path]
                kl = kl * unit_broadcast(gates[owner.name], kl.ndim, axis)
            rows = (np.arange(ref.interleave)[:, None] * layer.units + gone[None, :]).reshape(-1)
            total += jnp.sum(jnp.take(kl, rows, axis=ref.axis))
        a_loc, a_scale = params[f"{layer.name}.s2_a.loc"][gone], softplus(params[f"{layer.name}.s2_a.rho"][gone])
        b_loc, b_scale = params[f"{layer.name}.s2_b.loc"][gone], softplus(params[f"{layer.name}.s2_b.rho"][gone])
        rate = 1.0 / prior.local_scale2
        total += jnp.sum(kl_lognormal_gamma(a_loc, a_scale, 0.5, jnp.log(rate), rate))
        total += jnp.sum(kl_lognormal_invgamma(b_loc, b_scale, 0.5, 1.0))
    return total


def mlp_bnn(widths=(12, 10), n_data=64):
    return SparseBNN(MLP(6, widths, 3, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=n_data)


def removal_setup(bnn, removed, padding):
    """Unit masks with ``removed`` units off, and the keep masks (alive + padding)."""
    unit_masks, keep = {}, {}
    for layer in bnn.indicated_layers:
        mask = np.ones(layer.units, np.float32)
        mask[removed.get(layer.name, [])] = 0.0
        unit_masks[layer.name] = jnp.asarray(mask)
        kept = mask > 0.5
        kept[padding.get(layer.name, [])] = True
        keep[layer.name] = kept
    return unit_masks, keep


def check_same_model(bnn, removed, padding, x, y, seed=0):
    key_params, key_noise = jax.random.split(jax.random.PRNGKey(seed))
    unit_masks, keep = removal_setup(bnn, removed, padding)
    removed_masks = {name: np.asarray(mask) < 0.5 for name, mask in unit_masks.items()}
    params, _ = release_units(bnn, randomised_params(bnn, key_params), (), removed_masks)
    small = shrunk_model(bnn, keep)
    small_params = slice_variational(bnn, params, keep)
    assert set(small_params) == set(small.init_params())
    for name, value in small.init_params().items():
        assert small_params[name].shape == value.shape, name
    noise = full_noise(bnn, key_noise)
    small_noise = slice_sites(bnn, noise, keep)
    small_masks = Masks({k: v[keep[k]] for k, v in unit_masks.items()})

    nll_big, kl_big = loss_terms(bnn, params, noise, x, y, Masks(unit_masks))
    nll_small, kl_small = loss_terms(small, small_params, small_noise, x, y, small_masks)
    orphan = orphan_kl(bnn, params, keep, unit_masks) / bnn.n_data
    assert orphan > 0  # the comparison below would not see a missing correction otherwise
    np.testing.assert_allclose(nll_small, nll_big, rtol=1e-5)
    np.testing.assert_allclose(kl_small, kl_big - orphan, rtol=1e-5)
    np.testing.assert_allclose(nll_small + kl_small, nll_big + kl_big - orphan, rtol=1e-5)
    return params, unit_masks, keep, removed_masks, small, small_params, noise, small_noise, small_masks


def test_shrinking_keeps_the_loss_mlp():
    bnn = mlp_bnn()
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 6))
    y = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 3)
    check_same_model(bnn, removed={"dense0": [1, 4, 7, 11], "dense1": [0, 5]},
                     padding={"dense0": [4]}, x=x, y=y)


@pytest.mark.parametrize("name", [n for n in ("lenet5-caffe", "lenet5", "vit", "mixer") if n in NETS])
def test_shrinking_keeps_the_loss_image_nets(name):
    config = NETS[name].example_config()
    bnn = SparseBNN(net_from_config(config), get_prior("ss-ghs"), n_data=32)
    size, channels = config["image_size"], config["in_channels"]
    x = jax.random.normal(jax.random.PRNGKey(1), (4, size, size, channels))
    y = jax.random.randint(jax.random.PRNGKey(2), (4,), 0, config["num_classes"])
    layers = [l.name for l in bnn.indicated_layers]
    removed = {layers[0]: [1], layers[1]: [0, 2], layers[-1]: [3]}
    check_same_model(bnn, removed, padding={layers[1]: [2]}, x=x, y=y)


@pytest.mark.skipif("lenet5" not in NETS, reason="LeNet-5 not registered")
def test_interleaved_consumer_rows_follow_their_channel():
    config = NETS["lenet5"].example_config()  # 2x2 map after the last conv: interleave 4
    bnn = SparseBNN(net_from_config(config), get_prior("ss-ghs"), n_data=32)
    last_conv = [l for l in bnn.layers if l.name.startswith("conv")][-1]
    ref = last_conv.consumers[0]
    assert ref.interleave > 1
    site = bnn.weight_site(ref.path)
    rows = np.arange(bnn.shapes[ref.path][0], dtype=np.float32)
    keep = {last_conv.name: np.array([True, False, True, True, False])}
    sliced = slice_sites(bnn, {site: np.tile(rows[:, None], (1, 2))}, keep)[site][:, 0]
    units = last_conv.units
    expected = [p * units + c for p in range(ref.interleave) for c in (0, 2, 3)]
    np.testing.assert_array_equal(sliced, expected)
    assert sorted(site_unit_axes(bnn)[site]) == sorted([(last_conv.name, ref.axis, ref.interleave),
                                                        ("dense0", 1, 1)])


@pytest.mark.parametrize("optimizer", ["adam", "multi"])
def test_one_adam_step_after_shrinking_equals_the_masked_step(optimizer):
    bnn = mlp_bnn()
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 6))
    y = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 3)
    params, unit_masks, keep, removed_masks, small, small_params, noise, small_noise, small_masks = check_same_model(
        bnn, removed={"dense0": [2, 3, 9], "dense1": [7]}, padding={"dense1": [7]}, x=x, y=y, seed=3)
    opt = optax.adam(1e-2) if optimizer == "adam" else svi_optimizer(1e-2, 5e-2)
    opt_state = opt.init(params)
    for i in range(3):  # non-trivial moments and count
        grads = jax.tree_util.tree_map(
            lambda p: jax.random.normal(jax.random.PRNGKey(10 + i), p.shape), params)
        _, opt_state = opt.update(grads, opt_state, params)
    params, opt_state = release_units(bnn, params, opt_state, removed_masks)
    small_opt_state = slice_opt_state(bnn, opt_state, params, keep)

    @functools.partial(jax.jit, static_argnums=0)
    def step(model, p, state, eps, masks):
        grads = jax.grad(lambda q: sum(loss_terms(model, q, eps, x, y, masks)))(p)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    big_after, big_state = step(bnn, params, opt_state, noise, Masks(unit_masks))
    small_after, small_state = step(small, small_params, small_opt_state, small_noise, small_masks)
    expected = slice_variational(bnn, big_after, keep)
    moved = 0
    for name in small_after:
        np.testing.assert_allclose(small_after[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
        moved += int(np.any(np.asarray(small_after[name]) != np.asarray(small_params[name])))
    assert moved == len(small_after)
    expected_state = slice_opt_state(bnn, big_state, big_after, keep)
    for got, want in zip(jax.tree_util.tree_leaves(small_state), jax.tree_util.tree_leaves(expected_state)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_removing_and_slicing_compile_nothing(compilations):
    """The host-side bookkeeping of a shrink (release, slicing) runs in NumPy: eager device ops
    would compile once per new shape, at every removal and every rebuild (~1 s per rebuild of the
    Fashion-MNIST MLP). Widths no other test uses, so a compile could not hide in JAX's cache."""
    net = MLP(7, (29, 23), 3, rngs=nnx.Rngs(0))
    bnn = SparseBNN(net, get_prior("ss-ghs"), n_data=50)
    masks = Masks({"dense0": jnp.ones(29), "dense1": jnp.ones(23)})
    state = init_state(bnn, svi_optimizer(1e-2, 5e-2), masks=masks)
    removed = {"dense0": np.isin(np.arange(29), [1, 4, 20]), "dense1": np.isin(np.arange(23), [0, 5])}
    keep = {"dense0": ~removed["dense0"], "dense1": ~removed["dense1"]}
    with compilations() as compiled:
        params, opt_state = release_units(bnn, state.params, state.opt_state, removed)
        small_params = slice_variational(bnn, params, keep)
        small_opt_state = slice_opt_state(bnn, opt_state, params, keep)
        small_masks = slice_masks(bnn, masks, keep)
    assert compiled == []
    assert small_params["layers.0.kernel.loc"].shape == (7, 26)
    assert small_params["layers.1.kernel.loc"].shape == (26, 21)
    assert small_masks.units["dense0"].shape == (26,)
    for leaf in jax.tree_util.tree_leaves((small_params, small_opt_state, small_masks)):
        assert isinstance(leaf, jax.Array)
    # the released rows are at the prior in the full arrays, and sliced away in the small ones
    rho_prior = np.log(np.expm1(bnn.prior.sigma_0))
    np.testing.assert_allclose(np.asarray(params["layers.1.kernel.rho"])[[1, 4, 20]], rho_prior, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(params["layers.1.kernel.loc"])[[1, 4, 20]], 0.0)
    np.testing.assert_array_equal(np.asarray(small_params["layers.0.kernel.loc"]),
                                  np.asarray(state.params["layers.0.kernel.loc"])[:, keep["dense0"]])


def test_slice_variational_rejects_bad_keep():
    bnn = mlp_bnn()
    params = bnn.init_params()
    with pytest.raises(ValueError, match="shape"):
        slice_variational(bnn, params, {"dense0": np.ones(5, bool)})
    with pytest.raises(ValueError, match="unknown layers"):
        slice_variational(bnn, params, {"dense7": np.ones(12, bool)})
    with pytest.raises(ValueError, match="every unit"):
        shrunk_model(bnn, {"dense0": np.zeros(12, bool)})


def test_schedule_and_model_checks():
    with pytest.raises(ValueError, match="min_units"):
        ShrinkSchedule(min_units=0).validate()
    with pytest.raises(ValueError, match="threshold"):
        ShrinkSchedule(threshold=0.7).validate()
    ShrinkSchedule(threshold=None).validate()
    assert bucketed_width(17, 100, 16) == 32 and bucketed_width(100, 100, 16) == 100
    assert bucketed_width(0, 100, 16) == 16
    x = np.zeros((8, 6), np.float32)
    y = np.zeros(8, np.int32)
    gaussian = SparseBNN(MLP(6, (4,), 3, rngs=nnx.Rngs(0)), get_prior("gaussian"), n_data=8)
    with pytest.raises(ValueError, match="indicators"):
        fit_shrinking(gaussian, x, y, epochs=1, progress=False)
    sigmoid = SparseBNN(MLP(6, (4,), 3, activation="sigmoid", rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=8)
    with pytest.raises(ValueError, match="activation"):
        fit_shrinking(sigmoid, x, y, epochs=1, progress=False)


def test_default_threshold_lies_above_the_prior_inclusion():
    """A unit at gamma = lambda_l (where the Bernoulli KL alone puts it) must count as off."""
    bnn = SparseBNN(MLP(784, (400, 400), 10, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=60_000)
    for name in ("dense0", "dense1"):
        lam = float(bnn.inclusion[name])
        assert 1e-3 < lam < 5e-3  # a fixed 1e-3 would never see these units as off
        assert removal_threshold(bnn, name, ShrinkSchedule()) == 0.05
        assert removal_threshold(bnn, name, ShrinkSchedule(threshold=1e-3)) == 1e-3
    for inclusion, expected in ((0.04, 0.08), (0.3, 0.25)):
        bnn = SparseBNN(MLP(6, (4,), 3, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=8, inclusion=inclusion)
        assert removal_threshold(bnn, "dense0", ShrinkSchedule()) == pytest.approx(expected)


def test_fit_shrinking_removes_and_shrinks(tmp_path):
    """A short run where units must go: tiny prior inclusion, fast indicator learning rate."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    bnn = SparseBNN(MLP(6, (40, 24), 2, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=256,
                    inclusion=1e-4)
    schedule = ShrinkSchedule(warmup_epochs=2, threshold=0.05, patience=2, bucket=8)
    result = fit_shrinking(bnn, x, y, epochs=12, batch_size=64, shrink=schedule, progress=False,
                           optimizer=svi_optimizer(1e-3, 0.3), checkpoint_dir=tmp_path)
    history = result.history
    assert [r["epoch"] for r in history] == list(range(1, 13))
    removed_total = {name: sum(len(r["removed"].get(name, [])) for r in history) for name in ("dense0", "dense1")}
    assert sum(removed_total.values()) > 0
    assert all(not r["removed"] for r in history[:schedule.warmup_epochs + schedule.patience - 1])
    final = history[-1]
    for name, original in (("dense0", 40), ("dense1", 24)):
        alive = original - removed_total[name]
        assert final["alive"][name] == alive >= schedule.min_units
        width = final["widths"][name]
        assert bucketed_width(alive, original, schedule.bucket) <= width <= original
        assert width == original or width % schedule.bucket == 0
        assert [l.units for l in result.bnn.layers if l.name == name] == [final["widths"][name]]
        origin = result.unit_origin[name]
        assert origin.shape == (final["widths"][name],) and np.all(np.diff(origin) > 0)
        gone = {u for event in result.removed if event["layer"] == name for u in event["units"]}
        mask = np.asarray(result.state.masks.units[name])
        # alive units are exactly the original ones never removed; padding is removed ones
        assert {int(o) for o, m in zip(origin, mask) if m > 0.5} == set(range(original)) - gone
        assert {int(o) for o, m in zip(origin, mask) if m < 0.5} <= gone
    shrinks = sum(r["compiled"] for r in history)
    assert shrinks >= 1 and result.compilations == 1 + shrinks
    assert set(result.params) == set(result.bnn.init_params())
    # resume from the checkpoint of the finished run: nothing left to do, same widths rebuilt
    resumed = fit_shrinking(bnn, x, y, epochs=12, batch_size=64, shrink=schedule, progress=False,
                            optimizer=svi_optimizer(1e-3, 0.3), checkpoint_dir=tmp_path,
                            resume=True)
    assert [l.units for l in resumed.bnn.layers] == [l.units for l in result.bnn.layers]
    for name in result.params:
        np.testing.assert_array_equal(resumed.params[name], result.params[name])


def test_a_shrinking_run_resumed_mid_way_ends_like_an_uninterrupted_one(tmp_path):
    """The only checkpoint is written after epoch 9 (``checkpoint_interval=inf``), after the
    network has shrunk (epoch 8): resuming rebuilds its widths and tracker, and epochs 10-13
    repeat the uninterrupted run exactly."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    schedule = ShrinkSchedule(warmup_epochs=2, threshold=0.05, patience=2, bucket=8)

    def run(epochs, **kwargs):
        bnn = SparseBNN(MLP(6, (40, 24), 2, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=256, inclusion=1e-4)
        return fit_shrinking(bnn, x, y, epochs=epochs, batch_size=64, shrink=schedule, progress=False,
                             optimizer=svi_optimizer(1e-3, 0.3), **kwargs)

    full = run(13)
    first = run(9, checkpoint_dir=tmp_path, checkpoint_interval=float("inf"))
    assert any(r["compiled"] for r in first.history)
    resumed = run(13, checkpoint_dir=tmp_path, resume=True)
    assert [(r["loss"], r["widths"], r["removed"]) for r in resumed.history] == \
           [(r["loss"], r["widths"], r["removed"]) for r in full.history]
    assert resumed.removed == full.removed
    for name in full.params:
        np.testing.assert_array_equal(resumed.params[name], full.params[name], err_msg=name)


@pytest.mark.slow
def test_digits_with_and_without_shrinking_agree():
    """MLP 64-100-100-10, SS-GHS on digits, same seed, with and without shrinking.

    Settings as ``tests/test_fit.py::DIGITS_SETTINGS`` (rho_init -3, Adam 1e-2 for everything,
    600 epochs of batch 128). Removal threshold: ``gamma < 0.02`` for 5 epochs after 50. Not the
    default 1e-3: here ``lambda_l ~ 1/100``, and a unit the data no longer uses relaxes towards
    its prior, ``gamma -> lambda_l`` (its slab KL goes to 0, so only the Bernoulli KL acts on it);
    it sinks below that only slowly (the lowest of 92 switched-off units is at 1.4e-3 after 600
    epochs), so at 1e-3 nothing is removed. ``0.02 = 2 lambda_l``: posterior odds at twice the
    prior's, while kept units sit above 0.5.

    Agreement. Until the first removal both runs are the same computation (all-ones unit masks),
    so their losses agree to float32 rounding. Afterwards the guide's noise draws differ (same
    key, other shapes), so they are two runs of the same model, compared as such:

    * every unit shrinking removed is switched off (``gamma < 0.5``) at the end of the full run;
    * kept units per layer (median model): counts within 15% + 1 of the full run's, and at least
      80% of the smaller set kept by both;
    * test accuracy of the median model and of BMA (50 samples, to keep the Monte-Carlo spread of
      the comparison small) within 1 point.

    Measured (seed 0): first removal at epoch 144, 3 shrinks (100/100 -> 48/96 -> 32/48 -> 16/32),
    169 units removed (86 + 83), none kept by the full run; kept 8/8 (full) and 8/7 (shrinking),
    all 15 shared; median-model accuracy 95.5% in both, BMA 95.3% / 95.0% (0.3 points apart;
    with 10 samples the gap was 0.8). Test time ~200 s on the loaded 2-core machine: 4
    compilations of ~35 s each dominate.
    """
    from sparse_bnn.data.sources import load_dataset
    from sparse_bnn.train import fit
    from sparse_bnn.core.posterior import keep_masks, predict, predict_mean

    data = load_dataset("digits")
    n = data.x_train.shape[0]

    def model():
        return SparseBNN(MLP(64, (100, 100), 10, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=n,
                         rho_init=-3.0)

    kwargs = dict(epochs=600, batch_size=128, seed=0, progress=False, optimizer=optax.adam(1e-2))
    full = fit(model(), data.x_train, data.y_train, **kwargs)
    schedule = ShrinkSchedule(warmup_epochs=50, threshold=0.02, patience=5, bucket=16, shrink_factor=0.5)
    small = fit_shrinking(model(), data.x_train, data.y_train, shrink=schedule, **kwargs)

    assert small.removed, "shrinking removed nothing"
    assert small.compilations >= 2 and small.history[-1]["widths"]["dense0"] < 100
    first_removal = min(event["epoch"] for event in small.removed)
    for a, b in zip(full.history[:first_removal], small.history[:first_removal]):
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)

    full_keep = {k: np.asarray(v) for k, v in keep_masks(full.bnn, full.params, 0.5).items()}
    small_keep = keep_masks(small.bnn, small.params, 0.5, small.state.masks)
    for name in ("dense0", "dense1"):
        removed = [u for event in small.removed if event["layer"] == name for u in event["units"]]
        assert not full_keep[name][removed].any(), (name, np.flatnonzero(full_keep[name][removed]))
        kept_full = set(np.flatnonzero(full_keep[name]).tolist())
        kept_small = {int(u) for u in small.unit_origin[name][np.asarray(small_keep[name])]}
        assert abs(len(kept_small) - len(kept_full)) <= 0.15 * len(kept_full) + 1, (kept_full, kept_small)
        assert len(kept_full & kept_small) >= 0.8 * min(len(kept_full), len(kept_small)), (kept_full, kept_small)

    def accuracies(result, masks):
        bma = predict(result.bnn, result.params, data.x_test, n_samples=50, masks=masks)
        median_model = predict_mean(result.bnn, result.params, data.x_test, masks=masks)
        return np.array([np.mean(p.argmax(-1) == data.y_test) for p in (bma, median_model)])

    full_accuracy, small_accuracy = accuracies(full, None), accuracies(small, small.state.masks)
    assert np.all(np.abs(full_accuracy - small_accuracy) < 0.01), (full_accuracy, small_accuracy)
    assert np.all(full_accuracy >= 0.93), full_accuracy


def test_shrink_from_the_run_api_and_cli_options(tmp_path):
    """``--shrink`` with its options and ``--rho-init`` reach the model and the run directory."""
    from sparse_bnn.cli import build_parser, config_from_args
    from sparse_bnn.experiment.run import RunConfig, build_model, net_config, run_experiment
    from sparse_bnn.experiment.evaluate import load_run_dataset

    args = build_parser().parse_args(
        ["fit", "--data", "digits", "--n-train", "320", "--n-test", "100", "--widths", "24,16",
         "--batch-size", "64", "--lr", "1e-2", "--indicator-lr", "0.2", "--inclusion", "1e-3", "--rho-init", "-3",
         "--shrink", "--shrink-warmup", "2", "--shrink-patience", "2", "--shrink-threshold", "0.05",
         "--shrink-factor", "1", "--epochs", "25", "--samples", "2", "--no-latency", "--out", str(tmp_path / "run")])
    config = config_from_args(args)
    assert config.shrink_schedule() == ShrinkSchedule(warmup_epochs=2, patience=2, threshold=0.05, shrink_factor=1.0)
    dataset = load_run_dataset(config)
    assert build_model(config, dataset, net_config(config, dataset)).rho_init == -3.0

    metrics = run_experiment(config, progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    removed = {name: sum(len(r["removed"].get(name, [])) for r in history) for name in ("dense0", "dense1")}
    assert sum(removed.values()) > 0, "nothing was removed: the options did not reach the schedule"
    assert all(not r["removed"] for r in history[:3])  # warm-up 2 + patience 2: epoch 4 at the earliest
    assert history[-1]["alive"] == {name: width - removed[name]
                                    for name, width in (("dense0", 24), ("dense1", 16))}
    # shrink factor 1: every layer is rebuilt as soon as its alive units fit in fewer buckets (the
    # default 0.5 would keep dense0 at 24 units until at most 12 of them fitted in one bucket)
    for record in history:
        assert record["widths"] == {name: bucketed_width(record["alive"][name], width, 16)
                                    for name, width in (("dense0", 24), ("dense1", 16))}
    assert history[-1]["widths"]["dense0"] == 16
    # the report compares the compact network with the original dense one, not the shrunk one
    assert metrics["total_units"] == {"dense0": 24, "dense1": 16}
    assert metrics["params_dense"] == (64 * 24 + 24) + (24 * 16 + 16) + (16 * 10 + 10)
    assert all(metrics["kept_units"][name] <= history[-1]["alive"][name] for name in ("dense0", "dense1"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["run"]
    assert (saved["model"]["rho_init"], saved["shrink"]["threshold"], saved["shrink"]["patience"]) == (-3.0, 0.05, 2)

    with pytest.raises(ValueError, match="patience"):
        RunConfig.flat(out=str(tmp_path / "bad"), data="digits", shrink=True, shrink_patience=0).check()
    with pytest.raises(ValueError, match="shrink_factor must lie"):
        RunConfig.flat(out=str(tmp_path / "bad"), data="digits", shrink=True, shrink_factor=1.5).check()
    with pytest.raises(ValueError, match="--shrink-threshold, --shrink-factor set how --shrink .*give --shrink too"):
        RunConfig.flat(out=str(tmp_path / "bad"), data="digits", shrink_factor=0.5, shrink_threshold=0.1).check()

"""Posterior predictions: Bayesian model averaging against the sampled networks one by one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.nets import MLP
from sparse_bnn.core.posterior import predict, sample_latents
from sparse_bnn.priors import get_prior


def fitted_looking(likelihood: str, out: int):
    """An SS-GHS MLP 5-11-7-out with spread-out variational parameters and one unit masked off."""
    bnn = SparseBNN(MLP(5, (11, 7), out, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=100,
                    likelihood=likelihood, noise=0.5 if likelihood == "gaussian" else None, rho_init=-2.0)
    rng = np.random.default_rng(0)
    params = {k: jnp.asarray(np.asarray(v) + rng.normal(0.0, 0.5, np.shape(v)), jnp.float32)
              for k, v in bnn.init_params().items()}
    masks = Masks({"dense0": jnp.asarray(np.isin(np.arange(11), [3], invert=True), jnp.float32)})
    x = rng.normal(size=(37, 5)).astype(np.float32)
    return bnn, params, masks, x


def sampled_outputs(bnn, params, masks, x, key, n_samples):
    """Each posterior draw's network output, drawn and applied one at a time, without jit."""
    outputs = []
    for k in jax.random.split(key, n_samples):
        weights = bnn.effective_params(sample_latents(bnn, params, k), masks)
        outputs.append(np.asarray(bnn.functional.apply(weights, jnp.asarray(x))))
    return np.stack(outputs)


@pytest.mark.parametrize("likelihood, out", [("categorical", 4), ("gaussian", 2)])
def test_predict_averages_the_sampled_networks(likelihood, out):
    bnn, params, masks, x = fitted_looking(likelihood, out)
    key = jax.random.PRNGKey(3)
    outputs = sampled_outputs(bnn, params, masks, x, key, n_samples=6)
    assert np.std(outputs, axis=0).mean() > 0.05  # the draws differ: averaging is tested
    # batch_size 16: three batches, the last one shorter
    predicted = predict(bnn, params, x, n_samples=6, key=key, batch_size=16, masks=masks)
    if likelihood == "categorical":
        expected = np.mean(np.asarray(jax.nn.softmax(outputs, axis=-1)), axis=0)
        assert predicted.shape == (37, out)
    else:
        expected = outputs.reshape(6, 37, out)
        assert predicted.shape == (6, 37, out)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)


def test_predict_again_compiles_nothing(compilations):
    """``predict`` is jitted with the model static: a second call (new inputs, same batch size)
    reuses its programs. Run eagerly, the vmapped guide compiled each of its operations anew at
    every call (5.6 s for the first BMA of the Fashion-MNIST MLP, 0.9 s for each later one)."""
    bnn, params, masks, x = fitted_looking("categorical", 4)
    predict(bnn, params, x, n_samples=3, batch_size=16, masks=masks)
    with compilations() as compiled:
        predict(bnn, params, x + 1.0, n_samples=3, key=jax.random.PRNGKey(1), batch_size=16, masks=masks)
    assert compiled == []


@pytest.mark.parametrize("prior", ["flat", "ss-gl", "ss-ghs", "group-horseshoe", "ss-ig"])
def test_expected_weight_scales_match_monte_carlo(prior):
    """``E_q[scale]`` per layer (closed forms for flat and SS-GL, 2048 hash-noise draws for the
    horseshoes) against 200k NumPy draws of the guide's log-normal factors."""
    from sparse_bnn.core.guide import lognormal_factors
    from sparse_bnn.core.posterior import expected_weight_scales

    bnn = SparseBNN(MLP(5, (11, 7), 3, rngs=nnx.Rngs(0)), get_prior(prior), n_data=100)
    rng = np.random.default_rng(1)
    params = {k: jnp.asarray(np.asarray(v) + rng.normal(0.0, 0.5, np.shape(v)), jnp.float32)
              for k, v in bnn.init_params().items()}
    factors = lognormal_factors(bnn, params)
    n = 200_000
    draws = {name: np.exp(np.asarray(f.loc) + np.asarray(f.scale) * rng.normal(size=(n, *np.shape(f.loc))))
             for name, f in factors.items()}
    sampled = jax.vmap(lambda values: {layer.name: bnn.prior.weight_scale(values, layer) for layer in bnn.layers})(
        {k: jnp.asarray(v, jnp.float32) for k, v in draws.items()}) if draws else {}
    expected = expected_weight_scales(bnn, params)
    assert set(expected) == {layer.name for layer in bnn.layers}
    for layer in bnn.layers:
        reference = np.mean(np.asarray(sampled[layer.name]), axis=0) if draws else 1.0
        # 2048 draws for the horseshoes: a few per cent; the closed forms: the reference's own error
        rtol = 0.06 if prior in ("ss-ghs", "group-horseshoe") else 0.01
        np.testing.assert_allclose(np.asarray(expected[layer.name]) * np.ones_like(reference), reference,
                                   rtol=rtol, err_msg=layer.name)


def test_predict_with_another_number_of_samples():
    """The model keeps its jitted prediction programs; a later call with other settings (here
    ``n_samples``, gaussian outputs ``[S, N, out]``) must not reuse what the first call fixed."""
    bnn, params, masks, x = fitted_looking("gaussian", 2)
    assert predict(bnn, params, x, n_samples=3, masks=masks).shape == (3, 37, 2)
    key = jax.random.PRNGKey(5)
    np.testing.assert_allclose(predict(bnn, params, x, n_samples=5, key=key, masks=masks),
                               sampled_outputs(bnn, params, masks, x, key, 5), rtol=1e-5, atol=1e-6)

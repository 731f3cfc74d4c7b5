"""The NumPyro model, the guide and the ELBO against independent computations."""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
import pytest
from flax import nnx
from numpyro.handlers import seed, substitute, trace
from scipy import stats
from scipy.special import gammaln, log_softmax, softplus

from sparse_bnn.train import loss_fn, make_step
from sparse_bnn.core.guide import ConcreteBernoulli
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.nets import MLP
from sparse_bnn.priors import PRIORS, get_prior


def tiny_bnn(prior="ss-gl", n_data=50, **kwargs):
    return SparseBNN(MLP(3, (4,), 2, rngs=nnx.Rngs(0)), get_prior(prior), n_data=n_data, **kwargs)


def random_params(bnn, key=0):
    """Initial params perturbed so that every term of the ELBO matters."""
    rng = np.random.default_rng(key)
    return {k: jnp.asarray(np.asarray(v) + rng.normal(0, 0.3, np.shape(v)), jnp.float32)
            for k, v in bnn.init_params().items()}


def test_loss_matches_hand_computation_of_math_md():
    """SS-GL, MLP 3-4-2: the loss of math.md §4 computed by hand in numpy with the same noise."""
    bnn = tiny_bnn("ss-gl", n_data=50)
    params = random_params(bnn)
    x = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0], np.int32)
    key = jax.random.PRNGKey(7)
    loss, (nll, kl) = loss_fn(bnn)(params, key, jnp.asarray(x), jnp.asarray(y))

    values = {n: np.asarray(s["value"], np.float64) for n, s in
              trace(substitute(seed(bnn.guide, key), data=params)).get_trace(x, y).items() if s["type"] == "sample"}
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    z = values["dense0.z"]
    assert set(np.unique(z)) <= {0.0, 1.0}  # hard straight-through sample
    w0 = values["layers.0.kernel"] * (z * np.sqrt(values["dense0.tau2"]))[None, :]
    b0 = values["layers.0.bias"] * z * np.sqrt(values["dense0.tau2"])
    w1 = values["layers.1.kernel"] * np.sqrt(values["dense1.tau2"])[None, :]
    b1 = values["layers.1.bias"] * np.sqrt(values["dense1.tau2"])
    h = x @ w0 + b0
    h = h / (1 + np.exp(-h))  # SiLU
    logits = h @ w1 + b1
    hand_nll = -np.mean(log_softmax(logits, axis=1)[np.arange(6), y])

    def kl_normal(mu, s, v):
        return 0.5 * np.log(v) - np.log(s) + (s**2 + mu**2) / (2 * v) - 0.5

    def kl_ln_gamma(m, s, k, log_r, r):
        return -k * log_r + gammaln(k) - k * m + r * np.exp(m + s**2 / 2) - np.log(s) - 0.5 - 0.5 * np.log(2 * np.pi)

    gamma = 1 / (1 + np.exp(-p["dense0.z.logit"]))
    lam = bnn.inclusion["dense0"]
    hand_kl = np.sum(gamma * np.log(gamma / lam) + (1 - gamma) * np.log((1 - gamma) / (1 - lam)))
    for name, gate in [("layers.0.kernel", gamma[None, :]), ("layers.0.bias", gamma),
                       ("layers.1.kernel", 1.0), ("layers.1.bias", 1.0)]:
        hand_kl += np.sum(gate * kl_normal(p[f"{name}.loc"], softplus(p[f"{name}.rho"]), 1.0))
    m_lam, s_lam = p["lam2.loc"], softplus(p["lam2.rho"])
    hand_kl += kl_ln_gamma(m_lam, s_lam, 4.0, np.log(2.0), 2.0)
    for layer, group_size in [("dense0", 4), ("dense1", 5)]:
        m, s = p[f"{layer}.tau2.loc"], softplus(p[f"{layer}.tau2.rho"])
        hand_kl += np.sum(kl_ln_gamma(m, s, (group_size + 1) / 2, m_lam - np.log(2),
                                      np.exp(m_lam + s_lam**2 / 2) / 2))
    assert float(nll) == pytest.approx(hand_nll, rel=1e-5)
    assert float(kl) * 50 == pytest.approx(hand_kl, rel=1e-5)
    assert float(loss) == pytest.approx(hand_nll + hand_kl / 50, rel=1e-5)


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_numpyro_svi_and_fit_give_the_same_elbo(prior):
    """numpyro.infer.SVI with the library's model/guide/ELBO optimises exactly fit's objective."""
    bnn = tiny_bnn(prior, n_data=6)
    params = random_params(bnn, 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
    y = jnp.array([0, 1, 1, 0, 1, 0])
    key = jax.random.PRNGKey(3)
    total = bnn.elbo().loss(key, params, bnn.model, bnn.guide, x, y)
    per_datum, _ = loss_fn(bnn)(params, key, x, y)
    assert float(total) == pytest.approx(6 * float(per_datum), rel=1e-6)

    svi = numpyro.infer.SVI(bnn.model, bnn.guide, optax.sgd(1e-3), bnn.elbo())
    state = svi.init(jax.random.PRNGKey(0), x, y)
    assert set(svi.get_params(state)) == set(bnn.init_params())
    new_state, svi_loss = svi.update(state, x, y)
    step_key = jax.random.split(state.rng_key)[1]
    step = make_step(bnn, optax.sgd(1e-3 * 6))  # SVI minimises N * loss
    start = svi.get_params(state)
    fit_params, _, (fit_loss, _, _) = step(start, optax.sgd(6e-3).init(start), step_key, x, y)
    assert float(svi_loss) == pytest.approx(6 * float(fit_loss), rel=1e-5)
    for name, value in svi.get_params(new_state).items():
        np.testing.assert_allclose(value, fit_params[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prior", ["ss-gl", "ss-ghs", "flat", "ss-ig"])
def test_centred_and_non_centred_are_the_same_model(prior):
    """Prior draws of the effective weights agree in distribution (two-sample KS)."""
    def draws(centred, key):
        bnn = tiny_bnn(prior, centred=centred)
        one = lambda k: bnn.effective_params(
            {n: s["value"] for n, s in trace(seed(bnn.sample_latents, k)).get_trace().items()})
        params = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(key), 20000))
        return np.asarray(params[("layers", 1, "kernel")][:, 0, 0])

    a, b = draws(False, 0), draws(True, 1)
    assert stats.ks_2samp(a, b).pvalue > 1e-3


def test_concrete_bernoulli_hard_is_exact_bernoulli_with_soft_gradient():
    logits = jnp.array([-2.0, 0.0, 1.5, 4.0])
    d = ConcreteBernoulli(logits, temperature=0.5, hard=True)
    samples = np.asarray(d.sample(jax.random.PRNGKey(0), (100_000,)))
    assert set(np.unique(samples)) == {0.0, 1.0}
    np.testing.assert_allclose(samples.mean(0), jax.nn.sigmoid(logits), atol=4 * 0.5 / np.sqrt(100_000))
    key = jax.random.PRNGKey(1)
    hard_grad = jax.grad(lambda l: jnp.sum(ConcreteBernoulli(l, 0.5, True).sample(key) * jnp.arange(4.0)))(logits)
    soft_grad = jax.grad(lambda l: jnp.sum(ConcreteBernoulli(l, 0.5, False).sample(key) * jnp.arange(4.0)))(logits)
    np.testing.assert_allclose(hard_grad, soft_grad, rtol=1e-6)
    assert np.all(np.asarray(hard_grad)[1:] > 0)


def test_concrete_density_integrates_to_one():
    d = ConcreteBernoulli(jnp.array(0.7), temperature=0.5, hard=False)
    grid = np.linspace(1e-6, 1 - 1e-6, 400_001)
    density = np.exp(np.asarray(d.log_prob(jnp.asarray(grid)), np.float64))
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=5e-3)


def test_unit_masks_switch_units_off_and_out_of_the_kl():
    bnn = tiny_bnn("ss-ghs")
    params = random_params(bnn)
    mask = Masks(units={"dense0": jnp.array([1.0, 0.0, 1.0, 0.0])})
    values = {n: s["value"] for n, s in trace(substitute(seed(bnn.guide, 0), data=params)).get_trace().items()}
    effective = bnn.effective_params(values, mask)
    np.testing.assert_array_equal(np.asarray(effective[("layers", 0, "kernel")])[:, [1, 3]], 0.0)
    # the KL of masked units is gone: it equals the KL with those units' terms removed by hand
    full, masked = float(bnn.kl(params)), float(bnn.kl(params, mask))
    assert masked < full
    drop = {**params}
    drop["dense0.z.logit"] = params["dense0.z.logit"].at[jnp.array([1, 3])].set(-60.0)
    from sparse_bnn.core.kl import kl_bernoulli_logits
    lam = bnn.inclusion["dense0"]
    off_z_kl = float(jnp.sum(kl_bernoulli_logits(drop["dense0.z.logit"][jnp.array([1, 3])], lam)))
    assert float(bnn.kl(drop)) - off_z_kl == pytest.approx(masked, rel=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=-1.0), "temperature"),
    (dict(init_inclusion=1.0), "init_inclusion"), (dict(inclusion=1.5), "inclusion"),
    (dict(inclusion=0.0), "inclusion"), (dict(likelihood="poisson"), "likelihood"),
    (dict(n_data=0), "n_data"), (dict(likelihood="gaussian", noise=-1.0), "noise")])
def test_bad_model_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_bnn("ss-ghs", **kwargs)


@pytest.mark.parametrize("name,hyper", [("ss-ghs", dict(sigma_0=0.0)), ("ss-gl", dict(sigma_0=-1.0)),
                                        ("ss-gl", dict(lam2_rate=0.0)), ("ss-ghs", dict(slab_width=-1.0)),
                                        ("flat", dict(precision_shape=0.0))])
def test_impossible_hyperparameters_raise(name, hyper):
    with pytest.raises(ValueError):
        get_prior(name, **hyper)


def test_unknown_prior_lists_choices():
    with pytest.raises(ValueError, match="ss-ghs"):
        get_prior("horseshoe-ish")


@pytest.mark.parametrize("widths", [(0,), (5, -1)])
def test_non_positive_widths_raise(widths):
    with pytest.raises(ValueError, match="positive"):
        MLP(3, widths, 2, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("prior", ["ss-gl", "ss-ghs"])
@pytest.mark.parametrize("kl_weight", [1.0, 0.5])
def test_numpyros_own_elbos_estimate_the_closed_form_elbo(prior, kl_weight):
    """Trace_ELBO (all Monte Carlo) and TraceMeanField_ELBO (KLs registered for the library's
    distributions) estimate the same tempered objective as the library's closed-form ELBO."""
    bnn = tiny_bnn(prior, n_data=6, kl_weight=kl_weight)
    params = random_params(bnn, 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
    y = jnp.array([0, 1, 1, 0, 1, 0])
    particles = 4000
    closed_form = float(bnn.elbo(num_particles=particles).loss(
        jax.random.PRNGKey(1), params, bnn.model, bnn.guide, x, y))
    for elbo in (numpyro.infer.Trace_ELBO, numpyro.infer.TraceMeanField_ELBO):
        estimate = float(elbo(num_particles=particles, vectorize_particles=True).loss(
            jax.random.PRNGKey(2), params, bnn.model, bnn.guide, x, y))
        assert estimate == pytest.approx(closed_form, rel=2e-3), elbo.__name__
    untempered = tiny_bnn(prior, n_data=6)
    full = float(untempered.elbo(num_particles=particles).loss(
        jax.random.PRNGKey(1), params, untempered.model, untempered.guide, x, y))
    if kl_weight != 1.0:
        assert closed_form < full - 1.0


def test_a_named_model_prefixes_every_site_and_keeps_its_elbo():
    """``name="enc"`` puts ``enc.`` before every site and parameter and changes nothing else."""
    plain, named = tiny_bnn("ss-ghs", n_data=6), tiny_bnn("ss-ghs", n_data=6, name="enc")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)
    y = jnp.array([0, 1, 1, 0, 1, 0])
    plain_sites = set(trace(seed(plain.model, 0)).get_trace(x, y))
    named_sites = set(trace(seed(named.model, 0)).get_trace(x, y))
    assert named_sites == {f"enc.{site}" for site in plain_sites}
    params = random_params(plain, 3)
    named_params = {f"enc.{k}": v for k, v in params.items()}
    assert set(named_params) == set(named.init_params())
    key = jax.random.PRNGKey(5)
    assert float(named.elbo().loss(key, named_params, named.model, named.guide, x, y)) == pytest.approx(
        float(plain.elbo().loss(key, params, plain.model, plain.guide, x, y)), rel=1e-6)

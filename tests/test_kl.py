"""Every closed-form KL of math.md §4 against a Monte-Carlo estimate of the same KL."""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import stats

from sparse_bnn.core import kl
from sparse_bnn.nets.base import UnitLayer
from sparse_bnn.priors import PRIORS, Flat, SpikeSlabGroupHorseshoe, SpikeSlabGroupLasso, get_prior
from sparse_bnn.priors.base import LogNormalFactor

N_MC = 400_000


def mc_kl(q, p, key=0, n=N_MC):
    """``E_q[log q - log p]`` by sampling, with its standard error."""
    samples = q.sample(jax.random.PRNGKey(key), (n,))
    diff = np.asarray(q.log_prob(samples) - p.log_prob(samples), np.float64)
    return diff.mean(), diff.std() / np.sqrt(n)


def assert_close_mc(closed, q, p, rel=0.02):
    estimate, stderr = mc_kl(q, p)
    assert abs(closed - estimate) <= max(rel * abs(estimate), 5 * stderr), (closed, estimate, stderr)


def test_bernoulli_kl_by_enumeration():
    for g, p in [(0.99, 1.5e-3), (0.3, 0.2), (1e-4, 0.5), (0.5, 0.9)]:
        exact = g * np.log(g / p) + (1 - g) * np.log((1 - g) / (1 - p))
        assert float(kl.kl_bernoulli(g, p)) == pytest.approx(exact, rel=1e-5)
        logit = np.log(g) - np.log1p(-g)
        assert float(kl.kl_bernoulli_logits(logit, p)) == pytest.approx(exact, rel=1e-4)
    # limits: gamma -> 0 and -> 1 stay finite
    assert float(kl.kl_bernoulli(0.0, 0.1)) == pytest.approx(-np.log(0.9), rel=1e-6)
    assert np.isfinite(float(kl.kl_bernoulli_logits(40.0, 1e-3)))


@pytest.mark.parametrize("loc,scale,var", [(0.3, 0.05, 1.0), (-1.2, 0.8, 0.04), (0.0, 2.0, 3.0)])
def test_normal_kl(loc, scale, var):
    closed = float(kl.kl_normal(loc, scale, var))
    assert_close_mc(closed, dist.Normal(loc, scale), dist.Normal(0.0, np.sqrt(var)))


@pytest.mark.parametrize("m,s,k,r", [(0.5, 0.3, 4.0, 2.0), (-2.0, 1.0, 0.5, 1.0), (3.0, 0.1, 393.0, 1.0)])
def test_lognormal_gamma_kl(m, s, k, r):
    closed = float(kl.kl_lognormal_gamma(m, s, k, np.log(r), r))
    assert_close_mc(closed, dist.LogNormal(m, s), dist.Gamma(k, r))


@pytest.mark.parametrize("m,s,k,b", [(0.5, 0.3, 0.5, 1.0), (-1.0, 1.2, 2.0, 6.0), (2.0, 0.05, 0.5, 1.0)])
def test_lognormal_invgamma_kl(m, s, k, b):
    closed = float(kl.kl_lognormal_invgamma(m, s, k, b))
    assert_close_mc(closed, dist.LogNormal(m, s), dist.InverseGamma(k, b))


@pytest.mark.parametrize("m,s", [(-0.7, 0.2), (0.3, 0.6)])
def test_lognormal_halfnormal_kl(m, s):
    closed = float(kl.kl_lognormal_halfnormal(m, s, 1.0))
    assert_close_mc(closed, dist.LogNormal(m, s), dist.HalfNormal(1.0))


def test_expected_kl_over_random_variance():
    """Centred form: E_v[KL(N(mu, s^2) || N(0, v))] with v log-normal, against MC over v."""
    mu, s, m, sv = 0.4, 0.1, -1.0, 0.5
    closed = float(kl.kl_normal_expected_var(mu, s, m, np.exp(-m + sv**2 / 2)))
    v = np.exp(m + sv * np.random.default_rng(0).standard_normal(N_MC))
    mc = np.mean(0.5 * np.log(v) - np.log(s) + (s**2 + mu**2) / (2 * v) - 0.5)
    assert closed == pytest.approx(mc, rel=0.01)


LAYERS = (UnitLayer("h", 3, 5, ()), UnitLayer("out", 2, 3, (), prunable=False))


def random_factors(prior, key=0):
    rng = np.random.default_rng(key)
    return {s.name: LogNormalFactor(jnp.asarray(rng.normal(0, 0.5, s.shape), jnp.float32),
                                    jnp.asarray(rng.uniform(0.1, 0.6, s.shape), jnp.float32))
            for s in prior.scale_sites(LAYERS)}


def prior_mc_kl(prior, factors, n=200_000):
    """MC of E_q[log q(scales) - log p(scales)] with the model's own sampling statements."""
    from numpyro.handlers import condition, seed, trace

    def one(key):
        values = {name: jnp.exp(f.loc + f.scale * jax.random.normal(jax.random.fold_in(key, i), jnp.shape(f.loc)))
                  for i, (name, f) in enumerate(factors.items())}
        tr = trace(condition(seed(lambda: prior.sample_scales(LAYERS), 0), data=values)).get_trace()
        log_p = sum(jnp.sum(site["fn"].log_prob(site["value"])) for site in tr.values())
        log_q = sum(jnp.sum(dist.LogNormal(f.loc, f.scale).log_prob(values[name])) for name, f in factors.items())
        return log_q - log_p

    draws = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(1), n)), np.float64)
    return draws.mean(), draws.std() / np.sqrt(n)


@pytest.mark.parametrize("prior", [SpikeSlabGroupLasso(), SpikeSlabGroupHorseshoe(),
                                   SpikeSlabGroupHorseshoe(random_slab=True), Flat()])
def test_prior_scale_kl_against_monte_carlo(prior):
    """Each prior's whole scale KL (including SS-GL's expectation over q(lam2)) vs MC."""
    factors = random_factors(prior)
    closed = float(prior.scale_kl(factors, LAYERS))
    estimate, stderr = prior_mc_kl(prior, factors)
    assert abs(closed - estimate) <= max(0.02 * abs(estimate), 5 * stderr), (closed, estimate, stderr)


@pytest.mark.parametrize("prior", [SpikeSlabGroupLasso(), SpikeSlabGroupHorseshoe(),
                                   SpikeSlabGroupHorseshoe(random_slab=True), Flat()])
def test_variance_moments_against_monte_carlo(prior):
    """E[log scale^2] and E[1/scale^2] of each prior's weight scale (the centred form's KL)."""
    factors = random_factors(prior, key=3)
    layer = LAYERS[0]
    e_log, e_inv = prior.variance_moments(factors, layer)
    n = 400_000
    keys = jax.random.split(jax.random.PRNGKey(2), len(factors))
    values = {name: jnp.exp(f.loc + f.scale * jax.random.normal(k, (n, *jnp.shape(f.loc))))
              for (name, f), k in zip(factors.items(), keys)}
    scale2 = jax.vmap(lambda v: prior.weight_scale(v, layer))(values) ** 2
    np.testing.assert_allclose(e_log, np.mean(np.log(scale2), 0), rtol=0.02, atol=0.01)
    np.testing.assert_allclose(e_inv, np.mean(1 / scale2, 0), rtol=0.03)


def test_half_cauchy_as_gamma_times_inverse_gamma():
    """math.md §2: s^2 = a b, a ~ Gamma(1/2, rate 1/A), b ~ InvGamma(1/2, 1) gives s ~ C+(0, sqrt(A))."""
    A = 2.5
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = dist.Gamma(0.5, 1 / A).sample(ka, (200_000,))
    b = dist.InverseGamma(0.5, 1.0).sample(kb, (200_000,))
    s = np.sqrt(np.asarray(a * b, np.float64))
    statistic = stats.kstest(s, stats.halfcauchy(scale=np.sqrt(A)).cdf).statistic
    assert statistic < 0.01


# -- the slab N(0, sigma_0^2) of w~, owned by the prior ---------------------------------------

SLAB_PRIORS = [get_prior(name, sigma_0=sigma_0) for name in sorted(PRIORS) for sigma_0 in (1.0, 0.2)]


@pytest.mark.parametrize("prior", SLAB_PRIORS, ids=lambda p: f"{p.name}-{p.sigma_0}")
def test_slab_kl_against_monte_carlo(prior):
    """``Prior.slab_kl`` elementwise against MC of ``E_q[log q(w) - log N(w; 0, sigma_0^2)]``."""
    locs, scales = np.array([0.3, -1.2, 0.0, 0.05]), np.array([0.05, 0.8, 2.0, 0.2])
    closed = np.asarray(prior.slab_kl(jnp.asarray(locs), jnp.asarray(scales)))
    assert closed.shape == locs.shape
    for i, (loc, scale) in enumerate(zip(locs, scales)):
        assert_close_mc(float(closed[i]), dist.Normal(loc, scale), dist.Normal(0.0, prior.sigma_0))


@pytest.mark.parametrize("prior", SLAB_PRIORS, ids=lambda p: f"{p.name}-{p.sigma_0}")
def test_slab_rho_std_and_variance(prior):
    """``softplus(slab_rho) = sigma_0``: there the guide's ``N(0, softplus(rho)^2)`` is the slab."""
    rho = prior.slab_rho()
    assert float(jax.nn.softplus(rho)) == pytest.approx(prior.sigma_0, rel=1e-6)
    assert np.log1p(np.exp(rho)) == pytest.approx(prior.sigma_0, rel=1e-12)  # float64, by hand
    assert float(prior.slab_kl(0.0, jax.nn.softplus(rho))) == pytest.approx(0.0, abs=1e-6)
    assert prior.slab_variance() == pytest.approx(prior.sigma_0**2, rel=1e-15)
    std = prior.slab_std((3, 2))
    assert std.shape == (3, 2) and np.allclose(std, prior.sigma_0)


def test_scaled_slab_kl_against_monte_carlo():
    """Centred form: ``E_v[KL(N(mu, s^2) || N(0, sigma_0^2 v))]`` for a log-normal ``v``, against
    a joint MC over ``v`` and ``w`` (no closed form inside)."""
    prior = SpikeSlabGroupLasso(sigma_0=0.3)
    mu, s, m, sv = 0.4, 0.1, -1.0, 0.5
    closed = float(prior.scaled_slab_kl(mu, s, m, np.exp(-m + sv**2 / 2)))
    rng = np.random.default_rng(0)
    v = np.exp(m + sv * rng.standard_normal(N_MC))
    w = mu + s * rng.standard_normal(N_MC)
    prior_var = prior.sigma_0**2 * v
    diff = (stats.norm.logpdf(w, mu, s) - stats.norm.logpdf(w, 0.0, np.sqrt(prior_var)))
    estimate, stderr = diff.mean(), diff.std() / np.sqrt(N_MC)
    assert abs(closed - estimate) <= max(0.01 * abs(estimate), 5 * stderr), (closed, estimate, stderr)

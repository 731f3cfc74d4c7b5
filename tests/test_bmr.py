import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import integrate, optimize
from scipy.special import digamma, expit
from scipy.stats import multivariate_normal, norm

from sparse_bnn.sparsify import bmr
from sparse_bnn.nets.base import ParamAxis, UnitLayer, flatten_paths, pure_params
from sparse_bnn.nets.mlp import MLP

# (mu, posterior precision pi, prior variance sigma^2, reduced variance g^2)
SETTINGS = [
    (0.3, 50.0, 1.0, 1e-3),
    (2.0, 4.0, 1.0, 0.1),
    (-0.05, 1000.0, 0.5, 1e-4),
    (1.0, 1.5, 2.0, 1.0),
    (0.0, 10.0, 1.0, 0.01),
    (0.5, 0.8, 1.0, 0.5),   # posterior broader than the prior (possible for a variational fit)
    (-3.0, 200.0, 1.0, 1e-6),
]


def quadrature_reduction(mu, precision, prior_var, reduced_var):
    """log int q(w) p~(w)/p(w) dw, and the mean and variance of the normalised integrand."""
    sd = 1.0 / math.sqrt(precision)

    def log_integrand(w):
        return (norm.logpdf(w, mu, sd) + norm.logpdf(w, 0.0, math.sqrt(reduced_var))
                - norm.logpdf(w, 0.0, math.sqrt(prior_var)))

    lo, hi = min(0.0, mu) - 10 * sd, max(0.0, mu) + 10 * sd
    peak = optimize.minimize_scalar(lambda w: -log_integrand(w), bounds=(lo, hi), method="bounded",
                                    options={"xatol": 1e-12}).x
    top = log_integrand(peak)
    # the integrand's width is below sd (its precision exceeds pi), so +-40 sd covers it all
    a, b = peak - 40 * sd, peak + 40 * sd
    moments = [integrate.quad(lambda w: w**k * math.exp(log_integrand(w) - top), a, b,
                              points=[peak], limit=500, epsabs=1e-14, epsrel=1e-11)[0] for k in range(3)]
    mean = moments[1] / moments[0]
    return top + math.log(moments[0]), mean, moments[2] / moments[0] - mean**2


@pytest.mark.parametrize("mu,precision,prior_var,reduced_var", SETTINGS)
def test_reduced_gaussian_matches_quadrature(mu, precision, prior_var, reduced_var):
    expected_delta_f, expected_mean, expected_var = quadrature_reduction(mu, precision, prior_var, reduced_var)
    with jax.enable_x64(True):
        got = bmr.reduced_gaussian(mu, precision, prior_var, reduced_var)
        assert float(got.delta_f) == pytest.approx(expected_delta_f, rel=1e-7, abs=1e-7)
        assert float(got.mean) == pytest.approx(expected_mean, rel=1e-6, abs=1e-10)
        assert float(got.var) == pytest.approx(expected_var, rel=1e-6)


def test_math_md_literal_formula_agrees_with_stable_form():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=200) * 2
    precision = np.exp(rng.uniform(-1, 8, size=200))
    prior_var = np.exp(rng.uniform(-2, 1, size=200))
    reduced_var = prior_var * np.exp(rng.uniform(-20, -0.1, size=200))
    m = reduced_var * (precision - 1 / prior_var) + 1
    v = reduced_var / m
    literal = (-0.5 * np.log(m) + 0.5 * np.log(precision * prior_var) - 0.5 * precision * mu**2
               + 0.5 * (precision * mu) ** 2 * v)
    with jax.enable_x64(True):
        got = bmr.reduced_gaussian(mu, precision, prior_var, reduced_var)
        np.testing.assert_allclose(np.asarray(got.delta_f), literal, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(np.asarray(got.var), v, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(got.mean), v * precision * mu, rtol=1e-12)
    # float32 stays close to the float64 answer
    got32 = bmr.reduced_gaussian(mu.astype(np.float32), precision.astype(np.float32),
                                 prior_var.astype(np.float32), reduced_var.astype(np.float32))
    np.testing.assert_allclose(np.asarray(got32.delta_f), literal, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("true_weight,expect_prune", [(0.0, True), (0.8, False)])
def test_sign_against_exact_evidence_of_linear_gaussian_model(true_weight, expect_prune):
    """y = x w + noise: Delta F must be log p(y | reduced prior) - log p(y | full prior) exactly."""
    rng = np.random.default_rng(1)
    n, noise_var, prior_var, reduced_var = 30, 0.5, 1.0, 1e-6
    x = rng.normal(size=n)
    y = x * true_weight + rng.normal(size=n) * math.sqrt(noise_var)
    precision = 1 / prior_var + x @ x / noise_var
    mu = (x @ y / noise_var) / precision

    def log_evidence(var):
        return multivariate_normal(np.zeros(n), var * np.outer(x, x) + noise_var * np.eye(n)).logpdf(y)

    exact = log_evidence(reduced_var) - log_evidence(prior_var)
    with jax.enable_x64(True):
        got = bmr.reduced_gaussian(mu, precision, prior_var, reduced_var)
        assert float(got.delta_f) == pytest.approx(exact, rel=1e-8, abs=1e-9)
        reduced_precision = 1 / reduced_var + x @ x / noise_var
        assert float(got.var) == pytest.approx(1 / reduced_precision, rel=1e-9)
        assert float(got.mean) == pytest.approx((x @ y / noise_var) / reduced_precision, rel=1e-8)
    assert (float(got.delta_f) > 0) == expect_prune


def test_savage_dickey_is_the_small_reduced_variance_limit():
    mu = np.array([0.0, 0.1, -0.4, 2.0])
    precision = np.array([100.0, 30.0, 5.0, 50.0])
    prior_var = 0.7
    with jax.enable_x64(True):
        sd = np.asarray(bmr.savage_dickey(mu, precision, prior_var))
        np.testing.assert_allclose(sd, norm.logpdf(0, mu, 1 / np.sqrt(precision))
                                   - norm.logpdf(0, 0, np.sqrt(prior_var)), rtol=1e-12)
        gaps = [np.max(np.abs(np.asarray(bmr.reduced_gaussian(mu, precision, prior_var, g2).delta_f) - sd))
                for g2 in (1e-2, 1e-4, 1e-6, 1e-8)]
    assert all(later < earlier / 50 for earlier, later in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-4  # the gap is O(g^2 (pi mu)^2): 5e-5 for pi = 50, mu = 2, g^2 = 1e-8
    assert gaps[0] > 1e-3  # the limit is approached, not met at once
    assert sd[0] > 0 > sd[3]  # same sign convention: > 0 favours the reduced (pruned) model


def test_reduced_gaussian_is_jittable_and_broadcasts():
    mu = jnp.linspace(-1, 1, 12).reshape(3, 4)
    out = jax.jit(bmr.reduced_gaussian)(mu, jnp.full((3, 4), 20.0), 1.0, 1e-4)
    eager = bmr.reduced_gaussian(mu, jnp.full((3, 4), 20.0), 1.0, 1e-4)
    assert out.delta_f.shape == out.mean.shape == out.var.shape == (3, 4)
    np.testing.assert_allclose(np.asarray(out.delta_f), np.asarray(eager.delta_f), rtol=1e-6)


def test_reduced_gaussian_rejects_bad_variances():
    with pytest.raises(ValueError, match="smaller than prior_var"):
        bmr.reduced_gaussian(0.1, 10.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="precision must be positive"):
        bmr.reduced_gaussian(0.1, -1.0, 1.0, 0.1)
    with pytest.raises(ValueError, match="reduced_var must be positive"):
        bmr.reduced_gaussian(0.1, 1.0, 1.0, 0.0)


def test_sum_over_units_with_and_without_interleave():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(6, 12))
    np.testing.assert_allclose(np.asarray(bmr.sum_over_units(values, 1)), values.sum(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bmr.sum_over_units(values, -1)), values.sum(0), rtol=1e-5)
    units, interleave = 4, 3
    expected = np.zeros(units)
    for index in range(12):
        expected[index % units] += values[:, index].sum()  # entry p * units + j belongs to unit j
    np.testing.assert_allclose(np.asarray(bmr.sum_over_units(values, 1, interleave)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of interleave 5"):
        bmr.sum_over_units(values, 1, 5)
    with pytest.raises(ValueError, match="out of range"):
        bmr.sum_over_units(values, 2)


def scalar_delta_f(mu, precision, prior_var, reduced_var):
    m = reduced_var * (precision - 1 / prior_var) + 1
    v = reduced_var / m
    return (-0.5 * math.log(m) + 0.5 * math.log(precision * prior_var) - 0.5 * precision * mu**2
            + 0.5 * (precision * mu) ** 2 * v)


def test_node_delta_f_on_an_mlp_against_a_loop():
    net = MLP(3, (4, 5), 2, rngs=nnx.Rngs(0))
    layers = net.unit_layers()
    rng = np.random.default_rng(3)
    means = {p: np.asarray(a, np.float64) for p, a in flatten_paths(pure_params(net)).items()}
    variances = {p: rng.uniform(0.01, 0.2, size=a.shape) for p, a in means.items()}
    prior_var = {p: (0.5 if p[-1] == "kernel" else 2.0) for p in means}
    ratio = 1e-3
    with jax.enable_x64(True):
        got = bmr.node_delta_f(layers, means, variances, prior_var, reduced_var_ratio=ratio)
    assert set(got) == {"dense0", "dense1"}  # the output layer is never pruned
    for i, name in enumerate(("dense0", "dense1")):
        kernel, bias = ("layers", i, "kernel"), ("layers", i, "bias")
        expected = []
        for j in range(means[kernel].shape[1]):
            total = sum(scalar_delta_f(means[kernel][r, j], 1 / variances[kernel][r, j], 0.5, 0.5 * ratio)
                        for r in range(means[kernel].shape[0]))
            total += scalar_delta_f(means[bias][j], 1 / variances[bias][j], 2.0, 2.0 * ratio)
            expected.append(total)
        np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="variances has no entry"):
        bmr.node_delta_f(layers, means, {}, 1.0)
    with pytest.raises(ValueError, match="prior_var has no entry"):
        bmr.node_delta_f(layers, means, variances, {})


def test_group_delta_f_with_interleaved_member():
    # a dense layer after a flattened [positions=2, channels=3] map: kernel rows interleave
    layer = UnitLayer("conv0", units=3, fan_in=4,
                      members=(ParamAxis(("conv", "kernel"), 3), ParamAxis(("conv", "bias"), 0),
                               ParamAxis(("fc", "kernel"), 0, interleave=2)))
    rng = np.random.default_rng(4)
    delta_f = {("conv", "kernel"): rng.normal(size=(1, 2, 2, 3)), ("conv", "bias"): rng.normal(size=3),
               ("fc", "kernel"): rng.normal(size=(6, 7))}
    expected = (delta_f[("conv", "kernel")].sum((0, 1, 2)) + delta_f[("conv", "bias")]
                + delta_f[("fc", "kernel")][0:3].sum(1) + delta_f[("fc", "kernel")][3:6].sum(1))
    np.testing.assert_allclose(np.asarray(bmr.group_delta_f(delta_f, layer)), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="layer 'conv0' has 3"):
        bmr.group_delta_f({**delta_f, ("conv", "bias"): np.zeros(4)}, layer)
    with pytest.raises(ValueError, match="no Delta F for 'fc.kernel'"):
        bmr.group_delta_f({k: v for k, v in delta_f.items() if k[0] == "conv"}, layer)


def synthetic_delta_f(seed=5):
    rng = np.random.default_rng(seed)
    prunable = rng.normal(8.0, 1.0, size=300)     # clearly better reduced
    needed = rng.normal(-40.0, 10.0, size=60)     # clearly needed
    delta_f = np.concatenate([prunable, needed])
    return delta_f[rng.permutation(delta_f.size)]


def test_learned_threshold_satisfies_its_fixed_point_equation():
    delta_f = synthetic_delta_f()
    with jax.enable_x64(True):
        zeta, q = bmr.learned_inclusion_threshold(delta_f, n_iter=100)
    zeta = float(zeta)
    q_expected = expit(zeta - delta_f)
    np.testing.assert_allclose(np.asarray(q), q_expected, rtol=1e-10)
    assert zeta == pytest.approx(digamma(1 + q_expected.sum()) - digamma(1 + (1 - q_expected).sum()), abs=1e-10)
    # the default ten iterations are already at the fixed point here
    zeta10 = float(bmr.learned_inclusion_threshold(delta_f).zeta)
    assert zeta10 == pytest.approx(zeta, abs=1e-4)
    # about 60 of 360 entries are included, so zeta is near log(61/301)
    assert zeta == pytest.approx(math.log(61 / 301), abs=0.05)
    assert float(bmr.learned_inclusion_threshold(delta_f, n_iter=0, init_zeta=1.5).zeta) == 1.5


def test_elementwise_prune_mask_on_a_synthetic_mixture():
    delta_f = synthetic_delta_f()
    keep = np.asarray(bmr.elementwise_prune_mask(delta_f))
    np.testing.assert_array_equal(keep, delta_f < 0)
    jitted = jax.jit(bmr.elementwise_prune_mask, static_argnums=1)(jnp.asarray(delta_f), 10)
    np.testing.assert_array_equal(np.asarray(jitted), keep)
    # the rule is NOT (DeltaF > zeta): a NaN is kept, and a given zeta is used as it is
    np.testing.assert_array_equal(np.asarray(bmr.elementwise_prune_mask(jnp.array([np.nan, 1.0, -1.0]), zeta=0.0)),
                                  [True, False, True])
    # the learned threshold matters: entries with 0 < DeltaF < zeta are kept when most entries are needed
    mostly_needed = np.concatenate([np.full(200, -20.0), [0.5, 1.0]])
    zeta = float(bmr.learned_inclusion_threshold(mostly_needed).zeta)
    assert zeta > 1.0
    assert np.asarray(bmr.elementwise_prune_mask(mostly_needed)).all()


def test_learned_threshold_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        bmr.learned_inclusion_threshold(np.zeros(0))
    with pytest.raises(ValueError, match="n_iter"):
        bmr.learned_inclusion_threshold(np.zeros(3), n_iter=-1)
    with pytest.raises(ValueError, match="reduced_var_ratio"):
        bmr.node_delta_f((), {}, {}, 1.0, reduced_var_ratio=1.0)


def test_learned_threshold_of_a_layers_members_is_that_of_their_concatenation():
    delta_f = synthetic_delta_f()
    parts = [delta_f[:100].reshape(10, 10), delta_f[100:]]
    whole = bmr.learned_inclusion_threshold(delta_f, tol=0.0)
    split = bmr.learned_inclusion_threshold(parts, tol=0.0)
    assert float(split.zeta) == pytest.approx(float(whole.zeta), rel=1e-6)
    np.testing.assert_allclose(np.concatenate([q.ravel() for q in split.inclusion_prob]), whole.inclusion_prob,
                               rtol=1e-6)


def test_learned_threshold_stops_early_at_tol():
    delta_f = synthetic_delta_f()
    converged = float(bmr.learned_inclusion_threshold(delta_f, n_iter=50, tol=0.0).zeta)
    early = float(bmr.learned_inclusion_threshold(delta_f, n_iter=50, tol=1e-3).zeta)
    assert early == pytest.approx(converged, abs=1e-2)
    one = float(bmr.learned_inclusion_threshold(delta_f, n_iter=1, tol=0.0).zeta)
    q = expit(0.0 - delta_f)
    assert one == pytest.approx(digamma(1 + q.sum()) - digamma(1 + (1 - q).sum()), rel=1e-5)
    with pytest.raises(ValueError, match="tol"):
        bmr.learned_inclusion_threshold(delta_f, tol=-1.0)

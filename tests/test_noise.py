"""The guide's hash noise (``sparse_bnn.core.noise``): a standard normal, independent within a draw,
between keys, and between the sites and steps of the guide."""
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from flax import nnx
from scipy import stats

from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets import MLP
from sparse_bnn.core.noise import HashNormal, hash_bits, hash_normal
from sparse_bnn.priors import get_prior

N = 2**20
BOUND = 5.0 / np.sqrt(N)  # five standard errors of a mean / correlation of N independent terms


def correlation(a, b) -> float:
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_a_draw_is_standard_normal(seed):
    z = np.asarray(hash_normal(jax.random.PRNGKey(seed), (N,)), np.float64)
    assert abs(z.mean()) < BOUND
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / N)
    assert abs(stats.skew(z)) < 5 * np.sqrt(6.0 / N)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24.0 / N)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # Tails: P(|z| > 3) = 0.0027 (the inverse CDF of 23-bit uniforms reaches |z| = 5.3).
    tail = np.mean(np.abs(z) > 3.0)
    assert abs(tail - 2 * stats.norm.sf(3.0)) < 5 * np.sqrt(0.0027 / N)


def test_every_bit_is_balanced():
    bits = np.asarray(hash_bits(jax.random.PRNGKey(7), (N,)))
    ones = np.array([np.mean((bits >> b) & 1) for b in range(32)])
    np.testing.assert_array_less(np.abs(ones - 0.5), 5 * 0.5 / np.sqrt(N))


def test_no_correlation_within_a_draw():
    z = np.asarray(hash_normal(jax.random.PRNGKey(3), (1024, 1024)))
    for lag in (1, 2, 7, 64, 1024):  # neighbours, and the next row of a [1024, 1024] weight matrix
        assert abs(correlation(z.ravel()[lag:], z.ravel()[:-lag])) < BOUND, lag
    assert abs(correlation(z[:, :-1], z[:, 1:])) < BOUND


def test_keys_give_independent_draws():
    key = jax.random.PRNGKey(0)
    related = {
        "PRNGKey(1)": jax.random.PRNGKey(1),
        "split": jax.random.split(key)[1],
        "fold_in": jax.random.fold_in(key, 1),
        "k0 ^ 1": jnp.asarray(key) ^ jnp.array([1, 0], jnp.uint32),
        "k1 ^ 1": jnp.asarray(key) ^ jnp.array([0, 1], jnp.uint32),
        "k0 ^ 1 (of a split key)": jnp.asarray(jax.random.split(key)[0]) ^ jnp.array([1, 0], jnp.uint32),
    }
    base = hash_normal(key, (N,))
    split_base = hash_normal(jax.random.split(key)[0], (N,))
    for name, other in related.items():
        reference = split_base if "split key" in name else base
        draw = hash_normal(other, (N,))
        assert abs(correlation(reference, draw)) < BOUND, name
        # Not a permutation of each other either (the sorted values differ).
        assert np.mean(np.sort(np.asarray(reference)) == np.sort(np.asarray(draw))) < 0.01, name


def test_first_numbers_over_many_keys_are_standard_normal():
    """Element 0 (and 1) over 4096 plain keys ``PRNGKey(s)``: nothing special about small keys."""
    first = jax.vmap(lambda s: hash_normal(jax.random.PRNGKey(s), (2,)))(jnp.arange(4096))
    for column in np.asarray(first).T:
        assert stats.kstest(column, "norm").pvalue > 1e-4
    assert abs(correlation(first[:, 0], first[:, 1])) < 5 / np.sqrt(4096)


def test_draw_is_a_pure_function_of_key_and_shape():
    key = jax.random.PRNGKey(5)
    a = hash_normal(key, (3, 4))
    np.testing.assert_array_equal(a, jax.jit(hash_normal, static_argnums=1)(key, (3, 4)))
    np.testing.assert_array_equal(a, hash_normal(jax.random.wrap_key_data(key), (3, 4)))
    np.testing.assert_array_equal(a.ravel(), hash_normal(key, (12,)))  # row-major counter
    assert hash_normal(key, (3, 4), jnp.bfloat16).dtype == jnp.bfloat16


def test_draw_size_limit_is_checked_before_anything_is_allocated():
    with pytest.raises(ValueError, match="at most 2\\*\\*32"):
        jax.eval_shape(lambda k: hash_normal(k, (2**16, 2**16 + 1)), jax.random.PRNGKey(0))


def test_hash_normal_distribution_is_a_reparametrised_normal():
    loc, scale = jnp.array([1.0, -2.0]), jnp.array([0.5, 3.0])
    key = jax.random.PRNGKey(2)
    sample = HashNormal(loc, scale).sample(key, (4,))
    np.testing.assert_allclose(sample, loc + scale * hash_normal(key, (4, 2)), rtol=1e-6)
    grad = jax.grad(lambda l, s: HashNormal(l, s).sample(key).sum(), argnums=(0, 1))(loc, scale)
    np.testing.assert_allclose(grad[0], 1.0)
    np.testing.assert_allclose(grad[1], hash_normal(key, (2,)), rtol=1e-6)
    np.testing.assert_allclose(HashNormal(loc, scale).log_prob(0.3),
                               stats.norm(np.asarray(loc), np.asarray(scale)).logpdf(0.3), rtol=1e-5)


def _weight_noise(bnn, params, key):
    guide = numpyro.handlers.substitute(numpyro.handlers.seed(bnn.guide, key), data=params)
    x, y = jnp.zeros((2, 8)), jnp.zeros((2,), jnp.int32)
    values = guide(x, y)
    return {site: (values[site] - params[f"{site}.loc"]) / jax.nn.softplus(params[f"{site}.rho"])
            for site in ("layers.0.kernel", "layers.1.kernel")}


def test_guide_draws_hash_noise_by_default_and_threefry_on_request():
    net = MLP(8, (64,), 3, rngs=nnx.Rngs(0))
    default = SparseBNN(net, get_prior("ss-ghs"), n_data=100)
    threefry = SparseBNN(net, get_prior("ss-ghs"), n_data=100, weight_noise="threefry")
    assert default.weight_noise == "hash"
    params = default.init_params()
    key = jax.random.PRNGKey(11)
    hashed, reference = _weight_noise(default, params, key), _weight_noise(threefry, params, key)
    # Both are standard normal noise, from different streams; sites and steps are independent.
    for site in hashed:
        assert abs(float(jnp.std(hashed[site])) - float(jnp.std(reference[site]))) < 0.1
        assert abs(correlation(hashed[site], reference[site])) < 0.1
    step2 = _weight_noise(default, params, jax.random.PRNGKey(12))
    assert abs(correlation(hashed["layers.0.kernel"], step2["layers.0.kernel"])) < 0.1
    assert abs(correlation(hashed["layers.0.kernel"].ravel()[:192], hashed["layers.1.kernel"].ravel())) < 0.3


def test_weight_noise_options_are_checked():
    net = MLP(8, (4,), 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="weight_noise"):
        SparseBNN(net, get_prior("ss-ghs"), n_data=10, weight_noise="philox")
    with pytest.raises(ValueError, match="partitionable_noise"):
        SparseBNN(net, get_prior("ss-ghs"), n_data=10, partitionable_noise=False)


def test_a_shrunk_model_keeps_the_noise_options():
    from sparse_bnn.sparsify.slicing import shrunk_model
    bnn = SparseBNN(MLP(8, (6,), 3, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=10,
                    weight_noise="threefry", partitionable_noise=False)
    small = shrunk_model(bnn, {"dense0": np.array([1, 1, 0, 1, 0, 1], bool)})
    assert (small.layers[0].units, small.weight_noise, small.partitionable_noise) == (4, "threefry", False)


@pytest.mark.parametrize("chunk", [7, 64, 2**16])
def test_many_draws_at_once_are_the_draws_one_by_one(chunk):
    from sparse_bnn.core.noise import hash_normal_many
    shapes = [(13, 5), (), (40,), (3, 2, 4), (1,)]
    keys = [jax.random.PRNGKey(i) for i in range(len(shapes))]
    dtypes = [jnp.float32, jnp.float32, jnp.bfloat16, jnp.float32, jnp.float32]
    many = jax.jit(lambda keys: hash_normal_many(keys, shapes, dtypes, chunk=chunk))(keys)
    for key, shape, dtype, draw in zip(keys, shapes, dtypes, many):
        one = hash_normal(key, shape, dtype)
        assert draw.shape == shape and draw.dtype == one.dtype
        np.testing.assert_array_equal(np.asarray(draw, np.float32), np.asarray(one, np.float32))


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("weight_noise", ["hash", "threefry"])
def test_guide_draws_every_site_as_its_own_key_would(partitionable, weight_noise):
    """The guide draws its weights' noise (hash) and its scale sites' normals in one program each;
    the values are those of each site drawing from the key ``seed`` gives it."""
    from numpyro.handlers import seed, substitute, trace
    from sparse_bnn.core.distributions import GatedNormal
    bnn = SparseBNN(MLP(6, (5, 4), 3, rngs=nnx.Rngs(0)), get_prior("ss-ghs"), n_data=50,
                    weight_noise=weight_noise)
    params = bnn.init_params()
    with jax.threefry_partitionable(partitionable):
        guide_trace = trace(substitute(seed(bnn.guide, jax.random.PRNGKey(3)), data=params)).get_trace()
        chain = jax.random.PRNGKey(3)
        for name, site in guide_trace.items():
            if site["type"] != "sample":
                continue
            chain, key = jax.random.split(chain)
            fn = site["fn"]
            while isinstance(fn, numpyro.distributions.Independent):
                fn = fn.base_dist
            if isinstance(fn, numpyro.distributions.LogNormal):
                expected = jnp.exp(numpyro.distributions.Normal(fn.loc, fn.scale).sample(key))
            elif isinstance(fn, GatedNormal):
                slab = fn.slab
                cls = HashNormal if weight_noise == "hash" else numpyro.distributions.Normal
                expected = cls(slab.loc, slab.scale).sample(key)
            else:  # the indicators
                expected = fn.sample(key)
            np.testing.assert_array_equal(np.asarray(site["value"]), np.asarray(expected), err_msg=name)

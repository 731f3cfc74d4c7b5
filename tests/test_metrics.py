import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import accuracy_score, log_loss

from sparse_bnn import metrics


def random_classification(seed, n=500, c=5, temperature=1.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 3.0 / temperature
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    # labels drawn from the probabilities themselves, then partly corrupted: miscalibrated data
    y = np.array([rng.choice(c, p=p) for p in probs])
    flip = rng.random(n) < 0.3
    y[flip] = rng.integers(0, c, size=flip.sum())
    return probs.astype(np.float32), y


def loop_calibration(probs, y, n_bins):
    """Reference ECE and bins by a plain Python loop over (lo, hi] bins."""
    probs = np.asarray(probs, np.float64)
    confidence, prediction = probs.max(-1), probs.argmax(-1)
    bins, error = [], 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(len(y)) if lo < confidence[i] <= hi or (b == 0 and confidence[i] == 0)]
        if not members:
            bins.append((0.0, 0.0, 0))
            continue
        conf = np.mean([confidence[i] for i in members])
        acc = np.mean([prediction[i] == y[i] for i in members])
        bins.append((conf, acc, len(members)))
        error += len(members) / len(y) * abs(acc - conf)
    return error, np.array(bins)


@pytest.mark.parametrize("seed,c", [(0, 2), (1, 5), (2, 10)])
def test_accuracy_and_nll_match_sklearn(seed, c):
    probs, y = random_classification(seed, c=c)
    assert float(metrics.accuracy(probs, y)) == pytest.approx(accuracy_score(y, probs.argmax(-1)), abs=1e-7)
    probs64 = probs.astype(np.float64)
    expected = log_loss(y, probs64 / probs64.sum(-1, keepdims=True), labels=np.arange(c))
    assert float(metrics.nll(probs, y)) == pytest.approx(expected, rel=1e-5)


def test_nll_clips_zero_probability_of_true_class():
    probs = jnp.array([[1.0, 0.0], [0.5, 0.5]])
    y = jnp.array([1, 0])
    assert float(metrics.nll(probs, y, eps=1e-6)) == pytest.approx((-np.log(1e-6) - np.log(0.5)) / 2, rel=1e-5)


@pytest.mark.parametrize("seed,c", [(3, 2), (4, 7)])
def test_brier_by_hand(seed, c):
    probs, y = random_classification(seed, c=c)
    one_hot = np.eye(c)[y]
    expected = np.mean(np.sum((probs.astype(np.float64) - one_hot) ** 2, axis=1))
    assert float(metrics.brier(probs, y)) == pytest.approx(expected, rel=1e-5)
    if c == 2:
        # binary Brier in its usual form: twice the squared error of the positive-class probability
        binary = np.mean((probs[:, 1].astype(np.float64) - (y == 1)) ** 2)
        assert float(metrics.brier(probs, y)) == pytest.approx(2 * binary, rel=1e-5)


@pytest.mark.parametrize("seed,n_bins,temperature", [(5, 15, 1.0), (6, 10, 4.0), (7, 3, 0.5)])
def test_ece_and_bins_match_python_loop(seed, n_bins, temperature):
    probs, y = random_classification(seed, c=4, temperature=temperature)
    expected_ece, expected_bins = loop_calibration(probs, y, n_bins)
    bins = metrics.calibration_bins(probs, y, n_bins)
    np.testing.assert_allclose(np.asarray(bins.count), expected_bins[:, 2])
    np.testing.assert_allclose(np.asarray(bins.confidence), expected_bins[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bins.accuracy), expected_bins[:, 1], rtol=1e-5, atol=1e-6)
    assert expected_ece > 0.02  # the data really is miscalibrated, so the check is not vacuous
    assert float(metrics.ece(probs, y, n_bins)) == pytest.approx(expected_ece, rel=1e-5)


def test_ece_zero_for_perfectly_calibrated_bins():
    # confidence 0.75 in every row, three of four right: calibrated exactly
    probs = jnp.tile(jnp.array([[0.75, 0.25]]), (8, 1))
    y = jnp.array([0, 0, 0, 1, 0, 0, 0, 1])
    assert float(metrics.ece(probs, y)) == pytest.approx(0.0, abs=1e-7)
    y_wrong = jnp.ones(8, jnp.int32)
    assert float(metrics.ece(probs, y_wrong)) == pytest.approx(0.75, abs=1e-6)


def test_classification_metrics_jit_and_dict():
    probs, y = random_classification(8, c=3)
    jitted = jax.jit(lambda p, t: (metrics.accuracy(p, t), metrics.nll(p, t), metrics.ece(p, t),
                                   metrics.brier(p, t)))(probs, y)
    summary = metrics.classification_metrics(probs, y)
    assert set(summary) == {"accuracy", "nll", "ece", "brier"}
    assert all(isinstance(v, float) for v in summary.values())
    np.testing.assert_allclose([summary[k] for k in ("accuracy", "nll", "ece", "brier")],
                               np.asarray(jitted), rtol=1e-6)


def test_classification_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape \\[N, C\\]"):
        metrics.accuracy(jnp.ones(3), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="labels y must have shape"):
        metrics.nll(jnp.ones((3, 2)) / 2, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        metrics.brier(jnp.ones((3, 2)) / 2, jnp.zeros(3))
    with pytest.raises(ValueError, match="n_bins"):
        metrics.ece(jnp.ones((3, 2)) / 2, jnp.zeros(3, jnp.int32), n_bins=0)


def test_rmse_and_gaussian_nll_against_scipy():
    rng = np.random.default_rng(9)
    y = rng.normal(size=(50, 2))
    mean = y + rng.normal(size=(50, 2)) * 0.3
    std = rng.uniform(0.2, 2.0, size=(50, 2))
    assert float(metrics.rmse(mean, y)) == pytest.approx(np.sqrt(np.mean((mean - y) ** 2)), rel=1e-5)
    expected = -np.mean(np.sum(norm.logpdf(y, mean, std), axis=1))
    assert float(metrics.gaussian_nll(mean, std, y)) == pytest.approx(expected, rel=1e-5)
    expected_scalar = -np.mean(np.sum(norm.logpdf(y, mean, 0.5), axis=1))
    assert float(metrics.gaussian_nll(mean, 0.5, y)) == pytest.approx(expected_scalar, rel=1e-5)


@pytest.mark.parametrize("shape", [(40,), (40, 3)])
def test_mixture_gaussian_nll_against_numpy_loop(shape):
    rng = np.random.default_rng(10)
    s, noise = 7, 0.4
    y = rng.normal(size=shape)
    means = y + rng.normal(size=(s, *shape)) * 1.5
    total = 0.0
    for n in range(shape[0]):
        density = 0.0
        for k in range(s):
            density += np.prod(norm.pdf(y[n], means[k, n], noise)) / s
        total += -np.log(density)
    expected = total / shape[0]
    assert float(metrics.mixture_gaussian_nll(means, noise, y)) == pytest.approx(expected, rel=1e-5)
    assert float(jax.jit(metrics.mixture_gaussian_nll)(means, noise, y)) == pytest.approx(expected, rel=1e-5)


def test_mixture_of_identical_samples_is_gaussian_nll():
    rng = np.random.default_rng(11)
    y = rng.normal(size=30)
    mean = rng.normal(size=30)
    means = np.broadcast_to(mean, (5, 30))
    assert float(metrics.mixture_gaussian_nll(means, 0.7, y)) == pytest.approx(
        float(metrics.gaussian_nll(mean, 0.7, y)), rel=1e-5)


def test_regression_metrics_from_samples_and_from_mean_std():
    rng = np.random.default_rng(12)
    y = rng.normal(size=20)
    samples = y + rng.normal(size=(6, 20))
    from_samples = metrics.regression_metrics(y, sample_means=samples, noise_std=0.5)
    pred_mean, pred_std = samples.mean(0), np.sqrt(samples.var(0) + 0.25)
    assert from_samples["rmse"] == pytest.approx(np.sqrt(np.mean((pred_mean - y) ** 2)), rel=1e-5)
    assert from_samples["gaussian_nll"] == pytest.approx(-np.mean(norm.logpdf(y, pred_mean, pred_std)), rel=1e-5)
    assert from_samples["nll"] == pytest.approx(float(metrics.mixture_gaussian_nll(samples, 0.5, y)), rel=1e-6)
    from_moments = metrics.regression_metrics(y, mean=pred_mean, std=pred_std)
    assert from_moments["nll"] == pytest.approx(from_samples["gaussian_nll"], rel=1e-5)
    with pytest.raises(ValueError, match="noise_std"):
        metrics.regression_metrics(y, sample_means=samples)
    with pytest.raises(ValueError, match="not both"):
        metrics.regression_metrics(y, sample_means=samples, noise_std=1.0, mean=pred_mean)
    with pytest.raises(ValueError, match="shape"):
        metrics.rmse(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="S, 20"):
        metrics.mixture_gaussian_nll(np.zeros((3, 21)), 1.0, y)

"""Predictive metrics: accuracy, NLL, ECE, Brier, calibration bins, RMSE, Gaussian NLLs.

Every array function is pure ``jax.numpy`` and jittable; only the ``*_metrics`` summaries
convert to Python floats. Shapes are checked (statically) and a mismatch raises ``ValueError``.

Classification functions take predicted class probabilities ``probs [N, C]`` (already averaged
over posterior samples) and integer labels ``y [N]``.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

EPS = 1e-12
HALF_LOG_2PI = 0.5 * float(jnp.log(2.0 * jnp.pi))


def _check_classification(probs: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    probs, y = jnp.asarray(probs), jnp.asarray(y)
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape [N, C] (class probabilities), got shape {probs.shape}")
    if y.ndim != 1 or y.shape[0] != probs.shape[0]:
        raise ValueError(f"labels y must have shape [N] = [{probs.shape[0]}] to match probs "
                         f"{probs.shape}, got shape {y.shape}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"labels y must be integer class indices, got dtype {y.dtype}; "
                         "cast with y.astype(int)")
    return probs, y


def _check_bins(n_bins: int) -> int:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def accuracy(probs: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of examples whose most probable class is the label. ``[N, C], [N] -> []``."""
    probs, y = _check_classification(probs, y)
    return jnp.mean(jnp.argmax(probs, axis=-1) == y)


def nll(probs: jax.Array, y: jax.Array, eps: float = EPS) -> jax.Array:
    """Mean of ``-log probs[n, y_n]``, the probability clipped below at ``eps``. ``-> []``."""
    probs, y = _check_classification(probs, y)
    p_true = jnp.take_along_axis(probs, y[:, None], axis=-1)[:, 0]
    return -jnp.mean(jnp.log(jnp.clip(p_true, eps, 1.0)))


def brier(probs: jax.Array, y: jax.Array) -> jax.Array:
    """Mean over examples of ``sum_c (probs[n, c] - onehot(y_n)[c])^2``. ``-> []``."""
    probs, y = _check_classification(probs, y)
    one_hot = jax.nn.one_hot(y, probs.shape[-1], dtype=probs.dtype)
    return jnp.mean(jnp.sum((probs - one_hot) ** 2, axis=-1))


class CalibrationBins(NamedTuple):
    """Reliability-diagram data, one entry per equal-width confidence bin ``[n_bins]``.

    ``confidence`` and ``accuracy`` are bin means (0 where ``count`` is 0).
    """

    confidence: jax.Array
    accuracy: jax.Array
    count: jax.Array


def calibration_bins(probs: jax.Array, y: jax.Array, n_bins: int = 15) -> CalibrationBins:
    """Per-bin mean confidence, accuracy and count of the top-class predictions.

    Bin ``b`` holds confidences in ``(b / n_bins, (b + 1) / n_bins]`` (a confidence of exactly
    0 goes to bin 0). ``[N, C], [N] -> CalibrationBins of [n_bins] arrays``.
    """
    probs, y = _check_classification(probs, y)
    n_bins = _check_bins(n_bins)
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == y).astype(probs.dtype)
    bin_index = jnp.clip(jnp.ceil(confidence * n_bins).astype(jnp.int32) - 1, 0, n_bins - 1)
    count = jnp.zeros(n_bins, probs.dtype).at[bin_index].add(1.0)
    sum_confidence = jnp.zeros(n_bins, probs.dtype).at[bin_index].add(confidence)
    sum_correct = jnp.zeros(n_bins, probs.dtype).at[bin_index].add(correct)
    safe_count = jnp.maximum(count, 1.0)
    return CalibrationBins(sum_confidence / safe_count, sum_correct / safe_count, count)


def ece(probs: jax.Array, y: jax.Array, n_bins: int = 15) -> jax.Array:
    """Expected calibration error: ``sum_b (count_b / N) |accuracy_b - confidence_b|``. ``-> []``."""
    bins = calibration_bins(probs, y, n_bins)
    weights = bins.count / jnp.sum(bins.count)
    return jnp.sum(weights * jnp.abs(bins.accuracy - bins.confidence))


def classification_metrics(probs: jax.Array, y: jax.Array, n_bins: int = 15) -> dict[str, float]:
    """``{"accuracy", "nll", "ece", "brier"}`` as Python floats."""
    probs, y = _check_classification(probs, y)
    values = _classification_summary(probs, y, _check_bins(n_bins))
    return {name: float(value) for name, value in values.items()}


@partial(jax.jit, static_argnums=2)  # run eagerly, each of its ~40 operations would compile on its own
def _classification_summary(probs: jax.Array, y: jax.Array, n_bins: int) -> dict[str, jax.Array]:
    return {"accuracy": accuracy(probs, y), "nll": nll(probs, y), "ece": ece(probs, y, n_bins),
            "brier": brier(probs, y)}


# --- regression -------------------------------------------------------------------------------

def _check_regression(prediction: jax.Array, y: jax.Array, what: str) -> tuple[jax.Array, jax.Array]:
    prediction, y = jnp.asarray(prediction), jnp.asarray(y)
    if y.ndim == 0:
        raise ValueError("targets y must have shape [N, ...], got a scalar")
    if prediction.shape != y.shape:
        raise ValueError(f"{what} must have the shape of the targets y {y.shape}, "
                         f"got {prediction.shape}")
    return prediction, y


def _per_example_sum(values: jax.Array, batch_axes: int) -> jax.Array:
    """Sum over the trailing output dimensions, keeping the leading ``batch_axes`` axes."""
    return jnp.sum(values.reshape(values.shape[:batch_axes] + (-1,)), axis=-1)


def rmse(mean: jax.Array, y: jax.Array) -> jax.Array:
    """Root mean squared error over all entries. ``mean, y [N, ...] -> []``."""
    mean, y = _check_regression(mean, y, "mean")
    return jnp.sqrt(jnp.mean((mean - y) ** 2))


def gaussian_nll(mean: jax.Array, std: jax.Array, y: jax.Array) -> jax.Array:
    """Mean over examples of ``-log N(y_n; mean_n, std_n^2)``, summed over output dimensions.

    ``mean, y [N, ...]``, ``std`` broadcastable to them (a scalar noise std is fine). ``-> []``.
    """
    mean, y = _check_regression(mean, y, "mean")
    std = jnp.broadcast_to(jnp.asarray(std, mean.dtype), mean.shape)
    log_density = -0.5 * ((y - mean) / std) ** 2 - jnp.log(std) - HALF_LOG_2PI
    return -jnp.mean(_per_example_sum(log_density, 1))


def mixture_gaussian_nll(means: jax.Array, noise_std: jax.Array, y: jax.Array) -> jax.Array:
    """NLL of the equal-weight mixture of ``S`` Gaussians ``N(means[s], noise_std^2)``.

    ``-log (1/S) sum_s prod_d N(y_nd; means[s, n, d], noise_std^2)`` averaged over examples
    (each sample is a joint prediction over the output dimensions ``d``).
    ``means [S, N, ...]``, ``y [N, ...]``, ``noise_std`` a scalar or broadcastable to ``y``. ``-> []``.
    """
    means, y = jnp.asarray(means), jnp.asarray(y)
    if means.ndim < 2 or means.shape[1:] != y.shape:
        raise ValueError(f"means must have shape [S, *y.shape] = [S, {', '.join(map(str, y.shape))}], "
                         f"got {means.shape}")
    std = jnp.broadcast_to(jnp.asarray(noise_std, means.dtype), y.shape)
    log_density = -0.5 * ((y - means) / std) ** 2 - jnp.log(std) - HALF_LOG_2PI
    per_sample = _per_example_sum(log_density, 2)  # [S, N]
    log_mixture = logsumexp(per_sample, axis=0) - jnp.log(means.shape[0])
    return -jnp.mean(log_mixture)


def regression_metrics(y: jax.Array, *, sample_means: jax.Array | None = None,
                       noise_std: jax.Array | float | None = None, mean: jax.Array | None = None,
                       std: jax.Array | float | None = None) -> dict[str, float]:
    """RMSE and NLLs as Python floats, from predictive samples or from a mean and std.

    Give either ``sample_means [S, N, ...]`` with the likelihood's ``noise_std``, which reports
    ``rmse`` of the sample average, ``nll`` of the Gaussian mixture and ``gaussian_nll`` of the
    moment-matched Gaussian (variance = sample variance + noise_std^2); or ``mean`` and ``std``
    of a Gaussian predictive ``[N, ...]``, which reports ``rmse`` and ``nll`` (= ``gaussian_nll``).
    """
    if sample_means is not None:
        if mean is not None or std is not None:
            raise ValueError("give either sample_means (with noise_std) or mean and std, not both")
        if noise_std is None:
            raise ValueError("sample_means needs the likelihood's noise_std")
        sample_means = jnp.asarray(sample_means)
        predictive_mean = jnp.mean(sample_means, axis=0)
        predictive_std = jnp.sqrt(jnp.var(sample_means, axis=0) + jnp.asarray(noise_std) ** 2)
        return {"rmse": float(rmse(predictive_mean, y)),
                "nll": float(mixture_gaussian_nll(sample_means, noise_std, y)),
                "gaussian_nll": float(gaussian_nll(predictive_mean, predictive_std, y))}
    if mean is None or std is None:
        raise ValueError("give either sample_means and noise_std, or mean and std")
    value = float(gaussian_nll(mean, std, y))
    return {"rmse": float(rmse(mean, y)), "nll": value, "gaussian_nll": value}

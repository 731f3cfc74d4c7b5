"""Closed-form KL divergences and log-normal moments (``math.md`` §4).

All functions are elementwise and broadcast; sum the result yourself.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import gammaln

HALF_LOG_2PI = 0.5 * jnp.log(2.0 * jnp.pi)


def kl_bernoulli(q: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
    """``KL(Bern(q) || Bern(p)) = q log(q/p) + (1-q) log((1-q)/(1-p))``, with ``0 log 0 = 0``."""
    return (jnp.where(q > 0, q * (jnp.log(q) - jnp.log(p)), 0.0)
            + jnp.where(q < 1, (1 - q) * (jnp.log1p(-q) - jnp.log1p(-p)), 0.0))


def kl_bernoulli_logits(logits: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
    """``KL(Bern(sigmoid(logits)) || Bern(p))``, stable for large ``|logits|``."""
    q = jnp.exp(-jnp.logaddexp(0.0, -logits))
    log_q, log_1mq = -jnp.logaddexp(0.0, -logits), -jnp.logaddexp(0.0, logits)
    return q * (log_q - jnp.log(p)) + (1 - q) * (log_1mq - jnp.log1p(-p))


def kl_normal(loc: jnp.ndarray, scale: jnp.ndarray, prior_var) -> jnp.ndarray:
    """``KL(N(loc, scale^2) || N(0, prior_var))``."""
    return 0.5 * jnp.log(prior_var) - jnp.log(scale) + (scale**2 + loc**2) / (2 * prior_var) - 0.5


def kl_normal_expected_var(loc, scale, expected_log_var, expected_inv_var) -> jnp.ndarray:
    """``E_v[KL(N(loc, scale^2) || N(0, v))]`` given ``E[log v]`` and ``E[1/v]`` (centred form)."""
    return 0.5 * expected_log_var - jnp.log(scale) + 0.5 * (scale**2 + loc**2) * expected_inv_var - 0.5


def lognormal_entropy(scale) -> jnp.ndarray:
    """Entropy of ``log x`` for ``x ~ LN(m, scale^2)``: ``1/2 + 1/2 log(2 pi) + log scale``."""
    return 0.5 + HALF_LOG_2PI + jnp.log(scale)


def lognormal_mean(loc, scale, power=1.0) -> jnp.ndarray:
    """``E[x^power]`` for ``x ~ LN(loc, scale^2)``."""
    return jnp.exp(power * loc + 0.5 * (power * scale) ** 2)


def kl_lognormal_gamma(loc, scale, shape, log_rate, rate) -> jnp.ndarray:
    """``KL(LN(loc, scale^2) || Gamma(shape, rate))``.

    ``log_rate`` and ``rate`` may be the expectations ``E[log r]`` and ``E[r]`` under another
    variational factor (the KL is linear in both), which gives the expected KL.
    """
    return (-shape * log_rate + gammaln(shape) - shape * loc + rate * lognormal_mean(loc, scale)
            - lognormal_entropy(scale))


def kl_lognormal_invgamma(loc, scale, shape, scale_param) -> jnp.ndarray:
    """``KL(LN(loc, scale^2) || InvGamma(shape, scale=scale_param))``."""
    return (-shape * jnp.log(scale_param) + gammaln(shape) + shape * loc
            + scale_param * lognormal_mean(loc, scale, -1.0) - lognormal_entropy(scale))


def kl_lognormal_halfnormal(loc, scale, prior_scale) -> jnp.ndarray:
    """``KL(LN(loc, scale^2) || HalfNormal(prior_scale))`` (the Gaussian likelihood's noise)."""
    expected_log_p = (jnp.log(2.0) - HALF_LOG_2PI - jnp.log(prior_scale)
                      - lognormal_mean(loc, scale, 2.0) / (2 * prior_scale**2))
    expected_log_q = -(loc + lognormal_entropy(scale))
    return expected_log_q - expected_log_p

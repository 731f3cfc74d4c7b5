"""The distributions of the node indicators and the weights, in the model and the guide (``math.md`` §3-§4).

* :class:`ConcreteBernoulli`: the binary Concrete (relaxed Bernoulli) with logits ``theta`` and
  temperature ``T``; its density is computed in logit space, and its hard (straight-through)
  variant, an exact Bernoulli draw, has the Bernoulli probability as its density.
* :class:`RelaxedIndicator`: the indicator site ``{layer}.z`` of the prior (logits
  ``logit(lambda_l)``) and of the guide (logits ``theta``). Sampled like :class:`ConcreteBernoulli`
  and scored as the Bernoulli event ``1[z > 1/2]`` that the sample stands for, so that a Monte
  Carlo ``E_q[log q(z) - log p(z)]`` estimates the closed-form ``KL(Bern(gamma) || Bern(lambda))``
  of the ELBO (exactly its terms, draw by draw, for hard samples).
* :class:`GatedNormal`: the guide's ``q(w~ | z)`` of ``math.md`` §3: the slab ``N(mu, sigma^2)``
  where the gate (the unit's indicator event times its masks) is 1, the prior where it is 0.
  It samples the slab everywhere: where the gate is 0 the value never reaches the network
  (hard indicators, masks), and its density there is the prior's, so the entry leaves the KL.
  That is the ``gamma * KL(N(mu, sigma^2) || N(0, sigma_0^2))`` of the closed form.

``kl_divergence`` is registered for the pairs the library's model and guide form (indicator
against indicator, gated weight against its normal prior), so ``TraceMeanField_ELBO`` takes those
in closed form given the sampled indicators.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.kl import kl_divergence

__all__ = ["ConcreteBernoulli", "GatedNormal", "RelaxedIndicator", "indicator_event"]

# the largest float32 below 1: a soft sample that rounds to 1.0 is scored as this
_BELOW_ONE = float(jnp.nextafter(jnp.float32(1.0), jnp.float32(0.0)))


def indicator_event(value: jax.Array) -> jax.Array:
    """``1[value > 1/2]`` forward, ``value``'s gradient backward: the Bernoulli event a relaxed
    indicator stands for (a hard sample is its own event, value and gradient)."""
    return value + jax.lax.stop_gradient((value > 0.5).astype(value.dtype) - value)


def _bernoulli_log_prob(logits: jax.Array, event: jax.Array) -> jax.Array:
    return event * jax.nn.log_sigmoid(logits) + (1 - event) * jax.nn.log_sigmoid(-logits)


class ConcreteBernoulli(dist.Distribution):
    """Binary Concrete (relaxed Bernoulli) with logits ``theta`` and temperature ``T``.

    ``y = sigmoid((theta + log U - log(1 - U)) / T)``, ``U ~ Uniform(0, 1)``. With ``hard=True``
    the sample is ``1[y > 0.5]`` forward with ``y``'s gradient backward (straight-through), which
    is an exact ``Bernoulli(sigmoid(theta))`` draw.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    reparametrized_params = ["logits"]
    pytree_data_fields = ("logits",)
    pytree_aux_fields = ("temperature", "hard")

    def __init__(self, logits, temperature: float = 0.5, hard: bool = True, *, validate_args=None):
        self.logits, self.temperature, self.hard = logits, temperature, hard
        super().__init__(batch_shape=jnp.shape(logits), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        u = jax.random.uniform(key, shape, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
        soft = jax.nn.sigmoid((self.logits + jnp.log(u) - jnp.log1p(-u)) / self.temperature)
        if not self.hard:
            return soft
        hard = (soft > 0.5).astype(soft.dtype)
        return soft + jax.lax.stop_gradient(hard - soft)

    def log_prob(self, value):
        """Hard: the Bernoulli log-probability of the 0/1 value. Soft: the Concrete log-density,
        through the logit ``x = log y - log(1 - y)`` (a logistic of location ``theta / T`` and
        scale ``1 / T``) and the Jacobian of ``y = sigmoid(x)``; values that round to 0 or 1 in
        float32 are scored at the nearest representable interior point."""
        if self.hard:
            return _bernoulli_log_prob(self.logits, value)
        t = self.temperature
        y = jnp.clip(value, jnp.finfo(jnp.float32).tiny, _BELOW_ONE)
        log_y, log_1my = jnp.log(y), jnp.log1p(-y)
        centred = self.logits - t * (log_y - log_1my)
        return jnp.log(t) + centred - 2 * jax.nn.softplus(centred) - log_y - log_1my

    @property
    def mean(self):
        return jax.nn.sigmoid(self.logits)


class RelaxedIndicator(ConcreteBernoulli):
    """The library's indicator: a :class:`ConcreteBernoulli` sample scored as its Bernoulli event.

    ``log_prob(z) = mask * log Bern(1[z > 1/2]; sigmoid(logits))`` with the straight-through
    gradient of :func:`indicator_event`; ``mask`` (``[units]``, optional) zeroes units switched
    off for good, which leave the KL. Prior and guide use this same distribution (logits
    ``logit(lambda)`` and ``theta``), so their Monte Carlo KL has the closed form's mean.
    """

    pytree_data_fields = ("mask",)

    def __init__(self, logits, temperature: float = 0.5, hard: bool = True, mask=None, *, validate_args=None):
        self.mask = mask
        super().__init__(logits, temperature, hard, validate_args=validate_args)

    def log_prob(self, value):
        log_prob = _bernoulli_log_prob(self.logits, indicator_event(value))
        return log_prob if self.mask is None else log_prob * self.mask


class GatedNormal(dist.Normal):
    """``q(w~ | z)``: the ``slab`` ``Normal(loc, scale)`` where ``gate`` is 1, ``prior`` where it
    is 0 (``gate`` in {0, 1}). A ``Normal(loc, scale)`` in every respect but its density.

    Args:
      slab: the guide's ``Normal(mu, sigma)`` (or :class:`~sparse_bnn.core.noise.HashNormal`),
        which draws every sample.
      gate: ``[shape of slab]`` (broadcasting) 0/1: the unit's indicator event times its masks.
      prior: the model's ``Normal`` of the same entries (its density where the gate is 0).
    """

    pytree_data_fields = ("slab", "gate", "prior")

    def __init__(self, slab: dist.Normal, gate: jax.Array, prior: dist.Normal, *, validate_args=None):
        self.slab, self.gate, self.prior = slab, gate, prior
        super().__init__(slab.loc, slab.scale, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        return self.slab.sample(key, sample_shape)

    def log_prob(self, value):
        return self.gate * self.slab.log_prob(value) + (1 - self.gate) * self.prior.log_prob(value)


@kl_divergence.register(RelaxedIndicator, RelaxedIndicator)
def _kl_indicators(q: RelaxedIndicator, p: RelaxedIndicator):
    """``KL(Bern(sigmoid(q.logits)) || Bern(sigmoid(p.logits)))`` per unit, times ``q.mask``."""
    kl = (jax.nn.sigmoid(q.logits) * (jax.nn.log_sigmoid(q.logits) - jax.nn.log_sigmoid(p.logits))
          + jax.nn.sigmoid(-q.logits) * (jax.nn.log_sigmoid(-q.logits) - jax.nn.log_sigmoid(-p.logits)))
    return kl if q.mask is None else kl * q.mask


@kl_divergence.register(GatedNormal, dist.Normal)
def _kl_gated_normal(q: GatedNormal, p: dist.Normal):
    """``gate * KL(slab || p) + (1 - gate) * KL(q.prior || p)`` given the gate (the second is 0
    when the guide's prior is the model's)."""
    return q.gate * kl_divergence(q.slab, p) + (1 - q.gate) * kl_divergence(q.prior, p)

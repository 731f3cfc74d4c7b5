"""The ELBO of ``math.md`` §4: one joint sample for the likelihood, the KL in closed form.

Per data point (what :func:`sparse_bnn.train.fit` minimises and reports)::

    loss = -(1/B) sum_batch log p(y | x, w) + KL / N

:class:`AnalyticKLELBO` is the same objective as a NumPyro ELBO (``N * loss``, NumPyro's
convention of the total negative ELBO), for ``numpyro.infer.SVI``.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import ELBO

from sparse_bnn.core.kl import kl_bernoulli_logits, kl_lognormal_halfnormal
from sparse_bnn.nets.base import unit_broadcast
from sparse_bnn.core.spec import (NOISE_PRIOR_SCALE, NOISE_SITE, Masks, ModelSpec, lognormal_factors, loc_param,
                                  logit_param, rho_param, softplus, weight_site)


def analytic_kl(bnn: ModelSpec, params: Mapping[str, jax.Array], masks: Masks | None = None) -> jax.Array:
    """``KL(q || p)`` of every latent site, in closed form (``math.md`` §4); a scalar.

    ``sum_lj [KL(Bern(gamma) || Bern(lambda_l)) + gamma KL(q(w~_lj) || p(w~_lj))]`` over indicated
    groups, the plain normal KL elsewhere, plus the scales' log-normal KLs. Units and entries
    that ``masks`` switch off are fixed at zero and leave the sum (prior and guide agree there).
    With frozen indicators the gate is the unit mask itself.
    """
    masks = masks or Masks()
    prior, centred = bnn.prior, bnn.options.centred
    factors = lognormal_factors(bnn, params)
    total = prior.scale_kl(factors, bnn.layers)
    if bnn.options.learns_noise:
        total += kl_lognormal_halfnormal(factors[NOISE_SITE].loc, factors[NOISE_SITE].scale, NOISE_PRIOR_SCALE)
    gates, moments = {}, {}
    for layer in bnn.layers:
        unit_mask = masks.units.get(layer.name)
        if bnn.samples_indicator(layer):
            logits = params[logit_param(layer.name)]
            kl_z = kl_bernoulli_logits(logits, bnn.inclusion[layer.name])
            gates[layer.name] = jax.nn.sigmoid(logits)
            if unit_mask is not None:
                kl_z, gates[layer.name] = kl_z * unit_mask, gates[layer.name] * unit_mask
            total += jnp.sum(kl_z)
        elif unit_mask is not None:
            gates[layer.name] = unit_mask
        if centred:
            moments[layer.name] = prior.variance_moments(factors, layer)
    for path in bnn.shapes:
        site = weight_site(path)
        loc, scale = params[loc_param(site)], softplus(params[rho_param(site)])
        weight_mask = masks.weights.get(site, 1.0)
        if path not in bnn.owner:
            total += jnp.sum(prior.slab_kl(loc, scale) * weight_mask)
            continue
        layer, axis = bnn.owner[path]
        if centred:
            log_var, inv_var = moments[layer.name]
            kl = prior.scaled_slab_kl(loc, scale, unit_broadcast(log_var, loc.ndim, axis),
                                      unit_broadcast(inv_var, loc.ndim, axis))
        else:
            kl = prior.slab_kl(loc, scale)
        if layer.name in gates:
            kl = kl * unit_broadcast(gates[layer.name], loc.ndim, axis)
        total += jnp.sum(kl * weight_mask)
    return total


class ELBOTerms(NamedTuple):
    """``log_likelihood``: minibatch log-likelihood scaled to the full data (``N/B sum``);
    ``kl``: the closed-form KL."""

    log_likelihood: jax.Array
    kl: jax.Array


def elbo_terms(rng_key: jax.Array, params: Mapping[str, jax.Array], model: Callable, guide: Callable,
               kl_fn: Callable, *args, **kwargs) -> ELBOTerms:
    """One joint guide sample, the model replayed on it, and the closed-form KL."""
    guide_trace = trace(substitute(seed(guide, rng_key), data=params)).get_trace(*args, **kwargs)
    model_trace = trace(replay(substitute(seed(model, rng_key), data=params), guide_trace)
                        ).get_trace(*args, **kwargs)
    masks = kwargs.get("masks")
    log_likelihood = jnp.zeros(())
    for site in model_trace.values():
        if site["type"] == "sample" and site["is_observed"]:
            log_prob = jnp.sum(site["fn"].log_prob(site["value"]))
            log_likelihood += log_prob * (site["scale"] if site["scale"] is not None else 1.0)
    return ELBOTerms(log_likelihood, kl_fn(params, masks) if masks is not None else kl_fn(params))


class AnalyticKLELBO(ELBO):
    """Negative ELBO with a closed-form KL: ``-(N/B) sum log p(y|x,w) + KL``.

    Args:
      kl_fn: ``params -> KL(q || p)``, e.g. :meth:`SparseBNN.kl`.
    """

    # Discrete indicators are handled by the relaxed guide and the closed-form Bernoulli KL.
    can_infer_discrete = True

    def __init__(self, kl_fn: Callable[[Mapping[str, jax.Array]], jax.Array], num_particles: int = 1):
        super().__init__(num_particles=num_particles)
        self.kl_fn = kl_fn

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        def single(key):
            terms = elbo_terms(key, param_map, model, guide, self.kl_fn, *args, **kwargs)
            return terms.kl - terms.log_likelihood

        if self.num_particles == 1:
            loss = single(rng_key)
        else:
            loss = jnp.mean(jax.vmap(single)(jax.random.split(rng_key, self.num_particles)))
        return {"loss": loss, "mutable_state": None}

"""The ELBO of ``math.md`` §4: one joint sample for the likelihood, the KL in closed form.

Per data point (what :func:`sparse_bnn.train.fit` minimises and reports)::

    loss = -(1/B) sum_batch log p(y | x, w) + beta * KL / N        (beta = kl_weight, default 1)

:class:`AnalyticKLELBO` is the same objective as a NumPyro ELBO (``N * loss``, NumPyro's
convention of the total negative ELBO), for ``numpyro.infer.SVI``. It is *hybrid*: the KL of the
library's sites (found by their :class:`~sparse_bnn.core.spec.LibrarySite` tags, under any name or
scope, one closed form per model) in closed form, every other latent site of the user's model and
guide by ``numpyro.distributions.kl_divergence`` where registered, else by Monte Carlo
``log q - log p`` at the guide's sample (as ``Trace_ELBO``), so no latent is left out.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from numpyro.distributions.kl import kl_divergence
from numpyro.distributions.util import scale_and_mask
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import ELBO

from sparse_bnn.core.kl import kl_bernoulli_logits, kl_lognormal_halfnormal
from sparse_bnn.nets.base import unit_broadcast
from sparse_bnn.core.sites import library_tag
from sparse_bnn.core.spec import (NOISE_PRIOR_SCALE, NOISE_SITE, Masks, ModelSpec, lognormal_factors, loc_param,
                                  logit_param, rho_param, softplus, weight_site)

_LIBRARY_KL = "_closed_form_of_library_sites"


def closed_form_of_library_sites(kl_fn: Callable) -> Callable:
    """Marks ``kl_fn`` (:meth:`SparseBNN.kl`) as the closed form of a model's own sites: an ELBO
    given it finds the models in the guide's trace itself and scores every other site too."""
    setattr(kl_fn, _LIBRARY_KL, True)
    return kl_fn


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
    """``log_likelihood``: the observed sites' log-density, minibatch scaled to the full data
    (``N/B sum``); ``kl``: the KL term, ``sum over models kl_weight * KL`` in closed form plus
    the other latent sites' KL (a Monte Carlo estimate where no closed form is registered)."""

    log_likelihood: jax.Array
    kl: jax.Array


def _log_prob_sum(site) -> jax.Array:
    fn, value = site["fn"], site["value"]
    log_prob = fn.log_prob(value, site["intermediates"]) if site.get("intermediates") else fn.log_prob(value)
    return jnp.sum(scale_and_mask(log_prob, scale=site["scale"]))


def library_kl(guide_trace) -> tuple[list[jax.Array], set[str]]:
    """The closed-form KL term of every model in ``guide_trace`` (``kl_weight * KL``, one per
    model and enclosing prefix) and the names of the sites they cover.

    A model's parameters are read from the trace's ``param`` sites at the model's prefix (the
    trace name minus the site's name within the model), its masks from its sites' tags.
    """
    models, covered = {}, set()
    for name, site in guide_trace.items():
        tag = library_tag(site) if site["type"] == "sample" else None
        if tag is None:
            continue
        if not name.endswith(tag.name):
            raise ValueError(f"site {name!r} does not end with its name {tag.name!r} in the model; rename "
                             "with numpyro.handlers.scope (a prefix), not by another handler")
        models.setdefault((id(tag.model), name[: len(name) - len(tag.name)]), tag)
        covered.add(name)
    terms = []
    for (_, prefix), tag in models.items():
        bnn = tag.model
        params = {k: guide_trace[prefix + k]["value"] for k in bnn.initial_params if prefix + k in guide_trace}
        kl = analytic_kl(bnn, params, tag.masks)
        terms.append(kl if bnn.options.kl_weight == 1.0 else bnn.options.kl_weight * kl)
    return terms, covered


def monte_carlo_kl(model_trace, guide_trace, covered: set[str]) -> list[jax.Array]:
    """The KL terms of the latent sites not in ``covered``: ``kl_divergence(q, p)`` where NumPyro
    has it registered (scaled as the guide's site), else ``log q - log p`` at the guide's value;
    a guide-only site (auxiliary) adds ``log q``. ``ValueError`` for a model latent the guide lacks."""
    terms = []
    for name, site in model_trace.items():
        if site["type"] != "sample" or site["is_observed"] or name in covered:
            continue
        if name not in guide_trace:
            raise ValueError(f"the model's latent site {name!r} has no site in the guide; add one to the guide "
                             "(or observe it)")
        guide_site = guide_trace[name]
        try:
            terms.append(jnp.sum(scale_and_mask(kl_divergence(guide_site["fn"], site["fn"]), scale=guide_site["scale"])))
        except NotImplementedError:
            terms.append(_log_prob_sum(guide_site) - _log_prob_sum(site))
    for name, site in guide_trace.items():
        if site["type"] == "sample" and not site["is_observed"] and name not in covered and name not in model_trace:
            terms.append(_log_prob_sum(site))
    return terms


def elbo_terms(rng_key: jax.Array, params: Mapping[str, jax.Array], model: Callable, guide: Callable,
               kl_fn: Callable | None, *args, **kwargs) -> ELBOTerms:
    """One joint guide sample, the model replayed on it, and the KL term.

    ``kl_fn`` ``None`` or a model's :meth:`~sparse_bnn.core.model.SparseBNN.kl`: the hybrid KL of
    the module docstring. Any other ``kl_fn(params[, masks])`` is taken as the closed-form KL of
    every latent site (``masks`` from ``kwargs`` when given), and nothing else is added.
    """
    guide_trace = trace(substitute(seed(guide, rng_key), data=params)).get_trace(*args, **kwargs)
    model_trace = trace(replay(substitute(seed(model, rng_key), data=params), guide_trace)
                        ).get_trace(*args, **kwargs)
    log_likelihood = jnp.zeros(())
    for site in model_trace.values():
        if site["type"] == "sample" and site["is_observed"]:
            log_prob = jnp.sum(site["fn"].log_prob(site["value"]))
            log_likelihood += log_prob * (site["scale"] if site["scale"] is not None else 1.0)
    if kl_fn is not None and not getattr(kl_fn, _LIBRARY_KL, False):
        masks = kwargs.get("masks")
        return ELBOTerms(log_likelihood, kl_fn(params, masks) if masks is not None else kl_fn(params))
    terms, covered = library_kl(guide_trace)
    terms += monte_carlo_kl(model_trace, guide_trace, covered)
    kl = terms[0] if terms else jnp.zeros(())
    for term in terms[1:]:
        kl = kl + term
    return ELBOTerms(log_likelihood, kl)


class AnalyticKLELBO(ELBO):
    """Negative ELBO with the library's KL in closed form: ``-(N/B) sum log p(y|x,w) + KL term``.

    The KL term (:func:`elbo_terms`): for the library's sites (every
    :class:`~sparse_bnn.core.model.SparseBNN` in the guide, under any ``name`` or
    ``numpyro.handlers.scope``), ``kl_weight * KL`` in closed form; for every other latent site
    of the model and the guide, ``kl_divergence`` where registered, else Monte Carlo.

    Args:
      kl_fn: ``None`` or a model's ``kl`` (:meth:`SparseBNN.kl`; ``bnn.elbo()``) for that hybrid
        KL; any other ``params -> KL`` is taken as the closed-form KL of all latents (and
        ``kl_weight`` is then the function's business).
      num_particles: joint samples averaged per step.
    """

    # Discrete indicators are handled by the relaxed guide and the closed-form Bernoulli KL.
    can_infer_discrete = True

    def __init__(self, kl_fn: Callable[[Mapping[str, jax.Array]], jax.Array] | None = None, num_particles: int = 1):
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

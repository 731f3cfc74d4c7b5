"""From variational parameters to what users ask of a posterior (``math.md`` §5).

Inclusion probabilities, the median-probability model with posterior-mean weights (scales
folded in), posterior samples of the network's parameters, and predictions by Bayesian model
averaging over ``S`` samples. (:func:`batched` and :func:`sampled_outputs`, which need no model,
live in :mod:`sparse_bnn.compact.io`; they are importable from here too.)

Every function takes the variational parameters as NumPyro names them (``svi.get_params``,
``FitResult.params``): a model made with ``name="enc"`` reads its ``enc.*`` entries
(:meth:`~sparse_bnn.core.model.SparseBNN.local_names`).
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.handlers import seed, substitute, trace

from sparse_bnn.compact.io import batched, sampled_outputs
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets.base import Path, unit_broadcast
from sparse_bnn.core.noise import hash_normal
from sparse_bnn.core.spec import NOISE_SITE, Masks, lognormal_factors, loc_param, logit_param, weight_site


def inclusion_probs(bnn: SparseBNN, params: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """``{layer: gamma [units]}`` for every layer with (trainable) indicators."""
    params = bnn.local_names(params)
    return {l.name: jax.nn.sigmoid(params[logit_param(l.name)]) for l in bnn.indicated_layers
            if bnn.samples_indicator(l)}


def keep_masks(bnn: SparseBNN, params: Mapping[str, jax.Array], threshold: float = 0.5,
               masks: Masks | None = None) -> dict[str, jax.Array]:
    """``{layer: bool [units]}``: keep unit ``j`` when ``gamma_j > threshold`` (median model at 0.5)
    and no mask has switched it off. With frozen indicators the unit masks decide alone."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    masks, params = masks or Masks(), bnn.local_names(params)
    keep = {}
    for layer in bnn.layers[:-1]:
        kept = None
        if bnn.samples_indicator(layer):
            kept = jax.nn.sigmoid(params[logit_param(layer.name)]) > threshold
        if layer.name in masks.units:
            unit_kept = jnp.asarray(masks.units[layer.name]) > 0.5
            kept = unit_kept if kept is None else kept & unit_kept
        if kept is not None:
            keep[layer.name] = kept
    return keep


def expected_weight_scales(bnn: SparseBNN, params: Mapping[str, jax.Array], n_samples: int = 2048,
                           seed_: int = 0) -> dict[str, jax.Array]:
    """``E_q[scale]`` per layer: the prior's closed form (``Prior.expected_weight_scale``) where
    it has one, else the mean over ``n_samples`` draws of the log-normal scale factors (fixed
    seed; :func:`sparse_bnn.core.noise.hash_normal` noise, whose program compiles faster than
    threefry's: this runs inside every validation program a training run compiles)."""
    factors = lognormal_factors(bnn, bnn.local_names(params))
    scales = {layer.name: bnn.prior.expected_weight_scale(factors, layer) for layer in bnn.layers}
    missing = [layer for layer in bnn.layers if scales[layer.name] is None]
    if missing:
        keys = jax.random.split(jax.random.PRNGKey(seed_), len(factors))
        draws = {name: jnp.exp(f.loc + f.scale * hash_normal(k, (n_samples, *jnp.shape(f.loc))))
                 for (name, f), k in zip(factors.items(), keys)}
        sampled = jax.vmap(lambda values: {layer.name: bnn.prior.weight_scale(values, layer)
                                           for layer in missing})(draws)
        scales.update({name: jnp.mean(s, axis=0) for name, s in sampled.items()})
    return scales


def posterior_mean_params(bnn: SparseBNN, params: Mapping[str, jax.Array], threshold: float = 0.5,
                          masks: Masks | None = None) -> tuple[dict[Path, jax.Array], dict[str, jax.Array]]:
    """The median-probability model: posterior-mean weights of kept groups, zero elsewhere.

    Returns ``(weights {path: array}, keep {layer: bool [units]})``. For kept groups the weight is
    ``E[scale] * loc`` (non-centred) or ``loc`` (centred): ``E[w | z = 1]`` under the mean field.
    """
    masks = masks or Masks()
    keep = keep_masks(bnn, params, threshold, masks)
    scales = expected_weight_scales(bnn, params) if not bnn.centred else {}
    params = bnn.local_names(params)
    weights = {}
    for path in bnn.shapes:
        site = weight_site(path)
        w = params[loc_param(site)] * masks.weights.get(site, 1.0)
        if path in bnn.owner:
            layer, axis = bnn.owner[path]
            gate = jnp.ones(())
            if not bnn.centred:
                gate = gate * scales[layer.name]
            if layer.name in keep:
                gate = gate * keep[layer.name]
            w = w * unit_broadcast(gate, w.ndim, axis)
        weights[path] = w
    return weights, keep


def sample_latents(bnn: SparseBNN, params: Mapping[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    """One joint draw of every latent site from the guide (indicators exactly Bernoulli), keyed
    by the sites' names within the model."""
    guide_trace = trace(substitute(seed(bnn.guide, key), data=params)).get_trace()
    return bnn.local_names({name: site["value"] for name, site in guide_trace.items() if site["type"] == "sample"})


def sample_params(bnn: SparseBNN, params: Mapping[str, jax.Array], key: jax.Array, n_samples: int = 10,
                  masks: Masks | None = None) -> dict[Path, jax.Array]:
    """``{path: [S, ...]}``: ``S`` posterior draws of the network's effective parameters."""
    # jitted: run eagerly, the vmapped guide compiled each of its ~100 operations at every call
    draw = bnn.program("sample_params", lambda params, masks, keys: jax.vmap(
        lambda key: bnn.effective_params(sample_latents(bnn, params, key), masks))(keys))
    return draw(params, masks or Masks(), jax.random.split(key, n_samples))


def averaged_probs(apply: Callable, samples: Mapping[Path, jax.Array], x: jax.Array) -> jax.Array:
    """Class probabilities ``[B, C]``: each sample's softmax, averaged (Bayesian model averaging)."""
    return jnp.mean(jax.nn.softmax(sampled_outputs(apply, samples, x), axis=-1), axis=0)


def predict(bnn: SparseBNN, params: Mapping[str, jax.Array], x, *, n_samples: int = 10,
            key: jax.Array | None = None, batch_size: int = 2048, masks: Masks | None = None) -> np.ndarray:
    """Bayesian model averaging over ``n_samples`` posterior draws.

    Returns class probabilities ``[N, C]`` (categorical) or sampled means ``[S, N, out]``
    (gaussian; combine with the noise for a predictive distribution).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    samples = sample_params(bnn, params, key, n_samples, masks)
    average = averaged_probs if bnn.likelihood == "categorical" else sampled_outputs
    outputs = bnn.program(average.__name__, lambda s, xb: average(bnn.functional.apply, s, xb))
    # the samples are an argument: closed over, they would be constants folded into the program
    return batched(lambda xb: outputs(samples, xb), np.asarray(x, np.float32), batch_size)


def predict_mean(bnn: SparseBNN, params: Mapping[str, jax.Array], x, *, threshold: float = 0.5,
                 batch_size: int = 4096, masks: Masks | None = None) -> np.ndarray:
    """Outputs of the median-probability network with posterior-mean weights: logits or means."""
    weights = bnn.program(f"posterior_mean_weights_{threshold!r}", lambda params, masks: posterior_mean_params(
        bnn, params, threshold, masks)[0])(params, masks or Masks())
    outputs = bnn.program("outputs", bnn.functional.apply)
    return batched(lambda xb: outputs(weights, xb), np.asarray(x, np.float32), batch_size)


def noise_scale(bnn: SparseBNN, params: Mapping[str, jax.Array]) -> float:
    """The Gaussian likelihood's noise: fixed, or the posterior median of the learned one."""
    if bnn.likelihood != "gaussian":
        raise ValueError("noise_scale is for the gaussian likelihood")
    return float(bnn.noise) if bnn.noise is not None else float(jnp.exp(bnn.local_names(params)[loc_param(NOISE_SITE)]))

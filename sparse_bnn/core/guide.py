"""The structured mean-field guide of ``math.md`` §3.

* ``q(z_lj) = Bernoulli(sigmoid(theta_lj))``, sampled through the binary Concrete relaxation
  at temperature ``T``; the hard (straight-through) variant is exactly Bernoulli forward
  (:class:`~sparse_bnn.core.distributions.RelaxedIndicator`).
* ``q(w~ | z = 1) = N(loc, softplus(rho)^2)`` per weight, ``loc`` at the network's fan-in
  initialisation, its noise from ``options.weight_noise`` (:mod:`sparse_bnn.core.noise`);
  ``q(w~ | z = 0)`` is the prior (:class:`~sparse_bnn.core.distributions.GatedNormal`), as for
  units and weights the masks switch off.
* ``q(scale) = LogNormal(loc, softplus(rho)^2)`` per scale site.

Every latent site is tagged and named as :func:`sparse_bnn.core.sites.latent_sites` says, so any
NumPyro ELBO scores the guide against the model consistently with the closed-form KL.

Variational parameter names (:mod:`sparse_bnn.core.spec`): ``{site}.loc`` / ``{site}.rho`` for normal
and log-normal factors, ``{layer}.z.logit`` for the indicators. The functions take any
:class:`~sparse_bnn.core.spec.ModelSpec` (a :class:`~sparse_bnn.core.model.SparseBNN`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sparse_bnn.nets.base import Path, unit_broadcast
from sparse_bnn.core.distributions import ConcreteBernoulli, GatedNormal, RelaxedIndicator, indicator_event
from sparse_bnn.core.noise import WEIGHT_NOISE, hash_normal_many
from sparse_bnn.core.sites import latent_sites
from sparse_bnn.core.spec import (NOISE_SITE, Masks, ModelSpec, indicator_site, lognormal_factors, loc_param,
                                  logit_param, rho_param, scale_site_names, softplus, weight_site)

__all__ = ["ConcreteBernoulli", "init_params", "lognormal_factors", "sample_guide", "softplus", "weight_prior_std"]


def init_params(bnn: ModelSpec) -> dict[str, jax.Array]:
    """Initial variational parameters ``{name: array}``.

    ``loc`` of ``w~`` is the network's own initialisation divided by the initial weight scale,
    so that the initial effective network is the standard fan-in initialised one.
    """
    options = bnn.options
    params: dict[str, jax.Array] = {}
    initial_values = {}
    for site in bnn.prior.scale_sites(bnn.layers):
        params[loc_param(site.name)] = jnp.full(site.shape, site.init_loc, jnp.float32)
        params[rho_param(site.name)] = jnp.full(site.shape, options.rho_init, jnp.float32)
        initial_values[site.name] = jnp.exp(params[loc_param(site.name)])
    if options.learns_noise:
        params[loc_param(NOISE_SITE)] = jnp.asarray(np.log(0.5), jnp.float32)
        params[rho_param(NOISE_SITE)] = jnp.asarray(options.rho_init, jnp.float32)
    for layer in bnn.indicated_layers:
        logit = np.log(options.init_inclusion) - np.log1p(-options.init_inclusion)
        params[logit_param(layer.name)] = jnp.full((layer.units,), logit, jnp.float32)
    for path, init in bnn.functional.initial.items():
        loc = jnp.asarray(init, jnp.float32)
        if path in bnn.owner and not options.centred:
            layer, axis = bnn.owner[path]
            scale = bnn.prior.weight_scale(initial_values, layer)
            loc = loc / unit_broadcast(scale, loc.ndim, axis)
        site = weight_site(path)
        params[loc_param(site)] = loc
        params[rho_param(site)] = jnp.full(loc.shape, options.rho_init, jnp.float32)
    return params


def sample_guide(bnn: ModelSpec, masks: Masks | None = None) -> dict[str, jax.Array]:
    """The guide body: ``numpyro.param`` + ``numpyro.sample`` of every latent site.

    Returns ``{site: value}`` (site names within the model, without its ``name``). Under
    ``options.partitionable_noise`` (when set) as ``jax_threefry_partitionable``.
    """
    partitionable = bnn.options.partitionable_noise
    with latent_sites(bnn, masks):
        if partitionable is None:
            return _sample_sites(bnn, masks or Masks())
        with jax.threefry_partitionable(partitionable):
            return _sample_sites(bnn, masks or Masks())


def weight_prior_std(bnn: ModelSpec, path: Path, values) -> jax.Array:
    """The model's prior standard deviation of the weight site at ``path`` given the scale
    sites' ``values``: the slab ``sigma_0``, times the unit's weight scale in the centred form."""
    shape = bnn.shapes[path]
    std = bnn.prior.slab_std(shape)
    if bnn.options.centred and path in bnn.owner:
        layer, axis = bnn.owner[path]
        std = std * unit_broadcast(bnn.prior.weight_scale(values, layer), len(shape), axis)
    return std


def _weight_gate(bnn: ModelSpec, path: Path, values, masks: Masks) -> jax.Array | None:
    """The 0/1 gate of ``q(w~ | z)`` at ``path`` (indicator event times masks), ``None`` if always 1."""
    site, gate = weight_site(path), None
    if path in bnn.owner:
        layer, axis = bnn.owner[path]
        unit_gate = None
        if bnn.samples_indicator(layer):
            unit_gate = indicator_event(values[indicator_site(layer.name)])
        if layer.name in masks.units:
            unit_gate = masks.units[layer.name] if unit_gate is None else unit_gate * masks.units[layer.name]
        if unit_gate is not None:
            gate = unit_broadcast(unit_gate, len(bnn.shapes[path]), axis)
    if site in masks.weights:
        gate = masks.weights[site] if gate is None else gate * masks.weights[site]
    return gate


def _sample_sites(bnn: ModelSpec, masks: Masks) -> dict[str, jax.Array]:
    options, init = bnn.options, bnn.initial_params

    def param(name):
        return numpyro.param(name, init[name])

    values = {}
    names = scale_site_names(bnn)
    scales = {name: (param(loc_param(name)), softplus(param(rho_param(name)))) for name in names}
    scale_keys, scale_noise = _scale_keys_and_noise(scales)
    for name in names:
        loc, scale = scales[name]
        fn = dist.LogNormal(loc, scale)
        if scale_noise is not None:
            fn.base_dist = DrawnNormal(fn.base_dist.loc, fn.base_dist.scale, scale_noise[name])
        values[name] = numpyro.sample(name, fn.to_event(jnp.ndim(loc)), rng_key=scale_keys.get(name))
    for layer in bnn.indicated_layers:
        if not bnn.samples_indicator(layer):
            continue
        site = indicator_site(layer.name)
        indicator = RelaxedIndicator(param(logit_param(layer.name)), options.temperature, options.hard,
                                     masks.units.get(layer.name))
        values[site] = numpyro.sample(site, indicator.to_event(1))
    weight_noise = WEIGHT_NOISE[options.weight_noise]
    factors = {path: (param(loc_param(weight_site(path))), softplus(param(rho_param(weight_site(path)))))
               for path in bnn.shapes}
    keys, noise = _weight_keys_and_noise(bnn, factors)
    for path, shape in bnn.shapes.items():
        site = weight_site(path)
        loc, scale = factors[path]
        slab = weight_noise(loc, scale) if noise is None else weight_noise(loc, scale, noise=noise[path])
        gate = _weight_gate(bnn, path, values, masks)
        if gate is not None:
            slab = GatedNormal(slab, gate, dist.Normal(0.0, weight_prior_std(bnn, path, values)))
        values[site] = numpyro.sample(site, slab.to_event(len(shape)), rng_key=keys.get(path))
    return values


class DrawnNormal(dist.Normal):
    """``Normal(loc, scale)`` whose sample is ``loc + noise * scale`` with ``noise`` the standard
    normals its key would draw (``jax.random.normal``), drawn already; other shapes draw their own."""

    pytree_data_fields = ("noise",)

    def __init__(self, loc, scale, noise, *, validate_args=None):
        self.noise = noise
        super().__init__(loc, scale, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        if tuple(sample_shape) or tuple(jnp.shape(self.noise)) != self.batch_shape + self.event_shape:
            return super().sample(key, sample_shape)
        return self.loc + self.noise * self.scale


def _batched_threefry() -> bool:
    """Whether ``jax.random.normal(key, shape)`` is ``jax.random.normal(key, (n,))[:size]``
    reshaped, for every ``n >= size`` (partitionable threefry: element ``i`` hashes counter ``i``)."""
    return bool(jax.config.jax_threefry_partitionable) and jax.config.jax_default_prng_impl == "threefry2x32"


def _scale_keys_and_noise(scales) -> tuple[dict, dict | None]:
    """Under a ``seed`` handler and partitionable threefry: every log-normal site's key, taken in
    the sites' order (those their ``numpyro.sample`` would take), and its standard normals, all
    drawn by one ``lax.map`` of ``jax.random.normal`` (the same numbers; one threefry program
    instead of one per site). Otherwise ``({}, None)``: each site draws its own."""
    if len(scales) < 2 or not _batched_threefry():
        return {}, None
    keys = {name: numpyro.prng_key() for name in scales}
    if any(key is None for key in keys.values()):
        return {}, None
    shapes = {name: jnp.shape(jnp.broadcast_arrays(loc, scale)[0]) for name, (loc, scale) in scales.items()}
    sizes = {name: int(np.prod(shape, dtype=np.int64)) for name, shape in shapes.items()}
    width = max(sizes.values())
    draws = jax.lax.map(lambda key: jax.random.normal(key, (width,)), jnp.stack(list(keys.values())))
    return keys, {name: draws[i, :sizes[name]].reshape(shapes[name]) for i, name in enumerate(scales)}


def _weight_keys_and_noise(bnn: ModelSpec, factors) -> tuple[dict, dict | None]:
    """With ``weight_noise="hash"`` under a ``seed`` handler: every weight site's key, taken in the
    sites' order (the keys their ``numpyro.sample`` would take), and their noise drawn at once by
    :func:`~sparse_bnn.core.noise.hash_normal_many` (same numbers, a much smaller program).
    Otherwise ``({}, None)``: each site draws its own."""
    if bnn.options.weight_noise != "hash" or len(bnn.shapes) < 2:
        return {}, None
    keys = {path: numpyro.prng_key() for path in bnn.shapes}
    if any(key is None for key in keys.values()):  # no seed handler: nothing was split
        return {}, None
    locs = [factors[path][0] for path in bnn.shapes]
    draws = hash_normal_many([keys[path] for path in bnn.shapes], [jnp.shape(loc) for loc in locs],
                             [jnp.result_type(loc) for loc in locs])
    return keys, dict(zip(bnn.shapes, draws))

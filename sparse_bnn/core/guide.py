"""The structured mean-field guide of ``math.md`` §3.

* ``q(z_lj) = Bernoulli(sigmoid(theta_lj))``, sampled through the binary Concrete relaxation
  at temperature ``T``; the hard (straight-through) variant is exactly Bernoulli forward.
* ``q(w~) = N(loc, softplus(rho)^2)`` per weight, ``loc`` at the network's fan-in initialisation;
  its noise comes from ``options.weight_noise`` (:mod:`sparse_bnn.core.noise`).
* ``q(scale) = LogNormal(loc, softplus(rho)^2)`` per scale site.

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
from numpyro.distributions import constraints

from sparse_bnn.nets.base import unit_broadcast
from sparse_bnn.core.noise import WEIGHT_NOISE
from sparse_bnn.core.spec import (NOISE_SITE, ModelSpec, indicator_site, lognormal_factors, loc_param, logit_param,
                                  rho_param, scale_site_names, softplus, weight_site)

__all__ = ["ConcreteBernoulli", "init_params", "lognormal_factors", "sample_guide", "softplus"]


class ConcreteBernoulli(dist.Distribution):
    """Binary Concrete (relaxed Bernoulli) with logits ``theta`` and temperature ``T``.

    ``y = sigmoid((theta + log U - log(1 - U)) / T)``, ``U ~ Uniform(0, 1)``. With ``hard=True``
    the sample is ``1[y > 0.5]`` forward with ``y``'s gradient backward (straight-through), which
    is an exact ``Bernoulli(sigmoid(theta))`` draw.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval
    reparametrized_params = ["logits"]

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
        """Concrete density of a soft value (the hard variant has no density; use the analytic KL)."""
        t, a = self.temperature, self.logits
        log_y, log_1my = jnp.log(value), jnp.log1p(-value)
        return (jnp.log(t) + a - (t + 1) * (log_y + log_1my)
                - 2 * jnp.logaddexp(a - t * log_y, -t * log_1my))

    @property
    def mean(self):
        return jax.nn.sigmoid(self.logits)


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


def sample_guide(bnn: ModelSpec) -> dict[str, jax.Array]:
    """The guide body: ``numpyro.param`` + ``numpyro.sample`` of every latent site.

    Returns ``{site: value}``. Under ``options.partitionable_noise`` (when set) as
    ``jax_threefry_partitionable``.
    """
    partitionable = bnn.options.partitionable_noise
    if partitionable is None:
        return _sample_sites(bnn)
    with jax.threefry_partitionable(partitionable):
        return _sample_sites(bnn)


def _sample_sites(bnn: ModelSpec) -> dict[str, jax.Array]:
    options, init = bnn.options, bnn.initial_params

    def param(name):
        return numpyro.param(name, init[name])

    values = {}
    for name in scale_site_names(bnn):
        loc, scale = param(loc_param(name)), softplus(param(rho_param(name)))
        values[name] = numpyro.sample(name, dist.LogNormal(loc, scale).to_event(jnp.ndim(loc)))
    for layer in bnn.indicated_layers:
        if not bnn.samples_indicator(layer):
            continue
        site = indicator_site(layer.name)
        values[site] = numpyro.sample(
            site, ConcreteBernoulli(param(logit_param(layer.name)), options.temperature, options.hard).to_event(1))
    weight_noise = WEIGHT_NOISE[options.weight_noise]
    for path, shape in bnn.shapes.items():
        site = weight_site(path)
        loc, scale = param(loc_param(site)), softplus(param(rho_param(site)))
        values[site] = numpyro.sample(site, weight_noise(loc, scale).to_event(len(shape)))
    return values

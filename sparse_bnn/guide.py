"""The structured mean-field guide of ``math.md`` §3.

* ``q(z_lj) = Bernoulli(sigmoid(theta_lj))``, sampled through the binary Concrete relaxation
  at temperature ``T``; the hard (straight-through) variant is exactly Bernoulli forward.
* ``q(w~) = N(loc, softplus(rho)^2)`` per weight, ``loc`` at the network's fan-in initialisation;
  its noise comes from ``bnn.weight_noise`` (:mod:`sparse_bnn.noise`).
* ``q(scale) = LogNormal(loc, softplus(rho)^2)`` per scale site.

Variational parameter names: ``{site}.loc`` / ``{site}.rho`` for normal and log-normal factors,
``{layer}.z.logit`` for the indicators.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from sparse_bnn.nets.base import unit_broadcast
from sparse_bnn.noise import WEIGHT_NOISE
from sparse_bnn.priors.base import LogNormalFactor

if TYPE_CHECKING:
    from sparse_bnn.model import SparseBNN


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


def softplus(x):
    return jax.nn.softplus(x)


def lognormal_factors(bnn: "SparseBNN", params: Mapping[str, jax.Array]) -> dict[str, LogNormalFactor]:
    """The guide's log-normal factor of every scale site (and ``noise``), from ``params``."""
    names = [s.name for s in bnn.prior.scale_sites(bnn.layers)] + (["noise"] if bnn.learns_noise else [])
    return {n: LogNormalFactor(params[f"{n}.loc"], softplus(params[f"{n}.rho"])) for n in names}


def init_params(bnn: "SparseBNN") -> dict[str, jax.Array]:
    """Initial variational parameters.

    ``loc`` of ``w~`` is the network's own initialisation divided by the initial weight scale,
    so that the initial effective network is the standard fan-in initialised one.
    """
    params: dict[str, jax.Array] = {}
    sites = bnn.prior.scale_sites(bnn.layers)
    initial_values = {}
    for site in sites:
        params[f"{site.name}.loc"] = jnp.full(site.shape, site.init_loc, jnp.float32)
        params[f"{site.name}.rho"] = jnp.full(site.shape, bnn.rho_init, jnp.float32)
        initial_values[site.name] = jnp.exp(params[f"{site.name}.loc"])
    if bnn.learns_noise:
        params["noise.loc"] = jnp.asarray(np.log(0.5), jnp.float32)
        params["noise.rho"] = jnp.asarray(bnn.rho_init, jnp.float32)
    for layer in bnn.indicated_layers:
        logit = np.log(bnn.init_inclusion) - np.log1p(-bnn.init_inclusion)
        params[f"{layer.name}.z.logit"] = jnp.full((layer.units,), logit, jnp.float32)
    for path, init in bnn.functional.initial.items():
        loc = jnp.asarray(init, jnp.float32)
        if path in bnn.owner and not bnn.centred:
            layer, axis = bnn.owner[path]
            scale = bnn.prior.weight_scale(initial_values, layer)
            loc = loc / unit_broadcast(scale, loc.ndim, axis)
        site = bnn.weight_site(path)
        params[f"{site}.loc"] = loc
        params[f"{site}.rho"] = jnp.full(loc.shape, bnn.rho_init, jnp.float32)
    return params


def sample_guide(bnn: "SparseBNN") -> dict[str, jax.Array]:
    """The guide body: ``numpyro.param`` + ``numpyro.sample`` of every latent site.

    Under ``bnn.partitionable_noise`` (when set) as ``jax_threefry_partitionable``.
    """
    partitionable = getattr(bnn, "partitionable_noise", None)
    if partitionable is None:
        return _sample_sites(bnn)
    with jax.threefry_partitionable(partitionable):
        return _sample_sites(bnn)


def _sample_sites(bnn: "SparseBNN") -> dict[str, jax.Array]:
    init = _cached_init(bnn)
    values = {}
    names = [s.name for s in bnn.prior.scale_sites(bnn.layers)] + (["noise"] if bnn.learns_noise else [])
    for name in names:
        loc = numpyro.param(f"{name}.loc", init[f"{name}.loc"])
        scale = softplus(numpyro.param(f"{name}.rho", init[f"{name}.rho"]))
        values[name] = numpyro.sample(name, dist.LogNormal(loc, scale).to_event(jnp.ndim(loc)))
    for layer in bnn.indicated_layers:
        if not bnn.samples_indicator(layer):
            continue
        logits = numpyro.param(f"{layer.name}.z.logit", init[f"{layer.name}.z.logit"])
        values[f"{layer.name}.z"] = numpyro.sample(
            f"{layer.name}.z", ConcreteBernoulli(logits, bnn.temperature, bnn.hard).to_event(1))
    weight_noise = WEIGHT_NOISE[bnn.weight_noise]
    for path, shape in bnn.shapes.items():
        site = bnn.weight_site(path)
        loc = numpyro.param(f"{site}.loc", init[f"{site}.loc"])
        scale = softplus(numpyro.param(f"{site}.rho", init[f"{site}.rho"]))
        values[site] = numpyro.sample(site, weight_noise(loc, scale).to_event(len(shape)))
    return values


def _cached_init(bnn: "SparseBNN") -> dict[str, jax.Array]:
    if getattr(bnn, "_init_cache", None) is None:
        bnn._init_cache = init_params(bnn)
    return bnn._init_cache

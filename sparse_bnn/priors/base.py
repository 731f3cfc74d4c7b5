"""The prior protocol: what a shrinkage prior over node groups has to say (``math.md`` §2-§4).

A prior is a small frozen dataclass of hyperparameters. Every prior owns the slab of the
non-centred weights, ``w~ ~ N(0, sigma_0^2)`` elementwise (:meth:`Prior.slab_std`,
:meth:`Prior.slab_variance`, :meth:`Prior.slab_kl`, :meth:`Prior.slab_rho`); the node indicators
``z`` and the normal guide of ``w~`` are shared by all priors (:mod:`sparse_bnn.core.model`,
:mod:`sparse_bnn.core.guide`). A prior adds its *scales*:

* ``scale_sites(layers)``: the positive latent variables it introduces (``tau2``, ``lam2``,
  ``s2_a``, ...), each fitted by a log-normal factor in the guide;
* ``sample_scales(layers)``: the model side, ``numpyro.sample`` of those sites from the prior;
* ``weight_scale(values, layer)``: the scale that multiplies ``w~`` of a layer's groups, from
  the sites' values (the same function on both sides, so model and guide agree);
* ``scale_kl(q, layers)``: the closed-form KL of the log-normal factors ``q`` from the prior;
* ``variance_moments(q, layer)``: ``E[log scale^2]`` and ``E[1/scale^2]`` (centred form);
* ``expected_weight_scale(q, layer)``: ``E_q[weight_scale]`` in closed form, or ``None`` where
  there is none (the posterior-mean weights then average the scale over Monte Carlo draws).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparse_bnn.core.kl import kl_normal, kl_normal_expected_var
from sparse_bnn.nets.base import UnitLayer


class ScaleSite(NamedTuple):
    """A positive latent site: name, shape, initial log-space location of its guide."""

    name: str
    shape: tuple[int, ...]
    init_loc: float


class LogNormalFactor(NamedTuple):
    """The guide's ``LN(loc, scale^2)`` of one scale site."""

    loc: jax.Array
    scale: jax.Array


@dataclasses.dataclass(frozen=True)
class Prior:
    """Base class: a prior with no scales (``weight_scale`` = 1), slab ``N(0, sigma_0^2)``."""

    name = "prior"
    has_indicator = False
    sigma_0: float = 1.0

    def __post_init__(self):
        if not (np.isfinite(self.sigma_0) and self.sigma_0 > 0):
            raise ValueError(f"sigma_0 must be positive and finite, got {self.sigma_0}")

    # -- the slab N(0, sigma_0^2) of w~ -------------------------------------------------------

    def slab_variance(self) -> float:
        """``sigma_0^2``, the variance of the slab ``w~ ~ N(0, sigma_0^2)``."""
        return self.sigma_0**2

    def slab_std(self, shape: tuple[int, ...]) -> jax.Array:
        """The slab's standard deviation ``sigma_0`` for every entry of an array of ``shape``."""
        return jnp.full(shape, self.sigma_0)

    def slab_rho(self) -> float:
        """``softplus^-1(sigma_0)``: the ``rho`` at which the guide's ``N(0, softplus(rho)^2)``
        is the slab (so its KL from the slab is 0)."""
        return float(np.log(np.expm1(self.sigma_0)))

    def slab_kl(self, loc: jax.Array, scale: jax.Array) -> jax.Array:
        """``KL(N(loc, scale^2) || N(0, sigma_0^2))``, elementwise (non-centred form)."""
        return kl_normal(loc, scale, self.slab_variance())

    def scaled_slab_kl(self, loc: jax.Array, scale: jax.Array, expected_log_var: jax.Array,
                       expected_inv_var: jax.Array) -> jax.Array:
        """``E_v[KL(N(loc, scale^2) || N(0, sigma_0^2 v))]`` elementwise, given ``E[log v]`` and
        ``E[1/v]`` of the squared weight scale ``v`` under the guide (centred form; see
        :meth:`variance_moments`)."""
        slab_var = self.slab_variance()
        return kl_normal_expected_var(loc, scale, jnp.log(slab_var) + expected_log_var,
                                      expected_inv_var / slab_var)

    # -- the prior's scales ------------------------------------------------------------------

    def scale_sites(self, layers: Sequence[UnitLayer]) -> tuple[ScaleSite, ...]:
        return ()

    def sample_scales(self, layers: Sequence[UnitLayer]) -> dict[str, jax.Array]:
        return {}

    def weight_scale(self, values: dict[str, jax.Array], layer: UnitLayer) -> jax.Array:
        return jnp.ones(())

    def scale_kl(self, q: dict[str, LogNormalFactor], layers: Sequence[UnitLayer]) -> jax.Array:
        return jnp.zeros(())

    def variance_moments(self, q: dict[str, LogNormalFactor], layer: UnitLayer):
        """``(E[log scale^2], E[1/scale^2])`` under the guide; scalars or ``[units]``."""
        return jnp.zeros(()), jnp.ones(())

    def expected_weight_scale(self, q: dict[str, LogNormalFactor], layer: UnitLayer) -> jax.Array | None:
        """``E_q[weight_scale]`` (scalar or ``[units]``) in closed form; ``None`` if there is none."""
        return jnp.ones(())

    def is_indicated(self, layer: UnitLayer) -> bool:
        """Whether ``layer`` carries node indicators under this prior."""
        return self.has_indicator and layer.prunable


def check_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value}")


def gauss_hermite_expectation(fn, mean, var, n_nodes: int = 32) -> jax.Array:
    """``E[fn(u)]`` for ``u ~ N(mean, var)`` by Gauss-Hermite quadrature (broadcasts)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_nodes)
    nodes = jnp.asarray(nodes, jnp.float32)
    weights = jnp.asarray(weights / np.sqrt(2 * np.pi), jnp.float32)
    mean, std = jnp.asarray(mean)[..., None], jnp.sqrt(jnp.asarray(var))[..., None]
    return jnp.sum(weights * fn(mean + std * nodes), axis=-1)

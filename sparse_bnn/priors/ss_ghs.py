"""Spike-and-slab group horseshoe (SS-GHS, regularised), ``math.md`` §2.

``w_lj | z, s, t ~ z N(0, sigma_0^2 s~2_lj I) + (1 - z) delta_0`` with
``s~2 = c^2 t^2 s_lj^2 / (c^2 + t^2 s_lj^2)``, local ``s_lj ~ C+(0, 1)``, global ``t ~ C+(0, 1)``,
slab width ``c`` fixed (default 1) or ``c^2 ~ InvGamma(2, 6)``.
Each half-Cauchy is the product ``s^2 = a b``, ``a ~ Gamma(1/2, rate=1/A)``,
``b ~ InvGamma(1/2, scale=1)``, so that a log-normal guide fits each factor.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sparse_bnn.core.kl import kl_lognormal_gamma, kl_lognormal_invgamma, lognormal_mean
from sparse_bnn.nets.base import UnitLayer
from sparse_bnn.priors.base import (LogNormalFactor, Prior, ScaleSite, check_positive,
                                    gauss_hermite_expectation)

GLOBAL_A, GLOBAL_B, SLAB = "t2_a", "t2_b", "c2"


@dataclasses.dataclass(frozen=True)
class SpikeSlabGroupHorseshoe(Prior):
    """SS-GHS.

    Args:
      sigma_0: slab scale.
      local_scale2, global_scale2: ``A`` of the local and global half-Cauchy ``C+(0, sqrt(A))``.
      slab_width: ``c`` when fixed.
      random_slab: ``c^2 ~ InvGamma(slab_shape, slab_scale)`` instead of a fixed ``c``.
      shrink_output: group shrinkage (without indicator) on the output layer too.
    """

    name = "ss-ghs"
    has_indicator = True
    local_scale2: float = 1.0
    global_scale2: float = 1.0
    slab_width: float = 1.0
    random_slab: bool = False
    slab_shape: float = 2.0
    slab_scale: float = 6.0
    shrink_output: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_positive(local_scale2=self.local_scale2, global_scale2=self.global_scale2,
                       slab_width=self.slab_width, slab_shape=self.slab_shape,
                       slab_scale=self.slab_scale)

    def shrunk(self, layers: Sequence[UnitLayer]) -> list[UnitLayer]:
        return [l for l in layers if l.prunable or self.shrink_output]

    def scale_sites(self, layers):
        sites = [ScaleSite(GLOBAL_A, (), 2.0), ScaleSite(GLOBAL_B, (), 2.0)]
        if self.random_slab:
            sites.append(ScaleSite(SLAB, (), float(np.log(self.slab_scale / (self.slab_shape + 1)))))
        for l in self.shrunk(layers):
            sites += [ScaleSite(f"{l.name}.s2_a", (l.units,), 0.0),
                      ScaleSite(f"{l.name}.s2_b", (l.units,), 0.0)]
        return tuple(sites)

    def sample_scales(self, layers):
        values = {GLOBAL_A: numpyro.sample(GLOBAL_A, dist.Gamma(0.5, 1 / self.global_scale2)),
                  GLOBAL_B: numpyro.sample(GLOBAL_B, dist.InverseGamma(0.5, 1.0))}
        if self.random_slab:
            values[SLAB] = numpyro.sample(SLAB, dist.InverseGamma(self.slab_shape, self.slab_scale))
        for l in self.shrunk(layers):
            half = jnp.full((l.units,), 0.5)
            values[f"{l.name}.s2_a"] = numpyro.sample(
                f"{l.name}.s2_a", dist.Gamma(half, 1 / self.local_scale2).to_event(1))
            values[f"{l.name}.s2_b"] = numpyro.sample(
                f"{l.name}.s2_b", dist.InverseGamma(half, 1.0).to_event(1))
        return values

    def expected_weight_scale(self, q, layer):
        # the regularised horseshoe's sqrt(c^2 t^2 s^2 / (c^2 + t^2 s^2)) has no closed-form mean
        return None if f"{layer.name}.s2_a" in q else jnp.ones(())

    def weight_scale(self, values, layer):
        if f"{layer.name}.s2_a" not in values:
            return jnp.ones(())
        c2 = values[SLAB] if self.random_slab else self.slab_width**2
        t2s2 = values[GLOBAL_A] * values[GLOBAL_B] * values[f"{layer.name}.s2_a"] * values[f"{layer.name}.s2_b"]
        return jnp.sqrt(c2 * t2s2 / (c2 + t2s2))

    def scale_kl(self, q: dict[str, LogNormalFactor], layers):
        def gamma_kl(f, rate):
            return jnp.sum(kl_lognormal_gamma(f.loc, f.scale, 0.5, jnp.log(rate), rate))

        def invgamma_kl(f, shape=0.5, scale=1.0):
            return jnp.sum(kl_lognormal_invgamma(f.loc, f.scale, shape, scale))

        total = gamma_kl(q[GLOBAL_A], 1 / self.global_scale2) + invgamma_kl(q[GLOBAL_B])
        if self.random_slab:
            total += invgamma_kl(q[SLAB], self.slab_shape, self.slab_scale)
        for l in self.shrunk(layers):
            total += gamma_kl(q[f"{l.name}.s2_a"], 1 / self.local_scale2) + invgamma_kl(q[f"{l.name}.s2_b"])
        return total

    def variance_moments(self, q, layer):
        """``1/s~2 = 1/(t^2 s^2) + 1/c^2`` is closed form; ``E[log s~2]`` needs one 1-D
        Gauss-Hermite quadrature over ``log(t^2 s^2 / c^2) ~ N(.,.)`` (no closed form)."""
        if f"{layer.name}.s2_a" not in q:
            return jnp.zeros(()), jnp.ones(())
        factors = [q[GLOBAL_A], q[GLOBAL_B], q[f"{layer.name}.s2_a"], q[f"{layer.name}.s2_b"]]
        log_t2s2_mean = sum(f.loc for f in factors)
        log_t2s2_var = sum(f.scale**2 for f in factors)
        if self.random_slab:
            log_c2_mean, log_c2_var = q[SLAB].loc, q[SLAB].scale**2
            inv_c2 = lognormal_mean(q[SLAB].loc, q[SLAB].scale, -1.0)
        else:
            log_c2_mean, log_c2_var, inv_c2 = jnp.log(self.slab_width**2), 0.0, self.slab_width**-2
        # log s~2 = log t2s2 - log(1 + t2s2 / c2)
        ratio_mean, ratio_var = log_t2s2_mean - log_c2_mean, log_t2s2_var + log_c2_var
        softplus_term = gauss_hermite_expectation(lambda u: jnp.logaddexp(0.0, u), ratio_mean, ratio_var)
        expected_log = log_t2s2_mean - softplus_term
        expected_inv = jnp.exp(-log_t2s2_mean + 0.5 * log_t2s2_var) + inv_c2
        return expected_log, expected_inv

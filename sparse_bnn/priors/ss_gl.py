"""Spike-and-slab group lasso (SS-GL), ``math.md`` §2.

``w_lj | z, tau2 ~ z N(0, sigma_0^2 tau2_lj I) + (1 - z) delta_0``,
``tau2_lj | lam2 ~ Gamma((m_l + 1)/2, rate=lam2/2)``, ``lam2 ~ Gamma(4, rate=2)`` for the network.
Marginally the slab is the group-lasso density ``exp(-sqrt(lam2) ||w||_2 / sigma_0)``.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sparse_bnn.core.kl import kl_lognormal_gamma, lognormal_mean
from sparse_bnn.nets.base import UnitLayer
from sparse_bnn.priors.base import LogNormalFactor, Prior, ScaleSite, check_positive

LAM2 = "lam2"


@dataclasses.dataclass(frozen=True)
class SpikeSlabGroupLasso(Prior):
    """SS-GL. ``shrink_output``: group shrinkage (without indicator) on the output layer too."""

    name = "ss-gl"
    has_indicator = True
    lam2_shape: float = 4.0
    lam2_rate: float = 2.0
    shrink_output: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_positive(lam2_shape=self.lam2_shape, lam2_rate=self.lam2_rate)

    def shrunk(self, layers: Sequence[UnitLayer]) -> list[UnitLayer]:
        return [l for l in layers if l.prunable or self.shrink_output]

    def scale_sites(self, layers):
        return (ScaleSite(LAM2, (), float(np.log(self.lam2_shape / self.lam2_rate))),
                *(ScaleSite(f"{l.name}.tau2", (l.units,), 0.0) for l in self.shrunk(layers)))

    def sample_scales(self, layers):
        lam2 = numpyro.sample(LAM2, dist.Gamma(self.lam2_shape, self.lam2_rate))
        values = {LAM2: lam2}
        for l in self.shrunk(layers):
            shape = jnp.full((l.units,), (l.group_size + 1) / 2)
            values[f"{l.name}.tau2"] = numpyro.sample(
                f"{l.name}.tau2", dist.Gamma(shape, lam2 / 2).to_event(1))
        return values

    def weight_scale(self, values, layer):
        key = f"{layer.name}.tau2"
        return jnp.sqrt(values[key]) if key in values else jnp.ones(())

    def expected_weight_scale(self, q, layer):
        key = f"{layer.name}.tau2"
        return lognormal_mean(q[key].loc, q[key].scale, 0.5) if key in q else jnp.ones(())

    def scale_kl(self, q: dict[str, LogNormalFactor], layers):
        lam2 = q[LAM2]
        total = kl_lognormal_gamma(lam2.loc, lam2.scale, self.lam2_shape,
                                   jnp.log(self.lam2_rate), self.lam2_rate)
        expected_log_rate = lam2.loc - jnp.log(2.0)
        expected_rate = lognormal_mean(lam2.loc, lam2.scale) / 2
        for l in self.shrunk(layers):
            tau2 = q[f"{l.name}.tau2"]
            total += jnp.sum(kl_lognormal_gamma(tau2.loc, tau2.scale, (l.group_size + 1) / 2,
                                                expected_log_rate, expected_rate))
        return total

    def variance_moments(self, q, layer):
        key = f"{layer.name}.tau2"
        if key not in q:
            return jnp.zeros(()), jnp.ones(())
        return q[key].loc, lognormal_mean(q[key].loc, q[key].scale, -1.0)

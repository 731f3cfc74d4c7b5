"""Flat model for Bayesian model reduction, ``math.md`` §2.

``w = s_l w~``, ``w~ ~ N(0, 1)``, ``s_l = c_l / 10`` (hidden) or ``c_l`` (output),
``c_l^-2 ~ Gamma(2, rate=2)``: one scale per layer, no indicators.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from sparse_bnn.core.kl import kl_lognormal_gamma, lognormal_mean
from sparse_bnn.priors.base import Prior, ScaleSite, check_positive


@dataclasses.dataclass(frozen=True)
class Flat(Prior):
    """Flat Gaussian model. ``sigma_0`` is the slab of ``w~`` (1 in ``math.md``)."""

    name = "flat"
    has_indicator = False
    precision_shape: float = 2.0
    precision_rate: float = 2.0
    hidden_factor: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        check_positive(precision_shape=self.precision_shape, precision_rate=self.precision_rate,
                       hidden_factor=self.hidden_factor)

    def scale_sites(self, layers):
        init = float(np.log(self.precision_shape / self.precision_rate))
        return tuple(ScaleSite(f"{l.name}.prec", (), init) for l in layers)

    def sample_scales(self, layers):
        return {f"{l.name}.prec": numpyro.sample(
            f"{l.name}.prec", dist.Gamma(self.precision_shape, self.precision_rate)) for l in layers}

    def factor(self, layer):
        return self.hidden_factor if layer.prunable else 1.0

    def weight_scale(self, values, layer):
        return self.factor(layer) / jnp.sqrt(values[f"{layer.name}.prec"])

    def expected_weight_scale(self, q, layer):
        f = q[f"{layer.name}.prec"]
        return self.factor(layer) * lognormal_mean(f.loc, f.scale, -0.5)

    def scale_kl(self, q, layers):
        total = jnp.zeros(())
        for l in layers:
            f = q[f"{l.name}.prec"]
            total += kl_lognormal_gamma(f.loc, f.scale, self.precision_shape,
                                        jnp.log(self.precision_rate), self.precision_rate)
        return total

    def variance_moments(self, q, layer):
        f = q[f"{layer.name}.prec"]
        factor2 = self.factor(layer) ** 2
        return jnp.log(factor2) - f.loc, lognormal_mean(f.loc, f.scale) / factor2

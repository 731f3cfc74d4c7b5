"""A Flax NNX network plus a prior -> a NumPyro model function (``math.md`` §2).

>>> bnn = SparseBNN(MLP(784, (400, 400), 10, rngs=nnx.Rngs(0)), SpikeSlabGroupHorseshoe(), n_data=60000)
>>> svi = numpyro.infer.SVI(bnn.model, bnn.guide, optax.adam(1e-3), bnn.elbo())

Site names: ``{layer}.z`` (node indicators ``[units]``), the network's parameter paths for the
weights (``layers.0.kernel``: ``w~`` in the non-centred form, ``w`` in the centred form), the
prior's scale sites (``{layer}.tau2``, ``lam2``, ``{layer}.s2_a``, ``t2_a``, ...), ``noise`` for a
learned Gaussian noise scale, and ``y`` for the observations.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from flax import nnx

from sparse_bnn.inclusion import layer_inclusion_probs
from sparse_bnn.nets.base import FunctionalNet, Path, flatten_paths, UnitLayer, path_name, unit_broadcast
from sparse_bnn.noise import WEIGHT_NOISE
from sparse_bnn.priors.base import Prior

LIKELIHOODS = ("categorical", "gaussian")
NOISE_PRIOR_SCALE = 1.0


class Masks(NamedTuple):
    """Fixed 0/1 masks, passed to ``model``/``guide``/``kl`` as data (changing them never recompiles).

    * ``units``: ``{layer: [units]}``; a unit with mask 0 is switched off for good (its indicator
      is fixed at 0 and it leaves the KL), as after shrinking or in the fine-tuning phase.
    * ``weights``: ``{path name: array like the parameter}``; an entry with mask 0 is pruned
      (element-wise Bayesian model reduction: prior scale ~0, so ``w = 0`` and no KL).
    Layers/parameters absent from a mapping are unmasked.
    """

    units: dict[str, jax.Array] = {}
    weights: dict[str, jax.Array] = {}


class SparseBNN:
    """A Bayesian network: architecture, prior over node groups, likelihood, guide options.

    Args:
      net: a Flax NNX network implementing :class:`sparse_bnn.nets.SparseNet`.
      prior: a :class:`sparse_bnn.priors.Prior` (SS-GL, SS-GHS, ...).
      n_data: number of training points ``N`` (the minibatch ELBO is scaled to it).
      likelihood: ``"categorical"`` (logits) or ``"gaussian"`` (regression).
      noise: fixed noise standard deviation for ``"gaussian"``; ``None`` learns it
        (``noise ~ HalfNormal(1)``, log-normal guide).
      inclusion: prior inclusion probabilities ``lambda_l``: ``"theory"`` (``math.md`` §2), one
        probability, or ``{layer name: probability}``.
      centred: centred instead of the default non-centred parametrisation.
      temperature: Concrete relaxation temperature ``T`` of the indicators' guide.
      hard: straight-through (exact 0/1 forward) indicators; ``False`` for the soft relaxation.
      init_inclusion: initial ``gamma`` of every indicator (``theta = logit(init_inclusion)``).
      rho_init: initial ``rho`` of every normal and log-normal factor (``std = softplus(rho)``).
      freeze_indicators: the fine-tuning phase: indicators are fixed at ``masks.units`` (no
        sampling, no Bernoulli KL, ``theta`` unused), everything else keeps training.
      weight_noise: generator of the guide's Gaussian weight noise (one normal per weight per
        step, the largest cost the guide adds to a step): ``"hash"`` (default) a keyed counter
        hash (:mod:`sparse_bnn.noise`; ~1 ms of the MLP 784-400-400-10 step on CPU instead of
        ~3.4 ms), ``"threefry"`` ``jax.random.normal``.
      partitionable_noise: with ``weight_noise="threefry"`` only: ``jax_threefry_partitionable``
        while the guide draws its noise; ``None`` (default) follows JAX's global setting.
        ``False`` makes threefry hash once per two normals instead of once per normal.
    """

    def __init__(self, net: nnx.Module, prior: Prior, n_data: int, *, likelihood: str = "categorical",
                 noise: float | None = None, inclusion: str | float | Mapping[str, float] = "theory",
                 centred: bool = False, temperature: float = 0.5, hard: bool = True,
                 init_inclusion: float = 0.99, rho_init: float = -6.0, freeze_indicators: bool = False,
                 weight_noise: str = "hash", partitionable_noise: bool | None = None):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        if int(n_data) <= 0:
            raise ValueError(f"n_data must be a positive integer, got {n_data}")
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 < init_inclusion < 1.0:
            raise ValueError(f"init_inclusion must be in (0, 1), got {init_inclusion}")
        if noise is not None and not (np.isfinite(noise) and noise > 0):
            raise ValueError(f"noise must be positive (or None to learn it), got {noise}")
        if not np.isfinite(rho_init):
            raise ValueError(f"rho_init must be finite, got {rho_init}")
        if weight_noise not in WEIGHT_NOISE:
            raise ValueError(f"unknown weight_noise {weight_noise!r}; choose one of {tuple(WEIGHT_NOISE)}")
        if partitionable_noise is not None and weight_noise != "threefry":
            raise ValueError("partitionable_noise is a threefry setting; it needs weight_noise='threefry'")
        self.net, self.prior, self.n_data = net, prior, int(n_data)
        self.likelihood, self.noise = likelihood, noise
        self.centred, self.temperature, self.hard = centred, float(temperature), hard
        self.init_inclusion, self.rho_init = float(init_inclusion), float(rho_init)
        self.freeze_indicators = freeze_indicators
        self.weight_noise = weight_noise
        self.partitionable_noise = None if partitionable_noise is None else bool(partitionable_noise)
        self.functional = FunctionalNet(net)
        self._programs: dict[str, Callable] = {}
        self.layers: tuple[UnitLayer, ...] = tuple(net.unit_layers())
        self.shapes: dict[Path, tuple[int, ...]] = {p: tuple(v.shape) for p, v in self.functional.initial.items()}
        self.owner: dict[Path, tuple[UnitLayer, int]] = {}
        state_paths = set(flatten_paths(nnx.to_pure_dict(self.functional.rest)))
        for layer in self.layers:
            for member in layer.members:
                if member.path in state_paths:
                    continue  # batch statistics follow their unit when pruning; they are not random
                if member.path not in self.shapes:
                    raise ValueError(f"layer {layer.name} names parameter {path_name(member.path)}, "
                                     "which the network does not have")
                self.owner[member.path] = (layer, member.axis)
        self.free_paths = tuple(p for p in self.shapes if p not in self.owner)
        self.inclusion = layer_inclusion_probs(
            [l for l in self.layers if prior.is_indicated(l)] + [self.layers[-1]], self.n_data, inclusion) \
            if any(prior.is_indicated(l) for l in self.layers) else {}

    def program(self, name: str, fn: Callable) -> Callable:
        """``jax.jit(fn)``, made on the first call with ``name`` and kept on this model: it
        compiles once per input shapes and goes when the model goes (a jit taking the model as
        a static argument would keep every model alive in JAX's cache)."""
        if name not in self._programs:
            self._programs[name] = jax.jit(fn)
        return self._programs[name]

    # -- what the model and the guide share ---------------------------------------------------

    @property
    def indicated_layers(self) -> tuple[UnitLayer, ...]:
        return tuple(l for l in self.layers if self.prior.is_indicated(l))

    @property
    def learns_noise(self) -> bool:
        return self.likelihood == "gaussian" and self.noise is None

    def weight_site(self, path: Path) -> str:
        return path_name(path)

    def samples_indicator(self, layer: UnitLayer) -> bool:
        """Whether ``{layer}.z`` is a latent site (indicated and not frozen)."""
        return self.prior.is_indicated(layer) and not self.freeze_indicators

    def gates(self, values: Mapping[str, jax.Array], masks: Masks | None = None) -> dict[str, jax.Array]:
        """Per-unit multiplier of each layer's ``w~``: ``z * scale`` (non-centred) or ``z``."""
        masks = masks or Masks()
        out = {}
        for layer in self.layers:
            gate = jnp.ones(())
            if self.samples_indicator(layer):
                gate = values[f"{layer.name}.z"]
            if layer.name in masks.units:
                gate = gate * masks.units[layer.name]
            if not self.centred:
                gate = gate * self.prior.weight_scale(values, layer)
            out[layer.name] = gate
        return out

    def effective_params(self, values: Mapping[str, jax.Array], masks: Masks | None = None
                         ) -> dict[Path, jax.Array]:
        """The network's parameters ``w = z * scale * w~`` from the latent sites' values."""
        masks = masks or Masks()
        gates = self.gates(values, masks)
        params = {}
        for path in self.shapes:
            site = self.weight_site(path)
            weight = values[site]
            if path in self.owner:
                layer, axis = self.owner[path]
                weight = weight * unit_broadcast(gates[layer.name], weight.ndim, axis)
            if site in masks.weights:
                weight = weight * masks.weights[site]
            params[path] = weight
        return params

    # -- the NumPyro model ----------------------------------------------------------------------

    def sample_latents(self) -> dict[str, jax.Array]:
        """``numpyro.sample`` of every latent site from the prior, in dependency order."""
        sigma_0 = self.prior.sigma_0
        values = dict(self.prior.sample_scales(self.layers))
        for layer in self.indicated_layers:
            if not self.samples_indicator(layer):
                continue
            probs = jnp.full((layer.units,), self.inclusion[layer.name])
            values[f"{layer.name}.z"] = numpyro.sample(f"{layer.name}.z", dist.Bernoulli(probs=probs).to_event(1))
        for path, shape in self.shapes.items():
            scale = jnp.full(shape, sigma_0)
            if self.centred and path in self.owner:
                layer, axis = self.owner[path]
                scale = scale * unit_broadcast(self.prior.weight_scale(values, layer), len(shape), axis)
            site = self.weight_site(path)
            values[site] = numpyro.sample(site, dist.Normal(0.0, scale).to_event(len(shape)))
        if self.learns_noise:
            values["noise"] = numpyro.sample("noise", dist.HalfNormal(NOISE_PRIOR_SCALE))
        return values

    def observe(self, outputs: jax.Array, y: jax.Array | None, values: Mapping[str, jax.Array]) -> None:
        """The likelihood ``p(y | x, w)`` of a minibatch, scaled to ``n_data`` points."""
        batch = outputs.shape[0]
        with numpyro.plate("data", self.n_data, subsample_size=batch):
            if self.likelihood == "categorical":
                numpyro.sample("y", dist.Categorical(logits=outputs), obs=y)
            else:
                noise = values["noise"] if self.learns_noise else self.noise
                mean = outputs.reshape(batch, -1)
                numpyro.sample("y", dist.Normal(mean, noise).to_event(1),
                               obs=None if y is None else y.reshape(batch, -1))

    def model(self, x: jax.Array, y: jax.Array | None = None, masks: Masks | None = None) -> jax.Array:
        """NumPyro model: latents from the prior, then ``y ~ p(y | net(x; w))``.

        Shapes: ``x [B, ...]`` (the network's input), ``y [B]`` labels or ``[B, out]`` targets.
        Returns the network outputs ``[B, out]``.
        """
        values = self.sample_latents()
        outputs = self.functional.apply(self.effective_params(values, masks), x)
        self.observe(outputs, y, values)
        return outputs

    # -- guide, KL, ELBO (see guide.py and elbo.py) ---------------------------------------------

    def guide(self, x: jax.Array | None = None, y: jax.Array | None = None,
              masks: Masks | None = None) -> dict[str, jax.Array]:
        """NumPyro guide: the structured mean field of ``math.md`` §3."""
        from sparse_bnn.guide import sample_guide
        return sample_guide(self)

    def init_params(self) -> dict[str, jax.Array]:
        """Initial variational parameters ``{name: array}`` (the guide's ``numpyro.param`` sites)."""
        from sparse_bnn.guide import init_params
        return init_params(self)

    def kl(self, params: Mapping[str, jax.Array], masks: Masks | None = None) -> jax.Array:
        """Closed-form ``KL(q || p)`` of all latents (``math.md`` §4)."""
        from sparse_bnn.elbo import analytic_kl
        return analytic_kl(self, params, masks)

    def elbo(self):
        """The NumPyro ELBO objective with this model's closed-form KL."""
        from sparse_bnn.elbo import AnalyticKLELBO
        return AnalyticKLELBO(self.kl)

"""A Flax NNX network plus a prior -> a NumPyro model function (``math.md`` §2).

>>> bnn = SparseBNN(MLP(784, (400, 400), 10, rngs=nnx.Rngs(0)), SpikeSlabGroupHorseshoe(), n_data=60000)
>>> svi = numpyro.infer.SVI(bnn.model, bnn.guide, optax.adam(1e-3), bnn.elbo())

Site names (:mod:`sparse_bnn.core.spec`): ``{layer}.z`` (node indicators ``[units]``), the network's
parameter paths for the weights (``layers.0.kernel``: ``w~`` in the non-centred form, ``w`` in the
centred form), the prior's scale sites (``{layer}.tau2``, ``lam2``, ``{layer}.s2_a``, ``t2_a``, ...),
``noise`` for a learned Gaussian noise scale, ``y`` for the observations, and the deterministic
``logits`` and ``probs`` (categorical) or ``mean`` (gaussian) of the network's outputs. With
``name="enc"`` every site and parameter is ``enc.{name}``, so several models share one NumPyro model.

The guide and the KL live in :mod:`sparse_bnn.core.guide` and :mod:`sparse_bnn.core.elbo`, which read only
:mod:`sparse_bnn.core.spec` and the model object; this module assembles them into
:meth:`SparseBNN.guide`, :meth:`SparseBNN.kl` and :meth:`SparseBNN.elbo`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from flax import nnx

from sparse_bnn.core import elbo as elbo_lib, guide as guide_lib
from sparse_bnn.core.distributions import RelaxedIndicator
from sparse_bnn.core.inclusion import layer_inclusion_probs
from sparse_bnn.core.sites import latent_sites, model_scope
from sparse_bnn.nets.declare import declare_units
from sparse_bnn.nets.base import FunctionalNet, Path, UnitLayer, unit_broadcast
from sparse_bnn.priors.base import Prior
from sparse_bnn.core.spec import (LIKELIHOODS, LOGITS_SITE, MEAN_SITE, NOISE_PRIOR_SCALE, NOISE_SITE, OBS_SITE,
                                  PROBS_SITE, Masks, ModelOptions, UnitStructure, indicator_site, scoped_name,
                                  weight_site)

Value = TypeVar("Value")

__all__ = ["LIKELIHOODS", "Masks", "ModelOptions", "NOISE_PRIOR_SCALE", "SparseBNN"]


class _Option:
    """A :class:`SparseBNN` attribute that reads ``model.options.<name>``; assigning it replaces
    ``options`` by a checked copy and drops what the model computed from the old options."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, model, owner=None):
        return self if model is None else getattr(model.options, self.name)

    def __set__(self, model, value):
        model.options = dataclasses.replace(model.options, **{self.name: value})


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
        hash (:mod:`sparse_bnn.core.noise`), ``"threefry"`` ``jax.random.normal``.
      partitionable_noise: with ``weight_noise="threefry"`` only: ``jax_threefry_partitionable``
        while the guide draws its noise; ``None`` (default) follows JAX's global setting.
        ``False`` makes threefry hash once per two normals instead of once per normal.
      kl_weight: ``beta`` of the tempered objective ``E_q[log p(y | w)] - beta * KL(q || p)``;
        1 (default) is the ELBO of the Bayesian posterior, another value targets a tempered
        posterior instead (the likelihood counts ``1 / beta`` times), not that of the stated prior.
      name: prefix of every site and parameter (``"enc"`` -> ``enc.t2_a``, ``enc.t2_a.loc``), so
        that two models live in one NumPyro model; ``None`` (default) keeps the bare names.
      example_input: an input batch for a plain NNX module without ``unit_layers()``: its unit
        layers are inferred and checked (:func:`sparse_bnn.nets.declare.declare_units`).

    The options from ``likelihood`` on are held, checked, in ``options``
    (:class:`sparse_bnn.core.spec.ModelOptions`) and read as attributes (``bnn.centred``); the network's
    unit layers and parameters in ``layers``, ``shapes``, ``owner`` and ``free_paths``
    (:class:`sparse_bnn.core.spec.UnitStructure`).
    """

    likelihood = _Option()
    noise = _Option()
    centred = _Option()
    temperature = _Option()
    hard = _Option()
    init_inclusion = _Option()
    rho_init = _Option()
    freeze_indicators = _Option()
    weight_noise = _Option()
    partitionable_noise = _Option()
    kl_weight = _Option()
    name = _Option()

    def __init__(self, net: nnx.Module, prior: Prior, n_data: int, *, likelihood: str = "categorical",
                 noise: float | None = None, inclusion: str | float | Mapping[str, float] = "theory",
                 centred: bool = False, temperature: float = 0.5, hard: bool = True,
                 init_inclusion: float = 0.99, rho_init: float = -6.0, freeze_indicators: bool = False,
                 weight_noise: str = "hash", partitionable_noise: bool | None = None, kl_weight: float = 1.0,
                 name: str | None = None, example_input: jax.Array | None = None):
        if int(n_data) <= 0:
            raise ValueError(f"n_data must be a positive integer, got {n_data}")
        self.options = ModelOptions(
            likelihood=likelihood, noise=noise, centred=centred, temperature=temperature, hard=hard,
            init_inclusion=init_inclusion, rho_init=rho_init, freeze_indicators=freeze_indicators,
            weight_noise=weight_noise, partitionable_noise=partitionable_noise, kl_weight=kl_weight, name=name)
        if example_input is not None or not callable(getattr(net, "unit_layers", None)):
            net = declare_units(net, example_input)  # any NNX module: infer its unit layers
        self.net, self.prior, self.n_data = net, prior, int(n_data)
        self.functional = FunctionalNet(net)
        self.layers, self.shapes, self.owner, self.free_paths = UnitStructure.of(net, self.functional)
        self.inclusion = layer_inclusion_probs(
            [l for l in self.layers if prior.is_indicated(l)] + [self.layers[-1]], self.n_data, inclusion) \
            if any(prior.is_indicated(l) for l in self.layers) else {}

    @property
    def options(self) -> ModelOptions:
        """The checked options; assigning new ones drops the programs (:meth:`program`) and the
        initial parameters (:attr:`initial_params`) made from the old ones."""
        return self._options

    @options.setter
    def options(self, options: ModelOptions) -> None:
        self._options = options
        self._programs: dict[str, Callable] = {}
        self._initial_params: dict[str, jax.Array] | None = None

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
        return self.options.learns_noise

    def weight_site(self, path: Path) -> str:
        """The sample site of the parameter at ``path`` (:func:`sparse_bnn.core.spec.weight_site`)."""
        return weight_site(path)

    def site_name(self, name: str) -> str:
        """The name NumPyro knows a site or parameter of this model by: ``{self.name}.{name}``,
        or ``name`` itself for an unnamed model."""
        return scoped_name(self.name, name)

    def local_names(self, mapping: Mapping[str, Value], prefix: str = "") -> Mapping[str, Value]:
        """``mapping`` (``{NumPyro name: value}``, e.g. ``svi.get_params(state)``) restricted to this
        model's entries and keyed by their names within it (``enc.t2_a.loc`` -> ``t2_a.loc``).
        ``prefix``: that of an enclosing ``numpyro.handlers.scope`` (``"outer/"``). An unnamed model
        without a prefix returns ``mapping`` itself."""
        full = prefix + scoped_name(self.name, "")
        if not full:
            return mapping
        return {k[len(full):]: v for k, v in mapping.items() if k.startswith(full)}

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
                gate = values[indicator_site(layer.name)]
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
            site = weight_site(path)
            weight = values[site]
            if path in self.owner:
                layer, axis = self.owner[path]
                weight = weight * unit_broadcast(gates[layer.name], weight.ndim, axis)
            if site in masks.weights:
                weight = weight * masks.weights[site]
            params[path] = weight
        return params

    # -- the NumPyro model ----------------------------------------------------------------------

    def sample_latents(self, masks: Masks | None = None) -> dict[str, jax.Array]:
        """``numpyro.sample`` of every latent site from the prior, in dependency order; returns
        ``{site: value}`` keyed by the names within this model. The indicators' prior is the
        guide's kind of relaxed Bernoulli (:class:`~sparse_bnn.core.distributions.RelaxedIndicator`,
        logits ``logit(lambda_l)``), whose units ``masks`` switch off leave the KL."""
        with latent_sites(self, masks):
            return self._sample_latents(masks or Masks())

    def _sample_latents(self, masks: Masks) -> dict[str, jax.Array]:
        values = dict(self.prior.sample_scales(self.layers))
        if self.learns_noise:  # the guide's order: scales, noise, indicators, weights
            values[NOISE_SITE] = numpyro.sample(NOISE_SITE, dist.HalfNormal(NOISE_PRIOR_SCALE))
        for layer in self.indicated_layers:
            if not self.samples_indicator(layer):
                continue
            p = self.inclusion[layer.name]
            logits = jnp.full((layer.units,), float(np.log(p) - np.log1p(-p)), jnp.float32)
            prior = RelaxedIndicator(logits, self.temperature, self.hard, masks.units.get(layer.name))
            site = indicator_site(layer.name)
            values[site] = numpyro.sample(site, prior.to_event(1))
        for path, shape in self.shapes.items():
            scale = self.prior.slab_std(shape)
            if self.centred and path in self.owner:
                layer, axis = self.owner[path]
                scale = scale * unit_broadcast(self.prior.weight_scale(values, layer), len(shape), axis)
            site = weight_site(path)
            values[site] = numpyro.sample(site, dist.Normal(0.0, scale).to_event(len(shape)))
        return values

    def observe(self, outputs: jax.Array, y: jax.Array | None, values: Mapping[str, jax.Array]) -> None:
        """The likelihood ``p(y | x, w)`` of a minibatch, scaled to ``n_data`` points, and the
        deterministic sites of what it predicts: ``logits`` and ``probs [B, C]`` (categorical) or
        ``mean [B, out]`` (gaussian). A subclass with another likelihood overrides this (and
        :meth:`predicted_mean`, which validation reads)."""
        batch = outputs.shape[0]
        with model_scope(self):
            if self.likelihood == "categorical":
                numpyro.deterministic(LOGITS_SITE, outputs)
                numpyro.deterministic(PROBS_SITE, jax.nn.softmax(outputs, axis=-1))
            else:
                numpyro.deterministic(MEAN_SITE, self.predicted_mean(outputs))
            with numpyro.plate("data", self.n_data, subsample_size=batch):
                if self.likelihood == "categorical":
                    numpyro.sample(OBS_SITE, dist.Categorical(logits=outputs), obs=y)
                else:
                    noise = values[NOISE_SITE] if self.learns_noise else self.noise
                    mean = outputs.reshape(batch, -1)
                    numpyro.sample(OBS_SITE, dist.Normal(mean, noise).to_event(1),
                                   obs=None if y is None else y.reshape(batch, -1))

    def predicted_mean(self, outputs: jax.Array) -> jax.Array:
        """``[B, out]``: the mean of ``y`` the likelihood predicts from the network's outputs
        ``[B, ...]`` (the Gaussian likelihood's: the outputs themselves). Validation's RMSE
        compares it with the targets; a subclass whose :meth:`observe` reads the outputs
        otherwise (a heteroscedastic or a robust likelihood) overrides it."""
        return outputs.reshape(outputs.shape[0], -1)

    def model(self, x: jax.Array, y: jax.Array | None = None, masks: Masks | None = None) -> jax.Array:
        """NumPyro model: latents from the prior, then ``y ~ p(y | net(x; w))``.

        Shapes: ``x [B, ...]`` (the network's input), ``y [B]`` labels or ``[B, out]`` targets.
        Returns the network outputs ``[B, out]``.
        """
        values = self.sample_latents(masks)
        outputs = self.functional.apply(self.effective_params(values, masks), x)
        self.observe(outputs, y, values)
        return outputs

    # -- guide, KL, ELBO (see guide.py and elbo.py) ---------------------------------------------

    def guide(self, x: jax.Array | None = None, y: jax.Array | None = None,
              masks: Masks | None = None) -> dict[str, jax.Array]:
        """NumPyro guide: the structured mean field of ``math.md`` §3 (``masks``: units and
        weights switched off, where the guide is the prior)."""
        return guide_lib.sample_guide(self, masks)

    def init_params(self) -> dict[str, jax.Array]:
        """Initial variational parameters ``{name: array}`` (the guide's ``numpyro.param`` sites,
        named as NumPyro knows them: :meth:`site_name`)."""
        params = guide_lib.init_params(self)
        return params if self.name is None else {self.site_name(k): v for k, v in params.items()}

    @property
    def initial_params(self) -> Mapping[str, jax.Array]:
        """The guide's initial values ``{name within the model: array}``, computed once per model
        (and options)."""
        if self._initial_params is None:
            self._initial_params = guide_lib.init_params(self)
        return self._initial_params

    @elbo_lib.closed_form_of_library_sites
    def kl(self, params: Mapping[str, jax.Array], masks: Masks | None = None, *, prefix: str = "") -> jax.Array:
        """Closed-form ``KL(q || p)`` of all of this model's latents (``math.md`` §4), from
        ``params`` as NumPyro names them (``prefix``: an enclosing scope's, see
        :meth:`local_names`). Not weighted by ``kl_weight``: the ELBOs apply that."""
        return elbo_lib.analytic_kl(self, self.local_names(params, prefix), masks)

    def elbo(self, num_particles: int = 1) -> elbo_lib.AnalyticKLELBO:
        """The NumPyro ELBO with this model's KL in closed form, every other latent site of the
        model and guide by Monte Carlo (:class:`~sparse_bnn.core.elbo.AnalyticKLELBO`)."""
        return elbo_lib.AnalyticKLELBO(self.kl, num_particles=num_particles)

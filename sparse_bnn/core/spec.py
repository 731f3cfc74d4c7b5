"""What the model, the guide and the ELBO agree on (``math.md`` §2-§4).

:mod:`sparse_bnn.core.model` builds the NumPyro model, :mod:`sparse_bnn.core.guide` the structured mean
field and :mod:`sparse_bnn.core.elbo` the closed-form KL. The guide and the ELBO import neither the
model nor each other: they read this module and the model object they are handed
(:class:`ModelSpec`, which :class:`sparse_bnn.core.model.SparseBNN` implements); the model imports both
to assemble ``SparseBNN.guide``/``kl``/``elbo``. What they share:

* :class:`ModelOptions`: the options every side reads (likelihood, parametrisation, indicator
  relaxation, initial guide scales, frozen indicators, weight noise);
* :class:`UnitStructure`: the network's unit layers and which layer owns each parameter;
* :class:`Masks`: fixed 0/1 masks passed to model, guide and KL as data;
* :class:`LibrarySite`: the tag every latent site of the model and the guide carries in its
  ``infer`` dict (key :data:`LIBRARY_SITE`), by which an ELBO finds the sites it has in closed form;
* site and parameter names, in one place:

  ================================  =====================================================
  ``weight_site(path)``             ``layers.0.kernel``: ``w~`` (non-centred) or ``w``
  ``indicator_site(layer)``         ``dense0.z``: node indicators ``[units]``
  ``loc_param(site)``               ``{site}.loc``: mean of a normal / log-normal factor
  ``rho_param(site)``               ``{site}.rho``: its ``std = softplus(rho)``
  ``logit_param(layer)``            ``dense0.z.logit``: ``theta``, ``gamma = sigmoid(theta)``
  ``NOISE_SITE``, ``OBS_SITE``      ``noise`` (learned Gaussian noise scale), ``y``
  ``LOGITS_SITE``, ``PROBS_SITE``   deterministic ``logits``, ``probs`` ``[B, C]`` (categorical)
  ``MEAN_SITE``                     deterministic ``mean`` ``[B, out]`` (gaussian)
  ================================  =====================================================

  A prior names its own scale sites (``{layer}.tau2``, ``lam2``, ``{layer}.s2_a``, ...). A model
  with ``name="enc"`` puts ``enc.`` before every one of them (:func:`scoped_name`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Protocol

import jax
import numpy as np
from flax import nnx

from sparse_bnn.nets.base import FunctionalNet, Path, UnitLayer, flatten_paths, path_name
from sparse_bnn.core.noise import WEIGHT_NOISE
from sparse_bnn.priors.base import LogNormalFactor, Prior

LIKELIHOODS = ("categorical", "gaussian")
NOISE_PRIOR_SCALE = 1.0  # a learned Gaussian noise scale has the prior HalfNormal(1)

# -- site and parameter names ----------------------------------------------------------------

NOISE_SITE = "noise"
OBS_SITE = "y"
LOGITS_SITE, PROBS_SITE, MEAN_SITE = "logits", "probs", "mean"
LIBRARY_SITE = "sparse_bnn"  # the key of a LibrarySite in a sample site's infer dict
LOC, RHO, LOGIT = "loc", "rho", "logit"
VARIATIONAL_SUFFIXES = (LOC, RHO, LOGIT)


def weight_site(path: Path) -> str:
    """The sample site of a network parameter: its dotted path, ``("layers", 0, "kernel")`` ->
    ``"layers.0.kernel"``."""
    return path_name(path)


def indicator_site(layer: str) -> str:
    """``{layer}.z``: the node indicators ``z [units]`` of a unit layer."""
    return f"{layer}.z"


def loc_param(site: str) -> str:
    """``{site}.loc``: the location of a site's normal (``w~``) or log-normal (scales) factor."""
    return f"{site}.{LOC}"


def rho_param(site: str) -> str:
    """``{site}.rho``: the unconstrained scale of a site's factor, ``std = softplus(rho)``."""
    return f"{site}.{RHO}"


def logit_param(layer: str) -> str:
    """``{layer}.z.logit``: the indicators' logits ``theta [units]``, ``gamma = sigmoid(theta)``."""
    return f"{indicator_site(layer)}.{LOGIT}"


INDICATOR_LOGIT_SUFFIX = logit_param("")  # ".z.logit": how an indicator logit's name ends


def scoped_name(name: str | None, site: str) -> str:
    """``{name}.{site}``: a site or parameter name of a model named ``name`` (``site`` if ``None``)."""
    return site if name is None else f"{name}.{site}"


def softplus(rho):
    """A factor's standard deviation from its ``rho`` parameter (elementwise)."""
    return jax.nn.softplus(rho)


# -- masks, options, structure --------------------------------------------------------------


class Masks(NamedTuple):
    """Fixed 0/1 masks, passed to ``model``/``guide``/``kl`` as data (changing them never recompiles).

    * ``units``: ``{layer: [units]}``; a unit with mask 0 is switched off for good (its indicator
      is fixed at 0 and it leaves the KL), as after shrinking or in the fine-tuning phase.
    * ``weights``: ``{weight site: array like the parameter}``; an entry with mask 0 is pruned
      (element-wise Bayesian model reduction: prior scale ~0, so ``w = 0`` and no KL).
    Layers/parameters absent from a mapping are unmasked.
    """

    units: dict[str, jax.Array] = {}
    weights: dict[str, jax.Array] = {}


class LibrarySite(NamedTuple):
    """What the tag ``infer[LIBRARY_SITE]`` of a latent site says: the ``model`` (a
    :class:`ModelSpec`) it belongs to, its ``name`` within that model (without the model's
    ``name`` or an enclosing scope's prefix: the trace's name ends with it), and the ``masks``
    the model or guide was called with."""

    model: Any
    name: str
    masks: Masks | None


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """The options of a :class:`sparse_bnn.core.model.SparseBNN` that model, guide and ELBO read.

    The field names are ``SparseBNN``'s keyword arguments (see there for each one), so
    ``SparseBNN(net, prior, n_data, **dataclasses.asdict(options))`` rebuilds a model with them.
    Construction checks every value and raises ``ValueError`` naming the bad one.
    """

    likelihood: str = "categorical"
    noise: float | None = None
    centred: bool = False
    temperature: float = 0.5
    hard: bool = True
    init_inclusion: float = 0.99
    rho_init: float = -6.0
    freeze_indicators: bool = False
    weight_noise: str = "hash"
    partitionable_noise: bool | None = None
    kl_weight: float = 1.0
    name: str | None = None

    def __post_init__(self):
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; choose one of {LIKELIHOODS}")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 < self.init_inclusion < 1.0:
            raise ValueError(f"init_inclusion must be in (0, 1), got {self.init_inclusion}")
        if self.noise is not None and not (np.isfinite(self.noise) and self.noise > 0):
            raise ValueError(f"noise must be positive (or None to learn it), got {self.noise}")
        if not np.isfinite(self.rho_init):
            raise ValueError(f"rho_init must be finite, got {self.rho_init}")
        if self.weight_noise not in WEIGHT_NOISE:
            raise ValueError(f"unknown weight_noise {self.weight_noise!r}; choose one of {tuple(WEIGHT_NOISE)}")
        if self.partitionable_noise is not None and self.weight_noise != "threefry":
            raise ValueError("partitionable_noise is a threefry setting; it needs weight_noise='threefry'")
        if not (np.isfinite(self.kl_weight) and self.kl_weight > 0):
            raise ValueError(f"kl_weight must be positive and finite (1: the Bayesian posterior), got {self.kl_weight}")
        if self.name is not None and not (isinstance(self.name, str) and self.name):
            raise ValueError(f"name must be a non-empty string (or None), got {self.name!r}")
        set_ = object.__setattr__  # normalise types on the frozen instance
        set_(self, "temperature", float(self.temperature))
        set_(self, "init_inclusion", float(self.init_inclusion))
        set_(self, "rho_init", float(self.rho_init))
        set_(self, "kl_weight", float(self.kl_weight))
        if self.partitionable_noise is not None:
            set_(self, "partitionable_noise", bool(self.partitionable_noise))

    @property
    def learns_noise(self) -> bool:
        """Whether ``noise`` is a latent site (Gaussian likelihood without a fixed noise)."""
        return self.likelihood == "gaussian" and self.noise is None


class UnitStructure(NamedTuple):
    """A network's parameters and the unit layers that own them.

    * ``layers``: the unit layers, output layer last (``net.unit_layers()``);
    * ``shapes``: ``{path: shape}`` of every random parameter (one weight site each);
    * ``owner``: ``{path: (layer, unit axis)}`` of the parameters a unit layer owns (batch
      statistics excluded: they follow their unit when pruning but are not random);
    * ``free_paths``: the parameters no unit owns (plain Gaussian prior, never pruned).
    """

    layers: tuple[UnitLayer, ...]
    shapes: dict[Path, tuple[int, ...]]
    owner: dict[Path, tuple[UnitLayer, int]]
    free_paths: tuple[Path, ...]

    @classmethod
    def of(cls, net: nnx.Module, functional: FunctionalNet) -> "UnitStructure":
        """The structure of ``net`` (``functional = FunctionalNet(net)``); ``ValueError`` if a unit
        layer names a parameter the network does not have."""
        layers = tuple(net.unit_layers())
        shapes = {p: tuple(v.shape) for p, v in functional.initial.items()}
        state_paths = set(flatten_paths(nnx.to_pure_dict(functional.rest)))
        owner = {}
        for layer in layers:
            for member in layer.members:
                if member.path in state_paths:
                    continue
                if member.path not in shapes:
                    raise ValueError(f"layer {layer.name} names parameter {path_name(member.path)}, "
                                     "which the network does not have")
                owner[member.path] = (layer, member.axis)
        return cls(layers, shapes, owner, tuple(p for p in shapes if p not in owner))


class ModelSpec(Protocol):
    """What the guide and the ELBO read from a model (:class:`sparse_bnn.core.model.SparseBNN`).

    ``inclusion`` is ``{layer: lambda_l}`` of the indicated layers; ``initial_params`` the
    guide's initial variational parameters (``{name: array}``, computed once per model).
    """

    prior: Prior
    options: ModelOptions
    functional: FunctionalNet
    layers: tuple[UnitLayer, ...]
    shapes: dict[Path, tuple[int, ...]]
    owner: dict[Path, tuple[UnitLayer, int]]
    inclusion: dict[str, float]

    @property
    def indicated_layers(self) -> tuple[UnitLayer, ...]: ...

    @property
    def initial_params(self) -> Mapping[str, jax.Array]: ...

    def samples_indicator(self, layer: UnitLayer) -> bool: ...


def scale_site_names(bnn: ModelSpec) -> list[str]:
    """The log-normal sites of a model: its prior's scale sites, then ``noise`` if learned."""
    return [s.name for s in bnn.prior.scale_sites(bnn.layers)] + (
        [NOISE_SITE] if bnn.options.learns_noise else [])


def lognormal_factors(bnn: ModelSpec, params: Mapping[str, jax.Array]) -> dict[str, LogNormalFactor]:
    """The guide's ``LN(loc, softplus(rho)^2)`` of every scale site (and ``noise``), from ``params``."""
    return {n: LogNormalFactor(params[loc_param(n)], softplus(params[rho_param(n)]))
            for n in scale_site_names(bnn)}


__all__ = ["INDICATOR_LOGIT_SUFFIX", "LIBRARY_SITE", "LIKELIHOODS", "LOC", "LOGIT", "LOGITS_SITE", "LibrarySite",
           "MEAN_SITE", "Masks", "ModelOptions", "ModelSpec", "NOISE_PRIOR_SCALE", "NOISE_SITE", "OBS_SITE",
           "PROBS_SITE", "RHO", "UnitStructure", "VARIATIONAL_SUFFIXES", "indicator_site", "lognormal_factors",
           "logit_param", "loc_param", "rho_param", "scale_site_names", "scoped_name", "softplus", "weight_site"]

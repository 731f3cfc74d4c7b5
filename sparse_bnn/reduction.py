"""Bayesian model reduction during training (``math.md`` §6).

Fit a simple model with a Gaussian slab (the flat prior, or any prior of the library in its
non-centred form) by SVI, score every reduced model in closed form from the guide's Gaussian
posterior, and keep training the reduced model:

* :func:`delta_f_from_posterior`: ``Delta F`` of switching off each weight entry;
* :func:`elementwise_masks`: prune entries with ``Delta F > zeta`` (learned per-layer rate);
* :func:`node_reduction` / :func:`node_keep_masks`: sum ``Delta F`` over each unit's group and
  switch whole units off, which :mod:`sparse_bnn.prune` turns into a compact network;
* :class:`Reduction`: the training-loop hook: warm-up SVI epochs, then a jitted reduction after
  every epoch; :class:`NodeBMRRule` makes :class:`sparse_bnn.shrink.Shrink` remove the units
  node-wise BMR prunes, so the network shrinks physically while it trains;
* :func:`fit_with_bmr`: ``fit`` with either of them.

>>> bnn = SparseBNN(MLP(784, (400, 400), 10, rngs=nnx.Rngs(0)), Flat(), n_data=60000)
>>> result = fit_with_bmr(bnn, x, y, mode="nodewise", warmup_epochs=5, epochs=20)
>>> weights, keep = posterior_mean_params(bnn, result.params, masks=result.state.masks)

Masks are jit *data*: all reductions keep the pytree structure of :class:`Masks` fixed (a unit
mask for every prunable layer, a weight mask for every prunable member in element-wise mode),
so changing their values never recompiles the training epoch.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparse_bnn import bmr
from sparse_bnn.spec import loc_param, rho_param, softplus
from sparse_bnn.model import Masks, SparseBNN
from sparse_bnn.nets.base import UnitLayer, unit_broadcast
from sparse_bnn.shrink import Shrink, ShrinkSchedule, fewest_first
from sparse_bnn.train.hooks import Hook
from sparse_bnn.train.loop import fit
from sparse_bnn.train.state import FitResult

MODES = ("elementwise", "nodewise")
NODE_THRESHOLDS = ("zero", "learned")
DEFAULT_REDUCED_VAR_RATIO = 1e-8
# During training (fit_with_bmr) at most this share of a layer's live units (entries) goes in
# one reduction step, see cap_pruning; one-shot post-hoc reductions are uncapped
DEFAULT_MAX_PRUNE_FRACTION = 0.5
# SVI epochs before fit_with_bmr's first reduction (README, "BMR warm-up": on the Fashion-MNIST
# MLP the shortest warm-ups keep the most accuracy)
DEFAULT_WARMUP_EPOCHS = 5


def default_warmup_epochs(epochs: int) -> int:
    """``fit_with_bmr``'s warm-up when none is given: ``DEFAULT_WARMUP_EPOCHS``, or half of a
    shorter run (at least one epoch)."""
    return min(DEFAULT_WARMUP_EPOCHS, max(1, int(epochs) // 2))


def resolve_warmup_epochs(warmup_epochs: int | None, epochs: int) -> int:
    """The warm-up ``fit_with_bmr`` runs: ``warmup_epochs``, or the default when ``None``.

    Raises ``ValueError`` unless ``0 <= warmup_epochs <= epochs``.
    """
    if warmup_epochs is None:
        return default_warmup_epochs(epochs)
    if not 0 <= int(warmup_epochs) <= int(epochs):
        raise ValueError(f"warmup_epochs (--bmr-warmup) must lie between 0 and the epochs ({epochs}), "
                         f"got {warmup_epochs}; reduction runs after every epoch from warmup_epochs on")
    return int(warmup_epochs)


class ReductionStats(NamedTuple):
    """What one reduction step did (all jax scalars / ``{layer: scalar}``).

    ``live_weights``: entries of all weight sites still in the model (not masked, not owned by
    a switched-off unit, not an input row of one; see :func:`live_entries`); ``live_units``: per
    prunable layer;
    ``zeta``: the learned log prior odds of inclusion per layer (0 where not learned).
    """

    live_weights: jax.Array
    live_units: dict[str, jax.Array]
    zeta: dict[str, jax.Array]


# ----------------------------------------------------------------------------------------------
# Delta F from the guide
# ----------------------------------------------------------------------------------------------


def _check_bnn(bnn: SparseBNN) -> None:
    if bnn.centred:
        raise ValueError("Bayesian model reduction needs the non-centred parametrisation, where every "
                         "w~ has the Gaussian prior N(0, sigma_0^2); build the SparseBNN with centred=False")


def posterior_moments(bnn: SparseBNN, params: Mapping[str, jax.Array]
                      ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """The guide's ``q(w~) = N(loc, softplus(rho)^2)`` of every weight site: ``(means, variances)``,
    each ``{site name: array like the parameter}``."""
    means, variances = {}, {}
    for path in bnn.shapes:
        site = bnn.weight_site(path)
        for name in (loc_param(site), rho_param(site)):
            if name not in params:
                raise ValueError(f"params has no {name!r}; pass the variational parameters of "
                                 "this model (bnn.init_params() or FitResult.params)")
        means[site] = jnp.asarray(params[loc_param(site)])
        variances[site] = softplus(jnp.asarray(params[rho_param(site)])) ** 2
    return means, variances


def live_entries(bnn: SparseBNN, masks: Masks | None = None) -> dict[str, jax.Array]:
    """``{site: float 0/1 array}``: the entries ``masks`` leave in the model.

    An entry is out when its weight mask is 0, when it belongs to a switched-off unit (unit mask 0),
    or when it is an input row of a switched-off unit whose ``inactive_output`` is 0 (it then
    multiplies a constant 0; the node-pruning transform removes it).
    """
    masks = masks or Masks()
    live = {}
    for path, shape in bnn.shapes.items():
        site = bnn.weight_site(path)
        live[site] = jnp.ones(shape, jnp.float32) * masks.weights.get(site, 1.0)
    for layer in (random_refs(bnn, l) for l in bnn.layers):
        if layer.name not in masks.units:
            continue
        unit_mask = jnp.asarray(masks.units[layer.name], jnp.float32)
        refs = list(layer.members) + (list(layer.consumers) if layer.inactive_output == 0.0 else [])
        for ref in refs:
            site = bnn.weight_site(ref.path)
            live[site] = live[site] * unit_broadcast(unit_mask, len(bnn.shapes[ref.path]), ref.axis,
                                                     ref.interleave)
    return live


def delta_f_from_posterior(bnn: SparseBNN, params: Mapping[str, jax.Array], masks: Masks | None = None,
                           reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO) -> dict[str, jax.Array]:
    """``Delta F`` of shrinking each weight entry's prior to ``reduced_var_ratio`` of itself.

    The model is non-centred: ``w = gate * w~`` with ``w~ ~ N(0, sigma_0^2)`` and the guide's
    ``q(w~) = N(loc, softplus(rho)^2)`` (for the flat prior ``gate = s_l``, the layer scale; for
    spike-and-slab priors ``gate = z * scale`` and ``q(w~)`` is the slab posterior given ``z = 1``).
    Pruning an entry means ``w~ = 0``, so ``Delta F`` is computed on ``w~`` with prior variance
    ``sigma_0^2``, posterior mean ``loc`` and precision ``1 / softplus(rho)^2``: multiplying by
    a positive gate maps ``w~ = 0`` to ``w = 0`` one to one and does not change the evidence
    ratio of the reduced model (``bmr.reduced_gaussian``; ``Delta F > 0`` favours pruning).

    Entries that ``masks`` already fix at zero (see :func:`live_entries`) get ``Delta F = 0``:
    their prior is reduced already, reducing it again changes nothing.

    Returns ``{site name: delta_f}``, one array like each weight parameter (every site of the
    network, including the output layer and free parameters). Jit-compatible.
    """
    _check_bnn(bnn)
    if not 0.0 < reduced_var_ratio < 1.0:
        raise ValueError(f"reduced_var_ratio must be in (0, 1), got {reduced_var_ratio}")
    means, variances = posterior_moments(bnn, params)
    live = live_entries(bnn, masks)
    prior_var = bnn.prior.slab_variance()
    out = {}
    for site in means:
        delta_f = bmr.reduced_gaussian(means[site], 1.0 / variances[site], prior_var,
                                       reduced_var_ratio * prior_var).delta_f
        out[site] = jnp.where(live[site] > 0, delta_f, 0.0)
    return out


def random_refs(bnn: SparseBNN, layer: UnitLayer) -> UnitLayer:
    """``layer`` with only the members/consumers that are random weights (no batch statistics)."""
    return dataclasses.replace(layer, members=tuple(m for m in layer.members if m.path in bnn.shapes),
                               consumers=tuple(c for c in layer.consumers if c.path in bnn.shapes))


def prunable_layers(bnn: SparseBNN) -> tuple[UnitLayer, ...]:
    """The layers reduction may act on: every unit layer but the output layer (``prunable=False``),
    restricted to their random weights."""
    return tuple(random_refs(bnn, l) for l in bnn.layers if l.prunable)


# ----------------------------------------------------------------------------------------------
# Node-wise reduction
# ----------------------------------------------------------------------------------------------


def node_reduction(bnn: SparseBNN, params: Mapping[str, jax.Array], masks: Masks | None = None,
                   reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO) -> dict[str, jax.Array]:
    """``{layer: delta_f [units]}``: ``Delta F`` of switching each unit off, for every prunable layer.

    A unit's group is its members' entries (``math.md`` §1: kernel column, bias, batch-norm
    channel, ...); with a factorised posterior the group's ``Delta F`` is the sum of its entries'
    (``bmr.group_delta_f``). Entries already out of the model contribute 0, so a switched-off
    unit scores 0. The output layer is never scored.
    """
    delta_f = delta_f_from_posterior(bnn, params, masks, reduced_var_ratio)
    by_path = {path: delta_f[bnn.weight_site(path)] for path in bnn.shapes}
    return {layer.name: bmr.group_delta_f(by_path, layer) for layer in prunable_layers(bnn)}


def cap_pruning(delta_f, live, zeta, max_fraction: float, n_bisect: int = 24):
    """Which live entries to prune: ``Delta F > zeta``, at most ``max_fraction`` of the live ones.

    ``Delta F`` scores each unit (entry) with all the others in place; removing every one with
    ``Delta F > 0`` at once ignores that they can stand in for each other, and early in training,
    while the posteriors are still wide, it removed every unit of the Fashion-MNIST MLP in one
    step. Capped, the largest ``Delta F`` go first and SVI lets the rest adapt before the next
    step. The cut is found by bisection on the score (no sort of the ~10^5 entries of a layer),
    and only when the candidates exceed the cap: never more than allowed; ties and the finite
    bisection may prune a few fewer.

    Args:
      delta_f, live: arrays of one shape, or sequences of such pairs (a layer's members, counted
        together); ``live`` is 1 for entries still in.
      zeta: the threshold (scalar).
      max_fraction: in ``(0, 1]``; ``1`` is the uncapped rule.
    Returns:
      bool, like ``delta_f``: True where the entry is pruned now.
    """
    single = not isinstance(delta_f, (list, tuple))
    scores_in, live_in = ([delta_f], [live]) if single else (list(delta_f), list(live))
    live_in = [l > 0 for l in live_in]
    candidates = [l & (d > zeta) for d, l in zip(scores_in, live_in)]

    def count(masks):
        return sum(jnp.sum(m) for m in masks)

    def result(masks):
        return masks[0] if single else masks

    if max_fraction >= 1.0:
        return result(candidates)
    allowed = jnp.floor(max_fraction * count(live_in))
    scores = [jnp.where(c, d, -jnp.inf) for c, d in zip(candidates, scores_in)]

    def capped(_):
        low = jnp.asarray(zeta, scores[0].dtype)
        high = jnp.max(jnp.stack([jnp.max(s) for s in scores]))

        def bisect(_, bounds):
            low, high = bounds
            middle = 0.5 * (low + high)
            too_many = count([s > middle for s in scores]) > allowed
            return jnp.where(too_many, middle, low), jnp.where(too_many, high, middle)

        _, cut = jax.lax.fori_loop(0, n_bisect, bisect, (low, high))
        return [c & (s > cut) for c, s in zip(candidates, scores)]

    # Once the first steps have thinned a layer, the candidates rarely exceed the cap: no search.
    return result(jax.lax.cond(count(candidates) > allowed, capped, lambda _: candidates, None))


def node_keep_masks(bnn: SparseBNN, params: Mapping[str, jax.Array], masks: Masks | None = None,
                    reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO, threshold: str = "zero",
                    n_iter: int = 10, max_prune_fraction: float = 1.0) -> dict[str, jax.Array]:
    """``{layer: float 0/1 [units]}``: keep unit ``j`` unless the reduced model is favoured.

    ``threshold="zero"`` (default): keep where ``DeltaF_group <= 0``, i.e. compare the model
    without the unit to the one with it at even prior odds. A group sums ``m_l`` entries, so its
    ``Delta F`` is large in magnitude for any unit the data use; a learned per-layer rate moves
    the threshold by at most about ``log(k_l)`` and cannot overrule that, and for units the data
    do not use (``Delta F ~ 0``) the Beta-Bernoulli fixed point is uninformative, so the even-odds
    rule is the simpler, width-independent choice.
    ``threshold="learned"``: prune where ``DeltaF_group > zeta_l`` with the per-layer learned rate
    of :func:`bmr.learned_inclusion_threshold` over the layer's live units.

    A unit switched off by ``masks.units`` stays off; at most ``max_prune_fraction`` of a layer's
    live units go in one call (:func:`cap_pruning`).
    """
    masks = masks or Masks()
    return keep_from_node_scores(node_reduction(bnn, params, masks, reduced_var_ratio), masks, threshold,
                                 n_iter, max_prune_fraction)


def keep_from_node_scores(scores: Mapping[str, jax.Array], masks: Masks, threshold: str = "zero",
                          n_iter: int = 10, max_prune_fraction: float = 1.0) -> dict[str, jax.Array]:
    """:func:`node_keep_masks` from given ``{layer: Delta F [units]}`` (:func:`node_reduction`)."""
    if threshold not in NODE_THRESHOLDS:
        raise ValueError(f"unknown node threshold {threshold!r}; choose one of {NODE_THRESHOLDS}")
    keep = {}
    for name, delta_f in scores.items():
        old = jnp.asarray(masks.units.get(name, jnp.ones_like(delta_f)), jnp.float32)
        if threshold == "learned":
            excluded = jnp.where(old > 0, delta_f, jnp.inf)
            zeta = bmr.learned_inclusion_threshold(excluded, n_iter).zeta
        else:
            zeta = 0.0
        keep[name] = old * (~cap_pruning(delta_f, old, zeta, max_prune_fraction)).astype(jnp.float32)
    return keep


class NodeBMRRule:
    """The removal rule of :class:`sparse_bnn.shrink.Shrink` for node-wise BMR: after every epoch
    from ``warmup_epochs`` on, the units :func:`node_keep_masks` prunes (capped per step, largest
    ``Delta F`` first) are removed and the network shrinks as with the ``gamma`` rule."""

    def __init__(self, warmup_epochs: int, reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO,
                 node_threshold: str = "zero", n_iter: int = 10,
                 max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION):
        self.warmup_epochs = int(warmup_epochs)
        self.options = (reduced_var_ratio, node_threshold, n_iter, max_prune_fraction)
        self._model, self._reduce = None, None

    def layers(self, bnn: SparseBNN) -> list[UnitLayer]:
        _check_bnn(bnn)
        return list(prunable_layers(bnn))

    def __call__(self, bnn, state, tracker, schedule, epoch):
        if epoch < self.warmup_epochs:
            return {}, tracker
        if bnn is not self._model:  # a new (shrunk) model: new shapes, compile again
            ratio, threshold, n_iter, fraction = self.options
            self._model = bnn

            def reduce(params, masks):
                scores = node_reduction(bnn, params, masks, ratio)
                return keep_from_node_scores(scores, masks, threshold, n_iter, fraction), scores

            self._reduce = jax.jit(reduce)
        keep, delta_f = jax.device_get(self._reduce(state.params, state.masks))
        gone = {}
        for name, kept in keep.items():
            alive = np.asarray(state.masks.units[name]) > 0.5
            gone[name] = fewest_first(np.flatnonzero(alive & (kept < 0.5)), -delta_f[name], alive,
                                      schedule.min_units)
        return gone, tracker


# ----------------------------------------------------------------------------------------------
# Element-wise reduction
# ----------------------------------------------------------------------------------------------


def elementwise_reduction(bnn: SparseBNN, params: Mapping[str, jax.Array], masks: Masks | None = None,
                          reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO, n_iter: int = 10,
                          max_prune_fraction: float = 1.0) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Element-wise pruning with a learned per-layer inclusion rate (``math.md`` §6).

    For each prunable layer, the ``Delta F`` of all its members' live entries (kernel and bias
    together) feed the Beta-Bernoulli fixed point ``zeta_l`` (:func:`bmr.learned_inclusion_threshold`);
    entries already pruned count as excluded (``q_i = 0``), so the rate is the fraction of the
    layer's entries still in. An entry is pruned where ``Delta F > zeta_l``, at most
    ``max_prune_fraction`` of the layer's live entries per call (:func:`cap_pruning`).

    Returns ``(weight masks {site: float 0/1}, zeta {layer: scalar})`` for the members of every
    prunable layer; old masks are ANDed in, so pruned entries stay pruned. The output layer and
    free parameters get no mask.
    """
    masks = masks or Masks()
    delta_f = delta_f_from_posterior(bnn, params, masks, reduced_var_ratio)
    live = live_entries(bnn, masks)
    new_masks, zetas = {}, {}
    for layer in prunable_layers(bnn):
        sites = [bnn.weight_site(m.path) for m in layer.members]
        scores = [jnp.where(live[site] > 0, delta_f[site], jnp.inf) for site in sites]
        zeta = bmr.learned_inclusion_threshold(scores, n_iter).zeta
        zetas[layer.name] = zeta
        olds = [jnp.broadcast_to(jnp.asarray(masks.weights.get(site, 1.0), jnp.float32) * live[site],
                                 delta_f[site].shape) for site in sites]
        pruned = cap_pruning([delta_f[site] for site in sites], olds, zeta, max_prune_fraction)
        for site, old, gone in zip(sites, olds, pruned):
            new_masks[site] = old * (~gone).astype(jnp.float32)
    return new_masks, zetas


def elementwise_masks(bnn: SparseBNN, params: Mapping[str, jax.Array], masks: Masks | None = None,
                      reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO, n_iter: int = 10) -> Masks:
    """Updated masks after one element-wise reduction (see :func:`elementwise_reduction`).

    ``weights`` holds a 0/1 mask for every member of every prunable layer (pruned entries are 0
    and stay 0); ``units`` switches off units whose entries are all pruned, or whose input rows
    downstream are all pruned (they no longer affect the output), so that the node-pruning
    transform can remove them; given unit masks are kept (ANDed).
    """
    masks = masks or Masks()
    weights, _ = elementwise_reduction(bnn, params, masks, reduced_var_ratio, n_iter)
    weights = {**{k: jnp.asarray(v, jnp.float32) for k, v in masks.weights.items()}, **weights}
    return Masks(units_from_weight_masks(bnn, weights, masks.units), weights)


def units_from_weight_masks(bnn: SparseBNN, weights: Mapping[str, jax.Array],
                            units: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """``{layer: float 0/1 [units]}`` for every prunable layer: a unit is off when all of its member
    entries are masked, or when it has consumers and all of its input rows there are masked."""
    units = units or {}
    out = {}
    for layer in prunable_layers(bnn):
        old = jnp.asarray(units.get(layer.name, jnp.ones(layer.units)), jnp.float32)
        owned = _units_any(bnn, layer.members, weights, layer.units)
        fed = _units_any(bnn, layer.consumers, weights, layer.units) if layer.consumers else True
        out[layer.name] = old * jnp.logical_and(owned, fed).astype(jnp.float32)
    return out


def _units_any(bnn: SparseBNN, refs, weights: Mapping[str, jax.Array], units: int) -> jax.Array:
    """Per unit: whether any entry along the refs' unit axes is unmasked. ``-> bool [units]``."""
    count = jnp.zeros(units)
    for ref in refs:
        site = bnn.weight_site(ref.path)
        mask = jnp.broadcast_to(jnp.asarray(weights.get(site, 1.0), jnp.float32), bnn.shapes[ref.path])
        count = count + bmr.sum_over_units(mask, ref.axis, ref.interleave)
    return count > 0


# ----------------------------------------------------------------------------------------------
# Sparsity of a fitted model
# ----------------------------------------------------------------------------------------------


def sparsity(bnn: SparseBNN, params: Mapping[str, jax.Array], masks: Masks | None = None,
             threshold: float = 0.5) -> dict[str, Any]:
    """Fractions of weight entries and of prunable units the fitted model has removed.

    Units are dropped by the median-probability model (indicator priors) and by unit masks;
    entries are out when masked, owned by a dropped unit or an input row of one (see
    :func:`live_entries`). Returns ``{"pruned_weights": float, "pruned_units": float,
    "kept_units": {layer: int}}``; fractions over all weight entries / all prunable units.
    """
    from sparse_bnn.posterior import keep_masks
    masks = masks or Masks()
    keep = keep_masks(bnn, params, threshold, masks)
    units = {name: jnp.asarray(k, jnp.float32) for name, k in keep.items()}
    live = live_entries(bnn, Masks(units, dict(masks.weights)))
    total = sum(int(np.prod(s)) for s in bnn.shapes.values())
    live_count = float(sum(jnp.sum(v) for v in live.values()))
    layers = prunable_layers(bnn)
    kept = {l.name: int(np.sum(np.asarray(units[l.name]))) if l.name in units else l.units for l in layers}
    n_units = sum(l.units for l in layers)
    return {"pruned_weights": 1.0 - live_count / total,
            "pruned_units": 1.0 - sum(kept.values()) / n_units if n_units else 0.0,
            "kept_units": kept}


# ----------------------------------------------------------------------------------------------
# Training with reduction
# ----------------------------------------------------------------------------------------------


def full_masks(bnn: SparseBNN, mode: str, masks: Masks | None = None) -> Masks:
    """Masks with a fixed structure for ``mode``: a unit mask for every prunable layer and, in
    element-wise mode, a weight mask for every prunable member; given masks are multiplied in."""
    if mode not in MODES:
        raise ValueError(f"unknown BMR mode {mode!r}; choose one of {MODES}")
    masks = masks or Masks()
    for name in masks.units:
        if name not in {l.name for l in bnn.layers}:
            raise ValueError(f"masks.units names layer {name!r}, which the network does not have")
    units = {l.name: jnp.ones(l.units, jnp.float32) * jnp.asarray(masks.units.get(l.name, 1.0), jnp.float32)
             for l in prunable_layers(bnn)}
    units.update({k: jnp.asarray(v, jnp.float32) for k, v in masks.units.items() if k not in units})
    weights = {k: jnp.asarray(v, jnp.float32) for k, v in masks.weights.items()}
    if mode == "elementwise":
        for layer in prunable_layers(bnn):
            for member in layer.members:
                site = bnn.weight_site(member.path)
                weights[site] = jnp.ones(bnn.shapes[member.path], jnp.float32) * weights.get(site, 1.0)
    return Masks(units, weights)


def make_reduction_step(bnn: SparseBNN, mode: str, reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO,
                        node_threshold: str = "zero", n_iter: int = 10,
                        max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION) -> Callable:
    """A jitted reduction: ``(params, masks) -> (new masks, ReductionStats)``.

    ``masks`` must have the structure of :func:`full_masks` for ``mode``; the new masks have the
    same structure, so neither this function nor the training epoch recompiles as they change.
    """
    _check_bnn(bnn)
    if mode not in MODES:
        raise ValueError(f"unknown BMR mode {mode!r}; choose one of {MODES}")
    if node_threshold not in NODE_THRESHOLDS:
        raise ValueError(f"unknown node threshold {node_threshold!r}; choose one of {NODE_THRESHOLDS}")

    def step(params, masks):
        if mode == "elementwise":
            weights, zeta = elementwise_reduction(bnn, params, masks, reduced_var_ratio, n_iter,
                                                  max_prune_fraction)
            weights = {**masks.weights, **weights}
            new = Masks(units_from_weight_masks(bnn, weights, masks.units), weights)
        else:
            units = node_keep_masks(bnn, params, masks, reduced_var_ratio, node_threshold, n_iter,
                                    max_prune_fraction)
            new = Masks({**masks.units, **units}, dict(masks.weights))
            zeta = {name: jnp.zeros(()) for name in units}
        live = live_entries(bnn, new)
        stats = ReductionStats(sum(jnp.sum(v) for v in live.values()),
                               {l.name: jnp.sum(new.units[l.name]) for l in prunable_layers(bnn)}, zeta)
        return new, stats

    return jax.jit(step)


class Reduction(Hook):
    """The hook of iterative Bayesian model reduction (``math.md`` §6): after every epoch from
    ``warmup_epochs`` on, a jitted reduction updates the masks and SVI goes on with the reduced model.

    * ``mode="elementwise"``: weight masks, prune entries with ``Delta F > zeta_l`` (learned
      per-layer inclusion rate); units left with no entries (or no outputs) are switched off too.
    * ``mode="nodewise"``: unit masks, switch off units with group ``Delta F > 0``
      (``node_threshold="learned"`` for the learned per-layer rate; see :func:`node_keep_masks`).

    Pruned entries and units stay pruned; the output layer is never pruned. Masks are jit data
    with a fixed structure (:func:`full_masks`), so the epoch compiles once. To remove the pruned
    units physically while training, use ``Shrink(rule=NodeBMRRule(...))`` instead.

    Args:
      mode: ``"elementwise"`` or ``"nodewise"``.
      warmup_epochs: SVI epochs before the first reduction (``None``: :func:`default_warmup_epochs`
        of the run's epochs).
      reduced_var_ratio: ``g^2 / sigma_0^2`` of a pruned entry's reduced prior.
      node_threshold: ``"zero"`` or ``"learned"`` (node-wise mode).
      n_iter: fixed-point iterations of the learned inclusion rate.
      max_prune_fraction: at most this share of a layer's live units (node-wise) or entries
        (element-wise) is pruned per reduction step, those with the largest ``Delta F``
        (:func:`cap_pruning`); ``1.0`` prunes every candidate at once.

    History fields: ``pruned_fraction`` (of all weight entries), ``bmr_seconds`` (the reduction's
    wall-clock, 0 in warm-up epochs) and, element-wise, ``zeta`` per layer.
    """

    name = "bmr"
    modifies_model = True

    def __init__(self, mode: str = "elementwise", warmup_epochs: int | None = None, *,
                 reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO, node_threshold: str = "zero",
                 n_iter: int = 10, max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION):
        if mode not in MODES:
            raise ValueError(f"unknown BMR mode {mode!r}; choose one of {MODES}")
        if node_threshold not in NODE_THRESHOLDS:
            raise ValueError(f"unknown node threshold {node_threshold!r}; choose one of {NODE_THRESHOLDS}")
        if not 0.0 < float(max_prune_fraction) <= 1.0:
            raise ValueError(f"max_prune_fraction must lie in (0, 1], got {max_prune_fraction}")
        self.mode, self.warmup_epochs = mode, warmup_epochs
        self.options = (reduced_var_ratio, node_threshold, n_iter, max_prune_fraction)
        self._model = None

    def init(self, fitting, info):
        _check_bnn(fitting.bnn)
        self._warmup = resolve_warmup_epochs(self.warmup_epochs, info.epochs)
        state = fitting.state._replace(masks=full_masks(fitting.bnn, self.mode, fitting.state.masks))
        return fitting._replace(state=state), None

    def _programs(self, bnn: SparseBNN, state):
        if bnn is not self._model:  # compiled now, so that bmr_seconds times the reduction alone
            self._model = bnn
            self._reduce = make_reduction_step(bnn, self.mode, *self.options).lower(
                state.params, state.masks).compile()
            self._count_live = jax.jit(lambda masks: sum(jnp.sum(v) for v in live_entries(bnn, masks).values()))
            self._total = sum(int(np.prod(s)) for s in bnn.shapes.values())
        return self._reduce, self._count_live

    def update(self, fitting, hook_state, record):
        reduce, count_live = self._programs(fitting.bnn, fitting.state)
        state, fields = fitting.state, {"bmr_seconds": 0.0}
        if record["epoch"] >= self._warmup:
            started = time.perf_counter()
            masks, reduction = reduce(state.params, state.masks)
            masks = jax.block_until_ready(masks)
            fields["bmr_seconds"] = time.perf_counter() - started
            state = state._replace(masks=masks)
            if self.mode == "elementwise":
                fields["zeta"] = {k: float(v) for k, v in reduction.zeta.items()}
        fields["pruned_fraction"] = 1.0 - float(count_live(state.masks)) / self._total
        return fitting._replace(state=state), hook_state, fields

    def progress(self, record):
        return {"pruned": f"{record['pruned_fraction']:.3f}"} if "pruned_fraction" in record else {}


def fit_with_bmr(bnn: SparseBNN, x, y, *, mode: str = "elementwise", warmup_epochs: int | None = None,
                 epochs: int, reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO, node_threshold: str = "zero",
                 n_iter: int = 10, max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION,
                 shrink: ShrinkSchedule | None = None, hooks: Sequence[Hook] = (), **fit_kwargs) -> FitResult:
    """:func:`sparse_bnn.train.fit` with Bayesian model reduction: the :class:`Reduction` hook, or
    with ``shrink`` (node-wise only) ``Shrink(shrink, NodeBMRRule(...))``, which removes the
    pruned units physically while training (its ``bucket``, ``shrink_factor`` and ``min_units``
    shape the shrinking; ``warmup_epochs``, ``threshold`` and ``patience`` belong to the
    ``gamma`` rule and are not used).

    Args:
      bnn: a non-centred model with a Gaussian slab (``Flat()`` is the intended one).
      mode, warmup_epochs, reduced_var_ratio, node_threshold, n_iter, max_prune_fraction: as in
        :class:`Reduction`.
      epochs, **fit_kwargs: as in :func:`sparse_bnn.train.fit` (devices, streaming, resume, ...).

    Returns:
      :class:`~sparse_bnn.train.state.FitResult` whose ``state.masks`` holds the final masks
      (pass them to ``posterior_mean_params``/``predict``/``kept_units``); with ``shrink`` its
      ``bnn`` is the final, smaller model and ``unit_origin`` maps its units to the original ones.
    """
    _check_bnn(bnn)
    if mode not in MODES:
        raise ValueError(f"unknown BMR mode {mode!r}; choose one of {MODES}")
    if shrink is None:
        reduction = Reduction(mode, warmup_epochs, reduced_var_ratio=reduced_var_ratio,
                              node_threshold=node_threshold, n_iter=n_iter, max_prune_fraction=max_prune_fraction)
        return fit(bnn, x, y, epochs=epochs, hooks=[reduction, *hooks], **fit_kwargs)
    if mode != "nodewise":
        raise ValueError("shrinking removes whole units; element-wise BMR prunes single weights. "
                         "Use mode='nodewise' with shrink, or leave shrink out")
    if not 0.0 < float(max_prune_fraction) <= 1.0:
        raise ValueError(f"max_prune_fraction must lie in (0, 1], got {max_prune_fraction}")
    if node_threshold not in NODE_THRESHOLDS:
        raise ValueError(f"unknown node threshold {node_threshold!r}; choose one of {NODE_THRESHOLDS}")
    rule = NodeBMRRule(resolve_warmup_epochs(warmup_epochs, epochs), reduced_var_ratio, node_threshold, n_iter,
                       max_prune_fraction)
    return fit(bnn, x, y, epochs=epochs, hooks=[Shrink(shrink, rule), *hooks], **fit_kwargs)

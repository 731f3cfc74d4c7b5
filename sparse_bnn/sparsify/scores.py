"""Bayesian model reduction scores (``math.md`` §6), the non-hook part of BMR: ``Delta F`` of
every weight entry from the guide's Gaussian posterior (:func:`delta_f_from_posterior`), node-wise
reductions (:func:`node_reduction`, :func:`node_keep_masks`, capped by :func:`cap_pruning`),
element-wise ones (:func:`elementwise_reduction`, :func:`elementwise_masks`), the masks they give,
and the :func:`sparsity` of a fitted model.

The closed-form formulas are :mod:`sparse_bnn.sparsify.bmr`; the training-loop hook that applies
these reductions is :class:`sparse_bnn.sparsify.reduction.Reduction`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.core.spec import loc_param, rho_param, softplus
from sparse_bnn.nets.base import UnitLayer, unit_broadcast
from sparse_bnn.sparsify import bmr

MODES = ("elementwise", "nodewise")
NODE_THRESHOLDS = ("zero", "learned")
DEFAULT_REDUCED_VAR_RATIO = 1e-8
# During training (fit_with_bmr) at most this share of a layer's live units (entries) goes in
# one reduction step, see cap_pruning; one-shot post-hoc reductions are uncapped
DEFAULT_MAX_PRUNE_FRACTION = 0.5


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
    from sparse_bnn.core.posterior import keep_masks
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

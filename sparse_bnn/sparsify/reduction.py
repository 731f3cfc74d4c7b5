"""Bayesian model reduction during training (``math.md`` §6).

Fit a simple model with a Gaussian slab (the flat prior, or any prior of the library in its
non-centred form) by SVI, score every reduced model in closed form from the guide's Gaussian
posterior, and keep training the reduced model:

* :func:`~sparse_bnn.sparsify.scores.delta_f_from_posterior`: ``Delta F`` of switching off each
  weight entry;
* :func:`~sparse_bnn.sparsify.scores.elementwise_masks`: prune entries with ``Delta F > zeta``
  (learned per-layer rate);
* :func:`~sparse_bnn.sparsify.scores.node_reduction` /
  :func:`~sparse_bnn.sparsify.scores.node_keep_masks`: sum ``Delta F`` over each unit's group and
  switch whole units off, which :mod:`sparse_bnn.compact.prune` turns into a compact network;
* :class:`Reduction`: the training-loop hook: warm-up SVI epochs, then a jitted reduction after
  every epoch; :class:`NodeBMRRule` makes :class:`sparse_bnn.sparsify.shrink.Shrink` remove the units
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

import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.nets.base import UnitLayer
from sparse_bnn.sparsify.scores import (DEFAULT_MAX_PRUNE_FRACTION, DEFAULT_REDUCED_VAR_RATIO, MODES, NODE_THRESHOLDS,
                                        _check_bnn, elementwise_reduction, keep_from_node_scores, live_entries,
                                        node_keep_masks, node_reduction, prunable_layers, units_from_weight_masks)
from sparse_bnn.sparsify.shrink import Shrink, ShrinkSchedule, fewest_first
from sparse_bnn.train.hooks import Hook
from sparse_bnn.train.loop import fit
from sparse_bnn.train.state import FitResult

# SVI epochs before fit_with_bmr's first reduction (docs/tuning.md, "BMR warm-up": short
# warm-ups keep the most accuracy)
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


def check_options(mode: str, node_threshold: str = "zero",
                  max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION) -> None:
    """``ValueError`` naming the first bad option of a reduction."""
    if mode not in MODES:
        raise ValueError(f"unknown BMR mode {mode!r}; choose one of {MODES}")
    if node_threshold not in NODE_THRESHOLDS:
        raise ValueError(f"unknown node threshold {node_threshold!r}; choose one of {NODE_THRESHOLDS}")
    if not 0.0 < float(max_prune_fraction) <= 1.0:
        raise ValueError(f"max_prune_fraction must lie in (0, 1], got {max_prune_fraction}")


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


class NodeBMRRule:
    """The removal rule of :class:`sparse_bnn.sparsify.shrink.Shrink` for node-wise BMR: after every epoch
    from ``warmup_epochs`` on, the units :func:`node_keep_masks` prunes (capped per step, largest
    ``Delta F`` first) are removed and the network shrinks as with the ``gamma`` rule."""

    def __init__(self, warmup_epochs: int, reduced_var_ratio: float = DEFAULT_REDUCED_VAR_RATIO,
                 node_threshold: str = "zero", n_iter: int = 10,
                 max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION):
        check_options("nodewise", node_threshold, max_prune_fraction)
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
# Training with reduction
# ----------------------------------------------------------------------------------------------


def full_masks(bnn: SparseBNN, mode: str, masks: Masks | None = None) -> Masks:
    """Masks with a fixed structure for ``mode``: a unit mask for every prunable layer and, in
    element-wise mode, a weight mask for every prunable member; given masks are multiplied in."""
    check_options(mode)
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
    check_options(mode, node_threshold, max_prune_fraction)

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
        check_options(mode, node_threshold, max_prune_fraction)
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
            live = reduction.live_weights
            if self.mode == "elementwise":
                fields["zeta"] = {k: float(v) for k, v in reduction.zeta.items()}
        else:
            live = count_live(state.masks)
        fields["pruned_fraction"] = 1.0 - float(live) / self._total
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
    check_options(mode, node_threshold, max_prune_fraction)
    if shrink is None:
        reduction = Reduction(mode, warmup_epochs, reduced_var_ratio=reduced_var_ratio,
                              node_threshold=node_threshold, n_iter=n_iter, max_prune_fraction=max_prune_fraction)
        return fit(bnn, x, y, epochs=epochs, hooks=[reduction, *hooks], **fit_kwargs)
    if mode != "nodewise":
        raise ValueError("shrinking removes whole units; element-wise BMR prunes single weights. "
                         "Use mode='nodewise' with shrink, or leave shrink out")
    rule = NodeBMRRule(resolve_warmup_epochs(warmup_epochs, epochs), reduced_var_ratio, node_threshold, n_iter,
                       max_prune_fraction)
    return fit(bnn, x, y, epochs=epochs, hooks=[Shrink(shrink, rule), *hooks], **fit_kwargs)

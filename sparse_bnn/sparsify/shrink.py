"""Shrink the network while it trains: remove switched-off units for good and keep training on
the physically smaller network.

Most units of a spike-and-slab network are switched off early (``gamma -> 0``), yet every epoch
of :func:`sparse_bnn.train.fit` still pays for the full dense network. The :class:`Shrink` hook
(``fit(..., hooks=[Shrink()])``, or :func:`fit_shrinking`) runs the same epochs and, after a
warm-up,

1. counts, per unit, the consecutive epochs its inclusion probability ``gamma`` stayed below
   ``threshold``; a unit whose count reaches ``patience`` is *removed for good*: its unit mask
   (:class:`sparse_bnn.core.model.Masks`) is set to 0, which fixes its indicator at 0 exactly as the
   fine-tuning phase does (changing a mask never recompiles);
2. when the *bucketed* width of a layer (alive units rounded up to a multiple of ``bucket``)
   drops below its physical width, builds the same architecture with fewer units and carries
   the surviving variational parameters and the optimiser state (Adam moments) over
   (:func:`slice_variational`, :func:`slice_opt_state`); the epoch is recompiled then, and only
   then. Removed units that fill a bucket stay as padding with unit mask 0.

Which units go is a :class:`RemovalRule`: :class:`GammaRule` (step 1, the default) or
node-wise Bayesian model reduction (``reduction.NodeBMRRule``), for models without
indicators. The hook runs on the training loop like any other, so shrinking works over a device
mesh, with streamed data, and resumes from checkpoints (the tracker is part of them).

Because widths only shrink, in steps of ``bucket`` units and only when some layer's width falls
to ``shrink_factor`` (default 1/4) of its physical width or less, a run compiles at most
``1 + sum_l ceil(k_l / bucket)`` times, and in practice about ``log4(k_l / bucket)`` times.

What "the same model" means. A removed unit ``j`` of layer ``l`` (mask 0, ``activation(0) = 0``)
sends nothing downstream, so the likelihood never sees its own weights, its per-unit scales or
its rows in the consumers. On removal those consumer rows are put at their optimum, the slab
prior (:func:`~sparse_bnn.sparsify.slicing.release_units`; otherwise their KL, gated by the
*consumer's* indicator, would keep pulling on it). Slicing then drops exactly the orphaned
variables; the likelihood and the KL of every surviving variable are unchanged. What the masked network still carries beyond the
sliced one is the KL of the removed units' per-unit scale sites (``analytic_kl`` does not mask
them): a constant for the surviving parameters, so gradients, Adam steps and the fitted
posterior of every surviving variable are the same (``tests/test_shrink.py`` checks the loss
identity and one Adam step to float32 precision). This is exact in the default non-centred
form; in the centred form the rows' prior variance depends on the consumer's scales, so
``q = p`` is only approximately reached.

Supported architectures: any net whose removable units send ``activation(0) = 0`` downstream and
whose unit layers slice generically (members along the unit axis, consumers along the input
axis, interleave honoured): the MLP (with a zero-preserving activation), LeNet-5-Caffe,
LeNet-5, the Vision Transformer (attention heads and MLP units; heads per block may then differ)
and the MLP-Mixer (token- and channel-MLP units) are tested. A unit layer with ``inactive_output != 0`` (a sigmoid MLP) is refused: its
constant output cannot be folded into a *random* consumer bias.

Example::

    result = fit(bnn, x, y, epochs=200, hooks=[Shrink(ShrinkSchedule(warmup_epochs=10))], devices=4)
    result.bnn            # the final, physically smaller model
    result.unit_origin    # {layer: original index of each final unit}
"""
from __future__ import annotations

import time
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import jax
import numpy as np

from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.core.spec import logit_param
from sparse_bnn.nets.base import UnitLayer
from sparse_bnn.sparsify.slicing import bucketed_width, release_units, shrink_state
from sparse_bnn.train.hooks import Hook, unit_masks_with
from sparse_bnn.train.loop import fit
from sparse_bnn.train.state import FitResult, Fitting, TrainState

DEFAULT_THRESHOLD = 0.05  # floor of the default removal threshold, see ShrinkSchedule

__all__ = ["GammaRule", "RemovalRule", "Shrink", "ShrinkResult", "ShrinkSchedule", "ShrinkTracker", "fewest_first",
           "fit_shrinking", "keep_from_origin", "removal_threshold"]


class ShrinkSchedule(NamedTuple):
    """When units are removed and how widths are rounded.

    Attributes:
      warmup_epochs: epochs before any unit may be removed.
      threshold: a unit is a candidate while its inclusion probability ``gamma < threshold``.
        ``None`` (default): ``max(0.05, 2 * lambda_l)`` per layer (capped at 0.25). A unit in
        fewer than 5% of the posterior's networks is off in the median model; the floor
        ``2 * lambda_l`` matters because a switched-off unit's ``gamma`` settles just above
        ``lambda_l`` (the Bernoulli KL pulls it there), so a fixed threshold below ``lambda_l``
        never triggers. Units that stay below 0.05 for a few epochs do not come back, while a
        lower floor leaves switched-off units at full width for many epochs.
      patience: consecutive epochs (after the warm-up) below ``threshold`` before removal.
      bucket: physical widths are the alive units rounded up to a multiple of ``bucket``
        (capped at the original width); fewer, larger steps mean fewer recompilations.
      min_units: units every layer keeps alive (>= 1: Flax cannot build a zero-width layer);
        when more candidates would go, those with the largest ``gamma`` stay.
      shrink_factor: shrink physically only when some layer's bucketed width is at most this
        fraction of its physical width (all layers shrink then). ``1.0`` shrinks at every bucket
        drop; a factor ``f`` bounds recompilations by ``~log(k / bucket) / log(1 / f)`` per
        layer however gradually units go, at the price of some padding. A rebuild costs
        about one XLA compilation of the epoch, and removals come in bursts, so fewer, larger
        rebuilds (the default 0.25) train faster than shrinking at every bucket drop.
    """

    warmup_epochs: int = 10
    threshold: float | None = None
    patience: int = 3
    bucket: int = 16
    min_units: int = 1
    shrink_factor: float = 0.25

    def validate(self) -> "ShrinkSchedule":
        if int(self.warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.threshold is not None and not 0.0 < float(self.threshold) < 0.5:
            raise ValueError(f"threshold must lie in (0, 0.5) (a removed unit must be one the "
                             f"median model drops), got {self.threshold}")
        if int(self.patience) < 1:
            raise ValueError(f"patience must be >= 1 epoch, got {self.patience}")
        if int(self.bucket) < 1:
            raise ValueError(f"bucket must be a positive integer, got {self.bucket}")
        if not 0.0 < float(self.shrink_factor) <= 1.0:
            raise ValueError(f"shrink_factor must lie in (0, 1], got {self.shrink_factor}")
        if int(self.min_units) < 1:
            raise ValueError(f"min_units must be >= 1 (a layer cannot vanish), got {self.min_units}")
        return self


# ----------------------------------------------------------------------------- the hook

class ShrinkTracker(NamedTuple):
    """Host-side bookkeeping of a shrinking run (arrays in the current physical numbering).

    ``original``: ``{layer: original width}``; ``origin``: ``{layer: int [physical units]}``, the
    original index of each physical unit; ``below``: ``{layer: int [physical units]}``, the
    consecutive epochs each unit has counted towards removal; ``removed``: removal events.
    """

    original: dict[str, int]
    origin: dict[str, np.ndarray]
    below: dict[str, np.ndarray]
    removed: tuple[dict, ...] = ()

    def to_json(self) -> dict:
        return {"original": self.original, "origin": {k: v.tolist() for k, v in self.origin.items()},
                "below": {k: v.tolist() for k, v in self.below.items()}, "removed": list(self.removed)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ShrinkTracker":
        return cls(dict(data["original"]), {k: np.asarray(v, np.int64) for k, v in data["origin"].items()},
                   {k: np.asarray(v, np.int64) for k, v in data["below"].items()}, tuple(data["removed"]))


def removal_threshold(bnn: SparseBNN, layer: str, schedule: ShrinkSchedule) -> float:
    """The ``gamma`` below which a unit of ``layer`` counts towards removal."""
    if schedule.threshold is not None:
        return float(schedule.threshold)
    return min(max(DEFAULT_THRESHOLD, 2.0 * float(bnn.inclusion[layer])), 0.25)


def fewest_first(candidates: np.ndarray, priority: np.ndarray, alive: np.ndarray, min_units: int) -> np.ndarray:
    """``candidates`` (physical indices), sorted, cut so that ``min_units`` stay alive; when some
    must stay, those with the lowest ``priority`` go first."""
    spare = int(alive.sum()) - int(min_units)
    if spare <= 0:
        return np.zeros(0, np.int64)
    if candidates.size > spare:
        candidates = candidates[np.argsort(priority[candidates], kind="stable")[:spare]]
    return np.sort(candidates)


class RemovalRule(Protocol):
    """What :class:`Shrink` removes: after each epoch, ``({layer: physical unit indices}, tracker)``,
    the alive units to remove now (cut by :func:`fewest_first` to keep ``schedule.min_units``)
    and the tracker with the rule's counters updated."""

    def layers(self, bnn: SparseBNN) -> list[UnitLayer]:
        """The layers whose units the rule removes (they carry unit masks from the start)."""

    def __call__(self, bnn: SparseBNN, state: TrainState, tracker: ShrinkTracker, schedule: ShrinkSchedule,
                 epoch: int) -> tuple[dict[str, np.ndarray], ShrinkTracker]:
        ...


class GammaRule:
    """The default rule: a unit goes when its inclusion probability ``gamma`` stayed below
    :func:`removal_threshold` for ``patience`` consecutive epochs after ``warmup_epochs``."""

    def layers(self, bnn: SparseBNN) -> list[UnitLayer]:
        layers = [l for l in bnn.layers if bnn.samples_indicator(l)]
        if not layers:
            raise ValueError(f"the {bnn.prior.name} prior (freeze_indicators={bnn.freeze_indicators}) "
                             "has no trainable node indicators, so nothing tells which units to remove; "
                             "use a spike-and-slab prior (ss-ghs, ss-gl, ss-ig), node-wise BMR "
                             "(Shrink(rule=reduction.NodeBMRRule(...))) or no shrinking")
        return layers

    def __call__(self, bnn, state, tracker, schedule, epoch):
        if epoch <= schedule.warmup_epochs:
            return {}, tracker
        gone, below = {}, {}
        for name in tracker.origin:
            gamma = np.asarray(jax.nn.sigmoid(state.params[logit_param(name)]))
            alive = np.asarray(state.masks.units[name]) > 0.5
            below[name] = np.where(alive & (gamma < removal_threshold(bnn, name, schedule)),
                                   tracker.below[name] + 1, 0)
            candidates = np.flatnonzero(alive & (below[name] >= schedule.patience))
            gone[name] = fewest_first(candidates, gamma, alive, schedule.min_units)
        return gone, tracker._replace(below=below)


def _physical_keep(alive: np.ndarray, target: int) -> np.ndarray:
    """Keep every alive unit and the first removed ones as padding, ``target`` units in all."""
    keep = alive.copy()
    padding = np.flatnonzero(~alive)[: max(0, target - int(alive.sum()))]
    keep[padding] = True
    return keep


def keep_from_origin(layers: Sequence[UnitLayer], origin: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{layer: bool [original units]}`` over the original network's ``layers``: True at the
    indices ``origin[layer]`` lists (a result's ``unit_origin``, or a subset of it), for the
    layers in ``origin``."""
    keep = {}
    for layer in layers:
        if layer.name in origin:
            mask = np.zeros(layer.units, bool)
            mask[np.asarray(origin[layer.name], np.int64)] = True
            keep[layer.name] = mask
    return keep


class Shrink(Hook):
    """The hook that removes units for good and shrinks the network while it trains.

    After every epoch ``rule`` (:class:`GammaRule` by default, or node-wise BMR's
    ``reduction.NodeBMRRule``) names units to remove; their unit masks go to 0 and their
    consumer rows are released (:func:`~sparse_bnn.sparsify.slicing.release_units`). When some
    layer's bucketed width falls to ``schedule.shrink_factor`` of its physical width, every layer
    is rebuilt at its bucketed width with the surviving parameters and optimiser state
    (:func:`~sparse_bnn.sparsify.slicing.shrink_state`), and the loop recompiles the epoch.
    History fields: ``removal_seconds``, ``removed`` (``{layer: [original indices]}``),
    ``compiled`` (the next epoch needed a recompilation), ``widths`` (physical units per layer)
    and ``alive`` (units not removed).
    """

    name = "shrink"
    modifies_model = True

    def __init__(self, schedule: ShrinkSchedule = ShrinkSchedule(), rule: RemovalRule | None = None):
        self.schedule = ShrinkSchedule(*schedule).validate()
        self.rule = GammaRule() if rule is None else rule

    def init(self, fitting, info):
        bnn, state = fitting.bnn, fitting.state
        shrinkable = self.rule.layers(bnn)
        for layer in shrinkable:
            if layer.inactive_output != 0.0:
                raise ValueError(f"layer {layer.name!r} has activation(0) = {layer.inactive_output}; "
                                 "removed units would still send a constant downstream, which cannot "
                                 "be carried onto a smaller network. Use an activation with "
                                 "activation(0) = 0, or no shrinking")
        # Every shrinkable layer carries a unit mask from the start, so removing a unit changes
        # data, not the jitted epoch's signature.
        state = state._replace(masks=unit_masks_with(state.masks, shrinkable))
        tracker = ShrinkTracker({l.name: l.units for l in shrinkable},
                                {l.name: np.arange(l.units) for l in shrinkable},
                                {l.name: np.zeros(l.units, np.int64) for l in shrinkable})
        return fitting._replace(state=state), tracker

    def update(self, fitting, tracker, record):
        bnn, state = fitting.bnn, fitting.state
        started = time.perf_counter()
        gone, tracker = self.rule(bnn, state, tracker, self.schedule, record["epoch"])
        removed_now, state, tracker = _remove_units(bnn, state, tracker, gone, record["epoch"])
        fields = {"removal_seconds": time.perf_counter() - started, "removed": removed_now}
        alive = {name: np.asarray(state.masks.units[name]) > 0.5 for name in tracker.origin}
        targets = {name: bucketed_width(a.sum(), tracker.original[name], self.schedule.bucket)
                   for name, a in alive.items()}
        fields["compiled"] = any(targets[name] <= self.schedule.shrink_factor * a.size and targets[name] < a.size
                                 for name, a in alive.items())
        if fields["compiled"]:
            keep = {name: _physical_keep(a, targets[name]) for name, a in alive.items()}
            bnn, state = shrink_state(bnn, state, keep)
            tracker = tracker._replace(origin={k: v[keep[k]] for k, v in tracker.origin.items()},
                                       below={k: v[keep[k]] for k, v in tracker.below.items()})
        fields["widths"] = {l.name: l.units for l in bnn.layers[:-1]}
        fields["alive"] = {name: int(np.sum(np.asarray(state.masks.units[name]) > 0.5)) for name in tracker.origin}
        return Fitting(bnn, state, fitting.stop), tracker, fields

    def to_json(self, tracker):
        return tracker.to_json()

    def restore(self, fitting, data, info):
        tracker = ShrinkTracker.from_json(data)
        keep = keep_from_origin(fitting.bnn.layers, tracker.origin)
        if any(not mask.all() for mask in keep.values()):
            bnn, state = shrink_state(fitting.bnn, fitting.state, keep)
            fitting = fitting._replace(bnn=bnn, state=state)
        return fitting, tracker

    def progress(self, record):
        return {"width": "+".join(map(str, record["widths"].values()))} if "widths" in record else {}

    def result(self, tracker):
        return {"unit_origin": {k: v.copy() for k, v in tracker.origin.items()}, "removed": list(tracker.removed)}


def _remove_units(bnn: SparseBNN, state: TrainState, tracker: ShrinkTracker, gone: Mapping[str, np.ndarray],
                  epoch: int) -> tuple[dict[str, list[int]], TrainState, ShrinkTracker]:
    """Mask off the units in ``gone`` and release their consumer rows."""
    removed_now: dict[str, list[int]] = {}
    released: dict[str, np.ndarray] = {}
    unit_masks = dict(state.masks.units)
    below = dict(tracker.below)
    events = list(tracker.removed)
    for name, units in gone.items():
        if not units.size:
            continue
        mask = np.asarray(unit_masks[name], np.float32).copy()
        mask[units] = 0.0
        unit_masks[name] = jax.device_put(mask)
        below[name] = below[name].copy()
        below[name][units] = 0
        released[name] = np.zeros(mask.shape, bool)
        released[name][units] = True
        original = sorted(int(i) for i in tracker.origin[name][units])
        removed_now[name] = original
        events.append({"epoch": epoch, "layer": name, "units": original})
    if released:
        params, opt_state = release_units(bnn, state.params, state.opt_state, released)
        state = state._replace(params=params, opt_state=opt_state, masks=Masks(unit_masks, state.masks.weights))
    return removed_now, state, tracker._replace(below=below, removed=tuple(events))


ShrinkResult = FitResult  # the result of a shrinking fit: FitResult fills unit_origin and removed


def fit_shrinking(bnn: SparseBNN, x, y, *, shrink: ShrinkSchedule = ShrinkSchedule(),
                  rule: RemovalRule | None = None, hooks: Sequence[Hook] = (), **fit_kwargs) -> FitResult:
    """:func:`sparse_bnn.train.fit` with a :class:`Shrink` hook first: ``fit(bnn, x, y,
    hooks=[Shrink(shrink, rule), *hooks], **fit_kwargs)``.

    Returns:
      :class:`~sparse_bnn.train.state.FitResult`: ``bnn`` is the final smaller model,
      ``params``/``state`` belong to it, ``unit_origin`` maps its units to the original ones.
    """
    return fit(bnn, x, y, hooks=[Shrink(shrink, rule), *hooks], **fit_kwargs)

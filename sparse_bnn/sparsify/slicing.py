"""Slicing a shrinking network's state down to the units it keeps: which axes of each latent site
index units (:func:`site_unit_axes`), the sliced variational parameters, optimiser state and
masks (``slice_*``), the smaller model (:func:`shrunk_model`) and training state
(:func:`shrink_state`), releasing removed units' consumer rows to the prior
(:func:`release_units`), and the bucketed physical widths (:func:`bucketed_width`).

The hook that decides when and which units go is :class:`sparse_bnn.sparsify.shrink.Shrink`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import numpy as np

from sparse_bnn.compact.keep import check_keep
from sparse_bnn.compact.prune import compact
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.core.spec import VARIATIONAL_SUFFIXES, indicator_site, loc_param, rho_param
from sparse_bnn.nets.base import unit_broadcast
from sparse_bnn.train.state import TrainState

__all__ = ["bucketed_width", "release_units", "shrink_state", "shrunk_model", "site_unit_axes", "slice_masks",
           "slice_opt_state", "slice_sites", "slice_variational"]


def site_unit_axes(bnn: SparseBNN) -> dict[str, list[tuple[str, int, int]]]:
    """``{site: [(layer, axis, interleave), ...]}``: which axes of each latent site index units.

    Weight sites: members along their unit axis, consumers along their input axis. Per-unit
    sites: the indicator ``{layer}.z`` and every prior scale site named ``{layer}.*`` of shape
    ``[units]`` (``tau2``, ``s2_a``, ``s2_b``, ...).
    """
    axes: dict[str, list[tuple[str, int, int]]] = {}
    scale_sites = {s.name: tuple(s.shape) for s in bnn.prior.scale_sites(bnn.layers)}
    for layer in bnn.layers:
        for ref in (*layer.members, *layer.consumers):
            if ref.path in bnn.shapes:
                axes.setdefault(bnn.weight_site(ref.path), []).append((layer.name, ref.axis, ref.interleave))
        if bnn.samples_indicator(layer):
            axes.setdefault(indicator_site(layer.name), []).append((layer.name, 0, 1))
        for name, shape in scale_sites.items():
            if name.startswith(f"{layer.name}.") and shape == (layer.units,):
                axes.setdefault(name, []).append((layer.name, 0, 1))
    return axes


def _unit_indices(keep: np.ndarray, interleave: int) -> np.ndarray:
    """Indices along an axis of ``interleave * units`` entries (unit index fastest) to keep."""
    kept = np.flatnonzero(keep)
    units = keep.shape[0]
    return (np.arange(interleave)[:, None] * units + kept[None, :]).reshape(-1)


def slice_sites(bnn: SparseBNN, arrays: Mapping[str, Any], keep: Mapping[str, Any]) -> dict[str, Any]:
    """Slice per-site arrays ``{site: array shaped like the site}`` to the kept units.

    Sites that no unit axis touches are returned as they are. ``keep`` is
    ``{layer: bool [units]}`` (absent layers keep everything).
    """
    masks = check_keep(bnn.layers, keep)
    axes = site_unit_axes(bnn)
    out = dict(arrays)
    for site, value in arrays.items():
        cuts = [(axis, _unit_indices(masks[name], interleave))
                for name, axis, interleave in axes.get(site, ()) if not masks[name].all()]
        if not cuts:
            continue
        # on the host (and back with device_put, not jnp.asarray, which compiles a copy): a
        # device gather would compile once per new shape, at every shrink
        sliced = np.asarray(value)
        for axis, indices in cuts:
            sliced = np.take(sliced, indices, axis=axis)
        out[site] = jax.device_put(sliced) if isinstance(value, jax.Array) else sliced
    return out


def _site_of(name: str) -> str:
    site, _, suffix = name.rpartition(".")
    if suffix not in VARIATIONAL_SUFFIXES or not site:
        raise ValueError(f"{name!r} is not a variational parameter name ('{{site}}.loc', "
                         "'{site}.rho' or '{layer}.z.logit')")
    return site


def slice_variational(bnn: SparseBNN, params: Mapping[str, jax.Array],
                      keep: Mapping[str, Any]) -> dict[str, jax.Array]:
    """The variational parameters of the kept units: ``{site}.loc/.rho`` of members along the
    unit axis, of consumers along the input axis (interleave honoured), ``{layer}.z.logit`` and
    per-unit scale sites along their only axis. Everything else is carried as it is.

    Args:
      bnn: the model ``params`` belong to.
      params: ``{name: array}`` as :meth:`SparseBNN.init_params` makes them.
      keep: ``{layer: bool [units]}``.

    Returns:
      ``{name: array}`` for ``shrunk_model(bnn, keep)``.
    """
    out = {}
    for suffix in VARIATIONAL_SUFFIXES:
        arrays = {_site_of(n): v for n, v in params.items() if n.endswith("." + suffix)}
        for site, value in slice_sites(bnn, arrays, keep).items():
            out[f"{site}.{suffix}"] = value
    return {name: out[name] for name in params}


def slice_opt_state(bnn: SparseBNN, opt_state: Any, params: Mapping[str, jax.Array],
                    keep: Mapping[str, Any]) -> Any:
    """Apply :func:`slice_variational` to every node of an optax state keyed like the params
    (Adam's ``mu`` and ``nu``, the inner states of ``optax.multi_transform``, ...): entries shaped
    like their parameter are sliced, anything else there (``MaskedNode``) and every other leaf
    (step counts) is left alone."""
    def slice_node(node):
        shaped = {k: v for k, v in node.items()
                  if hasattr(v, "shape") and tuple(v.shape) == tuple(np.shape(params[k]))}
        return {**dict(node), **slice_variational(bnn, shaped, keep)}

    return map_params_like(slice_node, opt_state, params)


def map_params_like(function, opt_state: Any, params: Mapping[str, Any]) -> Any:
    """``opt_state`` with ``function(node)`` in place of every node keyed exactly like ``params``
    (Adam's ``mu`` and ``nu``, ...); every other node and leaf is left alone."""
    names = set(params)

    def is_params_like(node) -> bool:
        return isinstance(node, Mapping) and set(node) == names

    return jax.tree_util.tree_map(lambda node: function(node) if is_params_like(node) else node, opt_state,
                                  is_leaf=is_params_like)


def slice_masks(bnn: SparseBNN, masks: Masks, keep: Mapping[str, Any]) -> Masks:
    """Unit masks and weight masks of the kept units."""
    checked = check_keep(bnn.layers, keep)
    units = {name: jax.device_put(np.asarray(value)[checked[name]]) if name in checked else value
             for name, value in masks.units.items()}
    weights = slice_sites(bnn, dict(masks.weights), keep)
    return Masks(units, weights)


def shrunk_model(bnn: SparseBNN, keep: Mapping[str, Any]) -> SparseBNN:
    """The same model on the network with only the kept units (same layer and site names).

    The network is built by :func:`sparse_bnn.compact.prune.compact` (``config_with_units`` +
    ``net_from_config``; non-parameter state such as batch statistics is sliced). Prior, options,
    ``n_data`` and the *prior inclusion probabilities* are those of ``bnn``: the theory-driven
    ``lambda_l`` depends on the widths, and the smaller network must keep the original prior.
    """
    masks = check_keep(bnn.layers, keep)
    for layer in bnn.layers:
        if not masks[layer.name].any():
            raise ValueError(f"keep removes every unit of layer {layer.name!r}; keep at least one")
        if layer.inactive_output != 0.0 and not masks[layer.name].all():
            raise ValueError(
                f"layer {layer.name!r} sends activation(0) = {layer.inactive_output} from a removed "
                "unit; that constant cannot be folded into a random consumer bias, so this "
                "network cannot shrink while training. Use an activation with activation(0) = 0.")
    net, _ = compact(bnn.net, bnn.functional.initial, masks)
    return SparseBNN(net, bnn.prior, bnn.n_data, inclusion=dict(bnn.inclusion) if bnn.inclusion else "theory",
                     **dataclasses.asdict(bnn.options))


def shrink_state(bnn: SparseBNN, state: TrainState, keep: Mapping[str, Any]
                 ) -> tuple[SparseBNN, TrainState]:
    """``(smaller model, its state)``: params, optimiser state and masks sliced; key and epoch kept."""
    small = shrunk_model(bnn, keep)
    params = slice_variational(bnn, state.params, keep)
    opt_state = slice_opt_state(bnn, state.opt_state, state.params, keep)
    return small, TrainState(params, opt_state, state.rng_key, state.epoch, slice_masks(bnn, state.masks, keep))


def release_units(bnn: SparseBNN, params: Mapping[str, jax.Array], opt_state: Any,
                  removed: Mapping[str, Any]) -> tuple[dict[str, jax.Array], Any]:
    """Put the consumer rows of removed units at their optimum ``q = p`` and stop their moments.

    A removed unit sends 0 downstream, so its rows in the consumers no longer touch the data:
    their optimal guide is the slab prior ``N(0, sigma_0^2)`` (non-centred form), where their KL
    is 0 and so is its gradient. Until then the rows' KL, gated by the *consumer's* indicator,
    would still pull on that indicator; at ``q = p`` they do not, and the masked network trains
    exactly like the sliced one. Adam moments of the rows (and of the removed units' own
    weights) are zeroed so that momentum does not move them (``0 / (0 + eps) = 0``).

    Args:
      removed: ``{layer: bool [units]}``, True for the units removed now.
    Returns:
      ``(params, opt_state)``.
    """
    rho_prior = bnn.prior.slab_rho()
    # Host-side NumPy throughout: eager device ops would compile once per new shape.
    rows: dict[str, np.ndarray] = {}     # weight site -> bool mask of entries to release
    own: dict[str, np.ndarray] = {}      # weight site -> bool mask of the removed units' own entries
    for layer in bnn.layers:
        if layer.name not in removed or not np.any(removed[layer.name]):
            continue
        gone = np.asarray(removed[layer.name], bool)
        for target, refs in ((rows, layer.consumers), (own, layer.members)):
            for ref in refs:
                if ref.path not in bnn.shapes:
                    continue
                site, shape = bnn.weight_site(ref.path), bnn.shapes[ref.path]
                hit = np.broadcast_to(unit_broadcast(gone, len(shape), ref.axis, ref.interleave), shape)
                target[site] = target[site] | hit if site in target else hit
    params = dict(params)
    for site, hit in rows.items():
        params[loc_param(site)] = _where(hit, 0.0, params[loc_param(site)])
        params[rho_param(site)] = _where(hit, rho_prior, params[rho_param(site)])
    stopped = {}
    for site in set(rows) | set(own):
        row_hit, own_hit = rows.get(site), own.get(site)
        hit = own_hit if row_hit is None else row_hit if own_hit is None else row_hit | own_hit
        stopped[loc_param(site)] = stopped[rho_param(site)] = hit
    def stop(node):
        return {k: (_where(stopped[k], 0.0, v)
                    if k in stopped and hasattr(v, "shape") and tuple(v.shape) == stopped[k].shape
                    else v) for k, v in node.items()}

    return params, map_params_like(stop, opt_state, params)


def _where(hit: np.ndarray, value: float, array: Any) -> jax.Array:
    """``array`` with ``value`` at ``hit``, computed on the host, returned on the device."""
    host = np.asarray(array)
    return jax.device_put(np.where(hit, np.asarray(value, host.dtype), host))


def bucketed_width(alive: int, original: int, bucket: int) -> int:
    """Alive units rounded up to a multiple of ``bucket``, at most the original width."""
    return min(int(original), int(bucket) * max(1, math.ceil(int(alive) / int(bucket))))

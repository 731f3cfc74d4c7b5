"""Keep masks, the unit selection a compaction starts from: thresholding inclusion probabilities
(:func:`threshold_keep`), checking masks and parameters against a network's unit layers
(:func:`check_keep`, :func:`check_params`), the masked dense parameters (:func:`mask_params`)
and the kept unit counts (:func:`kept_units`).

Building the compact network from them is :mod:`sparse_bnn.compact.prune`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_bnn.nets.base import ParamAxis, Path, UnitLayer, flatten_paths, path_name

__all__ = ["check_keep", "check_params", "kept_units", "mask_params", "threshold_keep"]

Params = dict[Path, jax.Array]
KeepMasks = Mapping[str, Any]


# ----------------------------------------------------------------------------- validation

def threshold_keep(inclusion_probs: Mapping[str, Any], threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Keep unit ``j`` of layer ``l`` when ``inclusion_probs[l][j] > threshold``.

    Args:
      inclusion_probs: ``{layer_name: [units]}`` posterior inclusion probabilities.
      threshold: in (0, 1); 0.5 gives the median-probability model (``math.md`` §5).

    Returns:
      ``{layer_name: bool [units]}``.
    """
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    keep = {}
    for name, probs in inclusion_probs.items():
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 1:
            raise ValueError(f"inclusion probabilities of layer {name!r} must be a vector [units], "
                             f"got shape {probs.shape}")
        if np.any(np.isnan(probs)) or np.any(probs < 0) or np.any(probs > 1):
            raise ValueError(f"inclusion probabilities of layer {name!r} must lie in [0, 1]")
        keep[name] = probs > threshold
    return keep


def check_keep(layers: Sequence[UnitLayer], keep: KeepMasks) -> dict[str, np.ndarray]:
    """Validate keep masks against the unit layers; returns ``{name: bool [units]}`` for every layer.

    Layers absent from ``keep`` keep all their units. Raises ``ValueError`` for an unknown layer
    name, a mask that is not a vector of ``units`` booleans (or 0/1), or a mask that removes units
    of a layer declared not prunable (the output layer).
    """
    by_name = {layer.name: layer for layer in layers}
    unknown = sorted(set(keep) - set(by_name))
    if unknown:
        raise ValueError(f"keep names unknown layers {unknown}; the network's unit layers are "
                         f"{list(by_name)}")
    masks = {}
    for layer in layers:
        if layer.name not in keep:
            masks[layer.name] = np.ones(layer.units, dtype=bool)
            continue
        try:
            mask = np.asarray(keep[layer.name])
        except jax.errors.ConcretizationTypeError as error:
            raise ValueError(f"keep mask of layer {layer.name!r} must be concrete (it decides array "
                             "shapes); compute it outside jit") from error
        if mask.shape != (layer.units,):
            raise ValueError(f"keep mask of layer {layer.name!r} has shape {mask.shape}; "
                             f"expected ({layer.units},), one entry per unit")
        if mask.dtype != bool:
            if not np.all((mask == 0) | (mask == 1)):
                raise ValueError(f"keep mask of layer {layer.name!r} must hold booleans or 0/1, "
                                 f"got values {np.unique(mask)[:5]}")
            mask = mask.astype(bool)
        if not layer.prunable and not mask.all():
            raise ValueError(f"layer {layer.name!r} is not prunable (the output layer); "
                             "its keep mask must be all True or absent")
        masks[layer.name] = mask
    return masks


def _axis_length(layer: UnitLayer, ref: ParamAxis) -> int:
    return layer.units * ref.interleave


def _check_param_axes(layers: Sequence[UnitLayer], params: Mapping[Path, Any],
                      leading: int = 0) -> None:
    """Every member/consumer array present in ``params`` must have the layer's unit count on its axis."""
    for layer in layers:
        for role, refs in (("member", layer.members), ("consumer", layer.consumers)):
            for ref in refs:
                if ref.path not in params:
                    continue
                shape = np.shape(params[ref.path])[leading:]
                axis = ref.axis
                if not -len(shape) <= axis < len(shape) or shape[axis] != _axis_length(layer, ref):
                    raise ValueError(
                        f"parameter {path_name(ref.path)} has shape {tuple(shape)}, but as a {role} of "
                        f"layer {layer.name!r} its axis {ref.axis} should have "
                        f"{_axis_length(layer, ref)} entries; the params do not belong to this network")


def check_params(net: nnx.Module, params: Mapping[Path, Any], leading: int = 0) -> None:
    """``params`` must hold exactly the network's ``nnx.Param`` paths with their shapes.

    ``leading`` > 0 allows that many leading sample axes before each parameter's own shape.
    """
    expected = {path: tuple(np.shape(v)) for path, v in
                flatten_paths(nnx.to_pure_dict(nnx.state(net, nnx.Param))).items()}
    missing = [path_name(p) for p in expected if p not in params]
    extra = [path_name(p) if isinstance(p, tuple) else repr(p) for p in params if p not in expected]
    if extra:
        raise ValueError(f"params hold paths that are not parameters of this "
                         f"{type(net).__name__}: {extra}; expected {[path_name(p) for p in expected]}")
    if missing:
        raise ValueError(f"params lack parameters of this {type(net).__name__}: {missing}")
    for path, shape in expected.items():
        got = tuple(np.shape(params[path]))
        if got[leading:] != shape or len(got) != len(shape) + leading:
            what = f"[S, {', '.join(map(str, shape))}]" if leading else str(shape)
            raise ValueError(f"parameter {path_name(path)} has shape {got}; this network expects {what}")


# ----------------------------------------------------------------------------- masked dense

def mask_params(layers: Sequence[UnitLayer], params: Mapping[Path, jax.Array],
                keep: KeepMasks) -> Params:
    """The masked dense network: the removed units' member entries set to 0.

    Args:
      layers: the network's ``unit_layers()``.
      params: ``{path: array}`` effective parameters of the dense network.
      keep: ``{layer_name: bool [units]}``; absent layers keep every unit.

    Returns:
      ``{path: array}`` with the same shapes. Member paths that are not in ``params`` (state
      that is not an ``nnx.Param``, such as batch statistics) are left alone.
    """
    masks = check_keep(layers, keep)
    _check_param_axes(layers, params)
    out = dict(params)
    for layer in layers:
        mask = masks[layer.name]
        if mask.all():
            continue
        for ref in layer.members:
            if ref.path not in out:
                continue
            value = jnp.asarray(out[ref.path])
            factor = _broadcast(mask.astype(value.dtype), value.ndim, ref)
            out[ref.path] = value * factor
    return out


def _broadcast(values: np.ndarray, ndim: int, ref: ParamAxis) -> np.ndarray:
    values = np.tile(values, ref.interleave) if ref.interleave > 1 else values
    shape = [1] * ndim
    shape[ref.axis % ndim] = values.shape[0]
    return values.reshape(shape)


def _axis_indices(mask: np.ndarray, interleave: int) -> np.ndarray:
    """Indices along an axis of ``interleave * units`` entries (unit fastest) for the true units."""
    units = mask.shape[0]
    kept = np.flatnonzero(mask)
    return (np.arange(interleave)[:, None] * units + kept[None, :]).reshape(-1)


def kept_units(layers: Sequence[UnitLayer], keep: KeepMasks) -> dict[str, int]:
    """``{layer_name: number of kept units}`` (0 where a layer is pruned away entirely)."""
    masks = check_keep(layers, keep)
    return {name: int(mask.sum()) for name, mask in masks.items()}

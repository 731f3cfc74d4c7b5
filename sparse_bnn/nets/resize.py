"""A declared module with fewer units: the template a compact network is filled into.

:func:`resize` copies a module that carries a :class:`~sparse_bnn.nets.declaration.UnitDeclaration`
and keeps the first ``units[name]`` units of each named layer: every member array is cut along its
unit axis and every consumer array along its input axis, and the shape attributes of the
modules holding them (``in_features``/``out_features`` of ``nnx.Linear`` and ``nnx.Conv``,
``num_features`` of the norms) follow. The copy carries the declaration with the new widths, so
its ``config`` rebuilds it (:func:`sparse_bnn.nets.declare.custom_from_config`).
:func:`sparse_bnn.compact.prune.compact` then writes the kept units' values into it.

A module that keeps a width of its own (``self.hidden`` used in a reshape) does not follow;
the compaction check of :func:`~sparse_bnn.nets.declare.declare_units` finds that at declaration.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_bnn.nets.base import Path, UnitLayer, path_name, with_group_sizes
from sparse_bnn.nets.declaration import UnitDeclaration, attach, declaration_of

__all__ = ["resize"]


def _first_indices(units: int, kept: int, interleave: int) -> np.ndarray:
    """Indices of the first ``kept`` of ``units`` units along an axis of ``interleave * units``."""
    return (np.arange(interleave)[:, None] * units + np.arange(kept)[None, :]).reshape(-1)


def _fix_shape_attributes(module: nnx.Module) -> None:
    if isinstance(module, (nnx.Linear, nnx.Conv)):
        kernel = module.kernel.get_value()
        module.out_features = int(kernel.shape[-1])
        groups = getattr(module, "feature_group_count", 1)
        module.in_features = int(kernel.shape[0] if isinstance(module, nnx.Linear)
                                 else kernel.shape[-2] * groups)
    elif hasattr(module, "num_features"):
        for name in ("scale", "bias", "mean", "var"):
            variable = getattr(module, name, None)
            if isinstance(variable, nnx.Variable) and variable.get_value() is not None:
                module.num_features = int(variable.get_value().shape[-1])
                break


def _fan_in(layer: UnitLayer, shapes: Mapping[Path, tuple]) -> int:
    kernels = [m for m in layer.members if m.path[-1] == "kernel" and m.path in shapes]
    if not kernels:
        return layer.fan_in
    return sum(math.prod(shapes[m.path]) // (layer.units * m.interleave) for m in kernels)


def resize(net: nnx.Module, units: Mapping[str, int]) -> nnx.Module:
    """A copy of the declared ``net`` with ``units[name]`` units in each named layer (at most
    as many as it has; absent layers keep theirs)."""
    declaration = declaration_of(net)
    if declaration is None:
        raise TypeError(f"resize needs a module declared with declare_units, got {type(net).__name__}")
    layers = {l.name: l for l in declaration.layers}
    unknown = sorted(set(units) - set(layers))
    if unknown:
        raise ValueError(f"units name unknown layers {unknown}; the unit layers are {list(layers)}")
    for name, count in units.items():
        if not 1 <= int(count) <= layers[name].units:
            raise ValueError(f"layer {name!r} has {layers[name].units} units; cannot keep {count}")
    copy = nnx.clone(net)
    variables = {p: v for p, v in nnx.iter_graph(copy) if isinstance(v, nnx.Variable)}
    modules = {p: m for p, m in nnx.iter_graph(copy) if isinstance(m, nnx.Module)}
    touched = set()
    for name, count in units.items():
        layer = layers[name]
        if count == layer.units:
            continue
        for ref in (*layer.members, *layer.consumers):
            if ref.path not in variables:
                raise ValueError(f"layer {name!r} names {path_name(ref.path)}, which "
                                 f"{type(net).__name__} does not have")
            variable = variables[ref.path]
            indices = _first_indices(layer.units, int(count), ref.interleave)
            variable.set_value(jnp.take(variable.get_value(), indices, axis=ref.axis))
            touched.add(ref.path[:-1])
    for path in touched:
        if path in modules:
            _fix_shape_attributes(modules[path])
    shapes = {p: tuple(np.shape(v.get_value())) for p, v in variables.items()}
    new_layers = []
    for layer in declaration.layers:
        count = int(units.get(layer.name, layer.units))
        resized = dataclasses.replace(layer, units=count, weights_per_unit=None)
        new_layers.append(dataclasses.replace(resized, fan_in=_fan_in(resized, shapes)))
    return attach(copy, UnitDeclaration(with_group_sizes(copy, new_layers), declaration.base))

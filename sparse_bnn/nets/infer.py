"""Unit layers of any Flax NNX module, inferred by tracing it once.

:func:`infer_units` traces ``module(example_input)`` with :func:`jax.make_jaxpr` and follows
every output feature of an ``nnx.Linear`` or ``nnx.Conv`` (any ``dot_general`` or convolution
with a parameter kernel) through the elementwise ops after it (bias, batch norm, activation,
pooling, flatten) to the kernels that read it. A unit of layer ``k`` is then an output feature
of ``k`` and an input row of each of its consumers; its group holds the kernel column, the bias
entry, the batch-norm scale, offset and statistics. Layers whose outputs are added or multiplied
elementwise (a skip connection, a gate) share their units and form one unit layer, as the
residual streams of :class:`sparse_bnn.nets.ResNet` do. The layers whose features reach the
output, and those no kernel reads, are not prunable (the output layer).

Layers whose units meet something that does not commute with removing units (a layer norm or
any reduction across them, a reshape that splits them, a concatenation along them, an op the
inference does not know) are refused with a ``ValueError`` naming the layer and the module; pass
their names in ``not_prunable`` to keep them whole, or declare the unit layers by hand
(:func:`sparse_bnn.nets.declare.declare_units`).

Example::

    layers = infer_units(MyNet(rngs=nnx.Rngs(0)), x[:8])
    [(l.name, l.units, l.prunable) for l in layers]   # [("fc1", 64, True), ..., ("out", 10, False)]
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_bnn.nets.base import ParamAxis, UnitLayer, flatten_paths, path_name, pure_params, unflatten_paths, \
    with_group_sizes
from sparse_bnn.nets.trace import UnitTracer
from sparse_bnn.nets.trace_rules import Act, Const

__all__ = ["infer_units"]

INACTIVE_TOLERANCE = 1e-5


def _scoped_classes(cache: dict, names: dict):
    """``cls -> subclass`` whose ``__call__`` runs under ``jax.named_scope(<module path>)``."""
    def scoped(cls):
        if cls not in cache:
            def __call__(self, *args, **kwargs):
                with jax.named_scope(names.get(id(self), cls.__name__)):
                    return cls.__call__(self, *args, **kwargs)
            cache[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
        return cache[cls]
    return scoped


def trace_module(net: nnx.Module, example_input: Any):
    """``(closed jaxpr, state paths, state arrays, input leaves)`` of ``net(example_input)`` in
    evaluation mode (running batch statistics, no dropout); every submodule's ops carry its path
    in their name stack."""
    clone = nnx.clone(net)
    clone.eval()
    graphdef, rng_state, rest = nnx.split(clone, nnx.RngState, ...)
    flat = flatten_paths(nnx.to_pure_dict(rest))
    paths = list(flat)
    cache: dict = {}

    def forward(arrays, x):
        state = jax.tree_util.tree_map(lambda v: v, rest)
        nnx.replace_by_pure_dict(state, unflatten_paths(dict(zip(paths, arrays))))
        module = nnx.merge(graphdef, rng_state, state)
        names = {}
        scoped = _scoped_classes(cache, names)
        for path, node in nnx.iter_graph(module):
            if isinstance(node, nnx.Module) and path:
                names[id(node)] = path_name(path)
                try:
                    node.__class__ = scoped(type(node))
                except TypeError:  # a class with its own layout keeps its __call__ unscoped
                    pass
        return module(x)

    arrays = [jnp.asarray(flat[p]) for p in paths]
    jaxpr = jax.make_jaxpr(forward)(arrays, example_input)
    return jaxpr, paths, arrays, jax.tree_util.tree_leaves(example_input)


def _abstract_inputs(paths, arrays, inputs) -> list:
    abstract = [Const(((p, tuple(range(np.ndim(a)))),)) for p, a in zip(paths, arrays)]
    return abstract + [Act((None,) * np.ndim(x)) for x in inputs]


def _walk(jaxpr, paths, arrays, inputs):
    tracer = UnitTracer(paths)
    outs, _ = tracer.run(jaxpr.jaxpr, _abstract_inputs(paths, arrays, inputs), None, jaxpr.consts)
    return tracer, outs


def _inactive_ranges(jaxpr, paths, arrays, inputs, zeroed) -> list[list[tuple[float, float]]]:
    """Per space, ``(min, max)`` of what each of its consumers receives when the members of the
    ``zeroed`` spaces are zero (one compiled evaluation of the jaxpr)."""
    tracer = UnitTracer(paths, zeroed)

    def evaluate(arrays, inputs):
        tracer.run(jaxpr.jaxpr, _abstract_inputs(paths, arrays, inputs), list(arrays) + list(inputs),
                   jaxpr.consts)
        return [list(space.inactive) for space in tracer.spaces]

    ranges = jax.jit(evaluate)(list(arrays), [jnp.asarray(x) for x in inputs])
    return [[(float(low), float(high)) for low, high in space] for space in ranges]


def _module_type(net: nnx.Module, scope: str) -> str:
    node = net
    for key in scope.split("/")[-1].split("."):
        try:
            node = node[int(key)] if key.isdigit() else getattr(node, key)
        except (AttributeError, IndexError, KeyError, TypeError):
            return ""
    return f" (a {type(node).__name__})" if isinstance(node, nnx.Module) else ""


def _unique(items: Sequence[ParamAxis]) -> tuple[ParamAxis, ...]:
    return tuple(dict.fromkeys(items))


def infer_units(net: nnx.Module, example_input: Any, *,
                not_prunable: Sequence[str] = ()) -> tuple[UnitLayer, ...]:
    """The unit layers of ``net``, found by tracing ``net(example_input)`` (see the module doc).

    Args:
      net: any Flax NNX module.
      example_input: an input batch (or an array of the right shape and dtype) ``[B, ...]``.
      not_prunable: names of inferred layers to keep whole (shrinkage prior, no indicators).

    Returns:
      The unit layers in forward order, the output layer(s) last, with group sizes counted.
    """
    jaxpr, paths, arrays, inputs = trace_module(net, example_input)
    tracer, outs = _walk(jaxpr, paths, arrays, inputs)
    roots_out = {tracer.find(l.space) for o in outs if isinstance(o, Act) for l in o.labels if l is not None}
    groups: dict[int, list[int]] = {}
    for space in range(len(tracer.spaces)):
        groups.setdefault(tracer.find(space), []).append(space)
    # a layer nothing reads feeds the output in some way (or nothing at all): it is not pruned
    roots_out |= {root for root, spaces in groups.items() if not any(tracer.spaces[s].consumers for s in spaces)}
    names = {root: path_name(tracer.spaces[root].producer[:-1]) or str(root) for root in groups}
    unknown = sorted(set(not_prunable) - set(names.values()))
    if unknown:
        raise ValueError(f"not_prunable names {unknown}, which are not unit layers of "
                         f"{type(net).__name__}; its inferred unit layers are {sorted(names.values())}")
    prunable = {root for root in groups if root not in roots_out and names[root] not in not_prunable}
    for root in sorted(prunable):
        hazards = [h for s in groups[root] for h in tracer.spaces[s].hazards]
        if hazards:
            scope, what = hazards[0]
            where = f"in {scope.split('/')[-1]!r}{_module_type(net, scope)} " if scope else ""
            raise ValueError(
                f"unit layer {names[root]!r} of {type(net).__name__} cannot be pruned: "
                f"{where}its units {what}, so the compact network would differ from the masked one. Keep "
                f"the layer whole with not_prunable=({names[root]!r},), change the architecture, "
                "or declare the unit layers by hand")

    params = set(flatten_paths(pure_params(net)))
    zeroed_arrays = list(arrays)
    member_paths = {m.path for root in prunable for s in groups[root] for m in tracer.spaces[s].members}
    for k, path in enumerate(paths):
        if path in member_paths and path in params:
            zeroed_arrays[k] = jnp.zeros_like(arrays[k])
    inactive_ranges = _inactive_ranges(jaxpr, paths, zeroed_arrays, inputs, lambda root: root in prunable)

    layers = []
    order = sorted(groups, key=lambda r: (r in roots_out, r))
    for root in order:
        spaces = [tracer.spaces[s] for s in groups[root]]
        members = _unique([m for s in spaces for m in s.members])
        consumers = _unique([c for s in spaces for c in s.consumers])
        _check_roles(names[root], members, consumers)
        inactive = [r for s in groups[root] for r in inactive_ranges[s]]
        layers.append(UnitLayer(
            name=names[root], units=spaces[0].size,
            fan_in=_fan_in(spaces, arrays, paths), members=members, consumers=consumers,
            prunable=root in prunable, inactive_output=_inactive_output(names[root], inactive)))
    return with_group_sizes(net, layers)


def _check_roles(name: str, members, consumers) -> None:
    seen = {}
    for role, refs in (("member", members), ("consumer", consumers)):
        for ref in refs:
            key = (ref.path, ref.axis)
            if key in seen:
                raise ValueError(f"unit layer {name!r}: axis {ref.axis} of {path_name(ref.path)} is "
                                 f"both a {seen[key]} and a {role}; declare the unit layers by hand")
            seen[key] = role


def _fan_in(spaces, arrays, paths) -> int:
    shapes = {p: np.shape(a) for p, a in zip(paths, arrays)}
    total = 0
    for space in spaces:
        shape = shapes[space.producer]
        total += int(np.prod(shape)) // space.size
    return total


def _inactive_output(name: str, ranges: list[tuple[float, float]]) -> float:
    """What a removed unit sends to its consumers: one constant, the same for every consumer."""
    if not ranges:
        return 0.0
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if not (np.isfinite(low) and np.isfinite(high)) or high - low > INACTIVE_TOLERANCE * (1 + abs(low)):
        raise ValueError(f"unit layer {name!r}: a removed unit sends values between {low:.4g} and "
                         f"{high:.4g} to its consumers, not one constant, so it cannot be folded "
                         "into their biases; keep the layer whole (not_prunable) or change the "
                         "activation")
    value = 0.5 * (low + high)
    return 0.0 if abs(value) < INACTIVE_TOLERANCE else float(value)

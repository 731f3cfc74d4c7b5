"""The shape rules of :class:`sparse_bnn.nets.trace.UnitTracer`: elementwise ops, parameter-only
values, and the producers and consumers of units (``dot_general`` and convolutions with a parameter
kernel). The abstract values (:class:`Act`, :class:`Const`) are described in :mod:`sparse_bnn.nets.trace`.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from sparse_bnn.nets.base import ParamAxis, Path

ELEMENTWISE = frozenset("""
add sub mul div max min pow integer_pow neg exp exp2 log log1p expm1 tanh logistic sin cos tan
abs sign sqrt rsqrt cbrt square erf erfc erf_inv select_n convert_element_type copy copy_p clamp
is_finite ge gt lt le eq ne and or not xor floor ceil round nextafter atan2 rem reduce_precision
sinh cosh asinh acosh atanh asin acos atan real imag conj sharding_constraint pvary mesh_cast
""".split())
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin".split())
CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())


@dataclasses.dataclass(frozen=True)
class Unit:
    """An axis that indexes the units of ``space`` (``interleave`` entries per unit, unit fastest)."""

    space: int
    interleave: int = 1


@dataclasses.dataclass(frozen=True)
class Act:
    labels: tuple


@dataclasses.dataclass(frozen=True)
class Const:
    sources: tuple  # ((path, (param axis or None per value axis)), ...)


@dataclasses.dataclass
class Space:
    """Output features of one producer kernel, before spaces are merged."""

    producer: Path
    size: int
    members: list = dataclasses.field(default_factory=list)
    consumers: list = dataclasses.field(default_factory=list)
    hazards: list = dataclasses.field(default_factory=list)
    inactive: list = dataclasses.field(default_factory=list)

def _reshape_groups(shape_in, shape_out) -> list[tuple[list[int], list[int]]] | None:
    """Contiguous runs ``(in axes, out axes)`` with equal sizes; size-1 axes stand alone."""
    groups, i, j = [], 0, 0
    while i < len(shape_in) or j < len(shape_out):
        if i < len(shape_in) and shape_in[i] == 1:
            groups.append(([i], []))
            i += 1
            continue
        if j < len(shape_out) and shape_out[j] == 1:
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(shape_in) or j >= len(shape_out):
            return None
        ins, outs, a, b = [i], [j], shape_in[i], shape_out[j]
        i, j = i + 1, j + 1
        while a != b:
            if a < b and i < len(shape_in):
                a *= shape_in[i]
                ins.append(i)
                i += 1
            elif b < a and j < len(shape_out):
                b *= shape_out[j]
                outs.append(j)
                j += 1
            else:
                return None
        groups.append((ins, outs))
    return groups


class LinearRules:
    """Rules for elementwise ops, parameter-only values, ``dot_general`` and convolutions."""

    def const_rule(self, name, eqn, ins, shapes, out_shapes) -> Const:
        """Parameter-only values: keep which parameter axis each axis follows, where clear."""
        out = out_shapes[0]
        sources = []
        if name in ELEMENTWISE:
            for value, shape in zip(ins, shapes):
                offset = len(out) - len(shape)
                for path, axes in value.sources:
                    mapped = [None] * offset + [a if shape[k] == out[offset + k] else None
                                                for k, a in enumerate(axes)]
                    sources.append((path, tuple(mapped)))
        elif name in ("reshape", "broadcast_in_dim", "transpose", "squeeze") and ins:
            for path, axes in ins[0].sources:
                mapped = self.map_axes(name, eqn, axes, shapes[0], out)
                if mapped is not None:
                    sources.append((path, mapped))
        return Const(tuple(sources))

    def map_axes(self, name, eqn, axes, shape, out) -> tuple | None:
        if name == "transpose":
            return tuple(axes[p] for p in eqn.params["permutation"])
        if name == "squeeze":
            drop = {d % len(shape) for d in eqn.params["dimensions"]}
            return tuple(a for k, a in enumerate(axes) if k not in drop)
        if name == "broadcast_in_dim":
            mapped = [None] * len(out)
            for k, axis in enumerate(eqn.params["broadcast_dimensions"]):
                mapped[axis] = axes[k] if shape[k] == out[axis] else None
            return tuple(mapped)
        groups = _reshape_groups(shape, out)
        if groups is None:
            return None
        mapped = [None] * len(out)
        for g_in, g_out in groups:
            if len(g_in) == 1 and len(g_out) == 1:
                mapped[g_out[0]] = axes[g_in[0]]
        return tuple(mapped)

    def elementwise(self, ins, shapes, out) -> Act:
        labels = [None] * len(out)
        for value, shape in zip(ins, shapes):
            if isinstance(value, Act):
                offset = len(out) - len(shape)
                for k, label in enumerate(value.labels):
                    if shape[k] == out[offset + k]:
                        labels[offset + k] = self.merge(labels[offset + k], label)
        for value, shape in zip(ins, shapes):
            if not isinstance(value, Const):
                continue
            offset = len(out) - len(shape)
            for k, size in enumerate(shape):
                label = labels[offset + k]
                if label is None or size == 1:
                    continue
                found = False
                for path, axes in value.sources:
                    if axes[k] is not None:
                        self.spaces[label.space].members.append(ParamAxis(path, axes[k], label.interleave))
                        found = True
                if not found:
                    self.hazard(label, "are combined with a fixed array of their size")
        return Act(tuple(labels))

    def kernel_of(self, value) -> tuple[Path, tuple] | None:
        if isinstance(value, Const) and len(value.sources) == 1:
            path, axes = value.sources[0]
            if all(a is not None for a in axes) and len(set(axes)) == len(axes):
                return path, axes
        return None

    def consume(self, act: Act, axis: int, kernel: tuple[Path, tuple], kernel_axis: int,
                value) -> None:
        label = act.labels[axis]
        if label is None:
            return
        path, axes = kernel
        self.spaces[label.space].consumers.append(ParamAxis(path, axes[kernel_axis], label.interleave))
        if value is not None and self.zeroed is not None and self.zeroed(self.find(label.space)):
            self.spaces[label.space].inactive.append((jnp.min(value), jnp.max(value)))

    def dot_general(self, eqn, ins, shapes, concrete) -> Act:
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        lhs, rhs = ins
        free = [[k for k in range(len(s)) if k not in c and k not in b]
                for s, c, b in ((shapes[0], lc, lb), (shapes[1], rc, rb))]
        out_labels = []
        kernel_side = next((side for side, v in enumerate(ins) if self.kernel_of(v)), None)
        if kernel_side is not None and isinstance(ins[1 - kernel_side], Act):
            act_side = 1 - kernel_side
            act, kernel = ins[act_side], self.kernel_of(ins[kernel_side])
            contract = ((lc, rc), (rc, lc))[act_side]
            for a_axis, k_axis in zip(*contract):
                self.consume(act, a_axis, kernel, k_axis, concrete[act_side] if concrete else None)
            batch = (lb, rb)[act_side]
            for a_axis in batch:
                self.hazard(act.labels[a_axis], "meet a batched kernel (a dot_general batch axis)")
            kernel_free = free[kernel_side]
            big = [k for k in kernel_free if shapes[kernel_side][k] > 1 or len(kernel_free) == 1]
            kernel_labels = [None] * len(kernel_free)
            if len(big) == 1:
                unit = self.new_space(kernel[0], shapes[kernel_side][big[0]])
                self.spaces[unit.space].members.append(ParamAxis(kernel[0], kernel[1][big[0]]))
                kernel_labels[kernel_free.index(big[0])] = unit
            act_labels = [act.labels[k] for k in free[act_side]]
            out_labels = [None] * len(lb) + (act_labels + kernel_labels if act_side == 0
                                             else kernel_labels + act_labels)
            return Act(tuple(out_labels))
        if isinstance(lhs, Act) and isinstance(rhs, Act):  # activation x activation (attention)
            for a, b in zip(lc, rc):
                self.merge(lhs.labels[a], rhs.labels[b])
            batch = [self.merge(lhs.labels[a], rhs.labels[b]) for a, b in zip(lb, rb)]
            return Act(tuple(batch + [lhs.labels[k] for k in free[0]] + [rhs.labels[k] for k in free[1]]))
        self.hazard_all(ins, "are multiplied by a kernel computed from several arrays")
        return Act((None,) * len(eqn.outvars[0].aval.shape))

    def conv(self, eqn, ins, shapes, concrete) -> Act:
        lhs, rhs = ins
        dims = eqn.params["dimension_numbers"]
        lhs_spec, rhs_spec, out_spec = dims.lhs_spec, dims.rhs_spec, dims.out_spec
        out = [None] * len(eqn.outvars[0].aval.shape)
        kernel = self.kernel_of(rhs)
        if not isinstance(lhs, Act) or kernel is None:
            self.hazard_all(ins, "go through a convolution the unit inference does not follow")
            return Act(tuple(out))
        for axis in lhs_spec[2:]:
            self.hazard(lhs.labels[axis], "are convolved along their unit axis")
        groups = eqn.params["feature_group_count"]
        label = lhs.labels[lhs_spec[1]]
        if groups == 1:
            self.consume(lhs, lhs_spec[1], kernel, rhs_spec[1], concrete[0] if concrete else None)
            unit = self.new_space(kernel[0], shapes[1][rhs_spec[0]])
            self.spaces[unit.space].members.append(ParamAxis(kernel[0], kernel[1][rhs_spec[0]]))
            out[out_spec[1]] = unit
        elif groups == shapes[0][lhs_spec[1]] == shapes[1][rhs_spec[0]] and label is not None:
            self.spaces[label.space].members.append(ParamAxis(kernel[0], kernel[1][rhs_spec[0]]))
            out[out_spec[1]] = label  # depthwise: channel c stays channel c
        else:
            self.hazard(label, "feed a grouped convolution")
        return Act(tuple(out))

"""Following a network's units through its jaxpr (the engine of :mod:`sparse_bnn.nets.infer`).

A :class:`UnitTracer` walks the jaxpr of ``net(x)`` once, giving every value an abstract form:

* :class:`Act`, an activation: per axis either ``None`` or a :class:`Unit` label saying that the
  axis indexes the units of a *space* (the output features of one ``dot_general`` or
  convolution with a parameter kernel), possibly interleaved after a flatten;
* :class:`Const`, a value computed from parameters (and constants) only: per source parameter,
  which of its axes each of the value's axes follows.

A space collects its *members* (parameters applied elementwise along its axis: the kernel's
output axis, the bias, norm scales, batch statistics) and its *consumers* (kernels that contract
it). Elementwise ops between two labelled axes merge their spaces (a residual add, a gate).
Anything that does not commute with removing units (a reduction across them, a reshape that
splits them, an op the tracer does not know) is recorded as a *hazard* of the space, with the
module it happened in. With concrete inputs the walk also evaluates the jaxpr, and records what
each consumer receives from a space whose members were zeroed: the space's inactive output.
"""
from __future__ import annotations

from typing import Any, Callable

import jax.extend.core as jcore

from sparse_bnn.nets.base import Path
from sparse_bnn.nets.trace_rules import (CUMULATIVE, ELEMENTWISE, REDUCTIONS, Act, Const, LinearRules, Space, Unit,
                                         _reshape_groups)


def _sub_jaxpr(eqn) -> tuple[Any, list] | None:
    """``(jaxpr, consts)`` of a call-like equation whose body takes its inputs one to one."""
    for value in eqn.params.values():
        if isinstance(value, jcore.ClosedJaxpr):
            jaxpr, consts = value.jaxpr, list(value.consts)
        elif isinstance(value, jcore.Jaxpr):
            jaxpr, consts = value, []
        else:
            continue
        if len(jaxpr.invars) == len(eqn.invars) and len(jaxpr.outvars) == len(eqn.outvars):
            return jaxpr, consts
    return None



class UnitTracer(LinearRules):
    """One walk over a jaxpr. ``param_paths[i]`` names its ``i``-th input (the last is ``x``)."""

    def __init__(self, param_paths: list[Path], zeroed: Callable[[int], bool] | None = None):
        self.param_paths = param_paths
        self.spaces: list[Space] = []
        self.parent: list[int] = []
        self.zeroed = zeroed  # with concrete values: which spaces had their members zeroed
        self.scope = ""

    # -- spaces ------------------------------------------------------------------------------

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def merge(self, a: Unit | None, b: Unit | None) -> Unit | None:
        if a is None or b is None:
            return a or b
        if a.interleave != b.interleave:
            for label in (a, b):
                self.hazard(label, "are added to or multiplied with units laid out differently "
                            "(a flattened feature map and a plain feature vector)")
            return a
        ra, rb = self.find(a.space), self.find(b.space)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        return a

    def new_space(self, producer: Path, size: int) -> Unit:
        self.spaces.append(Space(producer, size))
        self.parent.append(len(self.parent))
        return Unit(len(self.spaces) - 1)

    def hazard(self, label: Unit | None, what: str) -> None:
        if label is not None:
            self.spaces[label.space].hazards.append((self.scope, what))

    def hazard_all(self, values, what: str) -> None:
        for value in values:
            if isinstance(value, Act):
                for label in value.labels:
                    self.hazard(label, what)

    # -- the walk ----------------------------------------------------------------------------

    def run(self, jaxpr, inputs: list, concrete: list | None = None, consts=()) -> tuple[list, list | None]:
        env, values = {}, {}
        for var, const in zip(jaxpr.constvars, consts):
            env[var], values[var] = Const(()), const
        for var, abstract, value in zip(jaxpr.invars, inputs, concrete or [None] * len(inputs)):
            env[var], values[var] = abstract, value

        def read(var):
            if isinstance(var, jcore.Literal):
                return Const(()), var.val
            return env[var], values.get(var)

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            abstract_in, concrete_in = [a for a, _ in ins], [c for _, c in ins]
            live = concrete is not None
            sub = _sub_jaxpr(eqn)
            outer_scope = self.scope
            name_stack = str(eqn.source_info.name_stack)
            if name_stack:
                self.scope = name_stack
            if sub is not None:
                outs, out_values = self.run(sub[0], abstract_in, concrete_in if live else None, sub[1])
            else:
                outs = self.rule(eqn, abstract_in, concrete_in if live else None)
                out_values = None
                if live:
                    result = eqn.primitive.bind(*concrete_in, **eqn.params)
                    out_values = list(result) if eqn.primitive.multiple_results else [result]
            self.scope = outer_scope
            for k, var in enumerate(eqn.outvars):
                env[var] = outs[k]
                if out_values is not None:
                    values[var] = out_values[k]
        outs = [read(v) for v in jaxpr.outvars]
        return [a for a, _ in outs], ([c for _, c in outs] if concrete is not None else None)

    # -- rules -------------------------------------------------------------------------------

    def rule(self, eqn, ins: list, concrete: list | None) -> list:
        name = eqn.primitive.name
        shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.invars]
        out_shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        if not any(isinstance(a, Act) for a in ins):
            return [self.const_rule(name, eqn, ins, shapes, out_shapes)] * len(eqn.outvars) \
                if len(eqn.outvars) == 1 else [Const(())] * len(eqn.outvars)
        if name in ELEMENTWISE:
            return [self.elementwise(ins, shapes, out_shapes[0])]
        if name == "dot_general":
            return [self.dot_general(eqn, ins, shapes, concrete)]
        if name == "conv_general_dilated":
            return [self.conv(eqn, ins, shapes, concrete)]
        act = ins[0]
        if name == "broadcast_in_dim" and isinstance(act, Act):
            labels = [None] * len(out_shapes[0])
            for k, axis in enumerate(eqn.params["broadcast_dimensions"]):
                if shapes[0][k] == out_shapes[0][axis]:
                    labels[axis] = act.labels[k]
            return [Act(tuple(labels))]
        if name == "reshape" and isinstance(act, Act):
            return [self.reshape(act, shapes[0], out_shapes[0])]
        if name == "transpose" and isinstance(act, Act):
            return [Act(tuple(act.labels[p] for p in eqn.params["permutation"]))]
        if name == "squeeze" and isinstance(act, Act):
            drop = {d % len(shapes[0]) for d in eqn.params["dimensions"]}
            return [Act(tuple(l for k, l in enumerate(act.labels) if k not in drop))]
        if name in REDUCTIONS and isinstance(act, Act):
            axes = {a % len(shapes[0]) for a in eqn.params["axes"]}
            for axis in axes:
                self.hazard(act.labels[axis], f"are reduced across ({name}: a layer norm, or a mean "
                            "or maximum over features), which removing units changes")
            return [Act(tuple(l for k, l in enumerate(act.labels) if k not in axes))]
        if name.startswith("reduce_window") and isinstance(act, Act):
            p = eqn.params
            for k, label in enumerate(act.labels):
                if label is not None and (p["window_dimensions"][k] != 1 or p["window_strides"][k] != 1
                                          or tuple(p["padding"][k]) != (0, 0)):
                    self.hazard(label, f"are pooled across ({name})")
            return [Act(act.labels)]
        if name in CUMULATIVE or name in ("rev", "slice", "pad", "dynamic_slice", "split",
                                          "concatenate", "sort"):
            return self.axis_rule(name, eqn, ins, shapes, out_shapes)
        self.hazard_all(ins, f"go through {name}, which the unit inference does not follow")
        return [Act((None,) * len(s)) for s in out_shapes]

    def reshape(self, act: Act, shape, out) -> Act:
        groups = _reshape_groups(shape, out)
        labels = [None] * len(out)
        if groups is None:
            self.hazard_all([act], "are reshaped in a way the unit inference does not follow")
            return Act(tuple(labels))
        for g_in, g_out in groups:
            labelled = [k for k in g_in if act.labels[k] is not None]
            if not labelled:
                continue
            label = act.labels[labelled[0]]
            units = shape[labelled[0]] // label.interleave
            if len(labelled) == 1 and labelled[0] == g_in[-1] and g_out and out[g_out[-1]] % units == 0:
                labels[g_out[-1]] = Unit(label.space, out[g_out[-1]] // units)
            else:
                for k in labelled:
                    self.hazard(act.labels[k], "are split by a reshape, or are not the fastest axis "
                                "of a flatten (flatten channels-last, NHWC)")
        return Act(tuple(labels))

    def axis_rule(self, name, eqn, ins, shapes, out_shapes) -> list:
        """Ops along one or more axes: a labelled axis must pass whole and unchanged."""
        p = eqn.params
        shape = shapes[0]
        if name in ("slice", "dynamic_slice", "pad"):
            if name == "pad":
                touched = [k for k, cfg in enumerate(p["padding_config"]) if tuple(cfg) != (0, 0, 0)]
            else:
                touched = [k for k in range(len(shape)) if out_shapes[0][k] != shape[k]]
        elif name == "rev":
            touched = list(p["dimensions"])
        elif name in ("concatenate", "split"):
            touched = [p["dimension"] if name == "concatenate" else p["axis"]]
        else:
            touched = [p.get("axis", p.get("dimension", 0))]
        touched = {t % len(shape) for t in touched} if shape else set()
        labels = [None] * len(shape)
        for value in ins:
            if isinstance(value, Act) and len(value.labels) == len(shape):
                for k, label in enumerate(value.labels):
                    if k in touched:
                        self.hazard(label, f"are cut, padded, reordered or joined along their "
                                    f"axis ({name})")
                    else:
                        labels[k] = self.merge(labels[k], label)
        labels = [None if k in touched else l for k, l in enumerate(labels)]
        return [Act(tuple(labels)) if len(s) == len(labels) else Act((None,) * len(s)) for s in out_shapes]

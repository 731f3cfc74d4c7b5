"""Compression figures of a pruned network: units, parameters, FLOPs and measured latency.

FLOPs are ``2 x`` multiply-accumulates (``math.md`` §5), counted per example by tracing the
network: :func:`count_macs` walks the jaxpr of ``net(x)`` (and every sub-jaxpr: ``pjit``,
``custom_jvp``, ``scan`` ...) and adds up

* ``dot_general``: batch dims x contracting dims x free dims of both operands
  (= output elements x contracting size);
* ``conv_general_dilated``: output elements x kernel spatial size x input channels per group.

Element-wise work (activations, biases, normalisation) is not counted, as is usual.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend import core as jcore

from sparse_bnn.compact.keep import check_keep

__all__ = ["CompressionReport", "LatencyRow", "LayerCompression", "compression_report",
           "count_macs", "count_params", "forward_latency", "jaxpr_macs", "run_times"]


# ----------------------------------------------------------------------------- counting

def jaxpr_macs(jaxpr: jcore.Jaxpr | jcore.ClosedJaxpr) -> int:
    """Multiply-accumulates of ``dot_general`` and ``conv_general_dilated`` in a jaxpr.

    Sub-jaxprs are counted where they run: ``scan`` bodies ``length`` times, the most expensive
    ``cond`` branch once, ``while`` bodies once (their trip count is not known when tracing).
    """
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            lhs_contract = eqn.params["dimension_numbers"][0][0]
            lhs_shape = eqn.invars[0].aval.shape
            contract_size = math.prod(lhs_shape[d] for d in lhs_contract)
            total += math.prod(eqn.outvars[0].aval.shape) * contract_size
        elif name == "conv_general_dilated":
            rhs_shape = eqn.invars[1].aval.shape
            out_channel_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            per_output = math.prod(rhs_shape) // rhs_shape[out_channel_dim]
            total += math.prod(eqn.outvars[0].aval.shape) * per_output
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_macs(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_macs(branch) for branch in eqn.params["branches"])
        else:
            for sub in jcore.jaxprs_in_params(eqn.params):
                total += jaxpr_macs(sub)
    return total


def count_macs(net: nnx.Module, input_shape: Sequence[int], dtype=jnp.float32) -> int:
    """Multiply-accumulates of one example through ``net`` (traced at batch size 1).

    Args:
      input_shape: shape of one example, without the batch axis (e.g. ``(28, 28, 1)``).
    """
    graphdef, state = nnx.split(net)
    x = jax.ShapeDtypeStruct((1, *input_shape), dtype)
    jaxpr = jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    return jaxpr_macs(jaxpr)


def count_params(net: nnx.Module) -> int:
    """Number of scalars in the network's ``nnx.Param`` variables."""
    return sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(nnx.state(net, nnx.Param)))


def forward_latency(nets: Sequence[nnx.Module], input_shape: Sequence[int], batch_size: int,
                    repeats: int = 20, warmup: int = 3, seed: int = 0, block: int = 10) -> list[float]:
    """Median wall-clock seconds of one jitted forward pass of each network at ``batch_size``.

    After ``warmup`` calls each, the networks take turns: in each of ``repeats`` rounds every
    network runs a block of ``block`` consecutive calls, and the first call of a block (which
    finds the caches filled by the other network) is not recorded. Turns keep a shared machine's
    load alike for all networks; blocks measure the steady state a deployed network runs in.
    """
    if block < 2:
        raise ValueError(f"block must be >= 2 (the first call of a block is discarded), got {block}")
    x = jax.random.normal(jax.random.key(seed), (batch_size, *input_shape))
    calls = []
    for net in nets:
        graphdef, state = nnx.split(net)
        forward = jax.jit(lambda s, x, graphdef=graphdef: nnx.merge(graphdef, s)(x))
        for _ in range(max(warmup, 1)):
            jax.block_until_ready(forward(state, x))
        calls.append((forward, state))
    times: list[list[float]] = [[] for _ in nets]
    for _ in range(repeats):
        for (forward, state), record in zip(calls, times):
            for call in range(block):
                start = time.perf_counter()
                jax.block_until_ready(forward(state, x))
                if call > 0:
                    record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


# ----------------------------------------------------------------------------- the report

@dataclasses.dataclass
class LayerCompression:
    """Kept units of one unit layer."""

    name: str
    kept: int
    total: int
    prunable: bool = True

    @property
    def fraction(self) -> float:
        return self.kept / self.total


@dataclasses.dataclass
class LatencyRow:
    """Median seconds per jitted forward pass of the dense and the compact network."""

    batch_size: int
    dense_s: float
    compact_s: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.compact_s


@dataclasses.dataclass
class CompressionReport:
    """What pruning bought: units, parameters, FLOPs per example, latency.

    ``density`` is the compact network's share of the dense network's parameters;
    ``unit_density`` the share of prunable units kept.
    """

    layers: list[LayerCompression]
    params_dense: int
    params_compact: int
    flops_dense: int
    flops_compact: int
    latency: list[LatencyRow] = dataclasses.field(default_factory=list)
    input_shape: tuple[int, ...] = ()

    @property
    def density(self) -> float:
        return self.params_compact / self.params_dense

    @property
    def unit_density(self) -> float:
        prunable = [layer for layer in self.layers if layer.prunable]
        return sum(l.kept for l in prunable) / max(sum(l.total for l in prunable), 1)

    @property
    def flop_ratio(self) -> float:
        """Dense FLOPs over compact FLOPs (the speed-up FLOPs promise)."""
        return self.flops_dense / self.flops_compact

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["density"] = self.density
        out["unit_density"] = self.unit_density
        out["flop_ratio"] = self.flop_ratio
        for row, record in zip(self.latency, out["latency"]):
            record["speedup"] = row.speedup
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompressionReport":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(data) - {"latency", "input_shape"})
        if missing:
            raise ValueError(f"compression report lacks fields {missing}")
        fields = {k: v for k, v in data.items() if k in names}
        fields["layers"] = [LayerCompression(**{k: v for k, v in layer.items()
                                                if k in {"name", "kept", "total", "prunable"}})
                            for layer in data["layers"]]
        fields["latency"] = [LatencyRow(int(r["batch_size"]), float(r["dense_s"]), float(r["compact_s"]))
                             for r in data.get("latency", [])]
        fields["input_shape"] = tuple(data.get("input_shape", ()))
        return cls(**fields)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "CompressionReport":
        return cls.from_dict(json.loads(text))

    def table(self) -> str:
        """A plain-text table: units per layer, then parameters, FLOPs and latency."""
        lines = [f"{'layer':<16}{'kept':>10}{'total':>10}{'kept %':>10}"]
        for layer in self.layers:
            tag = "" if layer.prunable else "  (output)"
            lines.append(f"{layer.name:<16}{layer.kept:>10,}{layer.total:>10,}"
                         f"{100 * layer.fraction:>9.1f}%{tag}")
        lines.append("")
        lines.append(f"{'':<22}{'dense':>16}{'compact':>16}{'ratio':>10}")
        lines.append(f"{'parameters':<22}{self.params_dense:>16,}{self.params_compact:>16,}"
                     f"{self.params_dense / self.params_compact:>9.2f}x")
        lines.append(f"{'FLOPs / example':<22}{self.flops_dense:>16,}{self.flops_compact:>16,}"
                     f"{self.flop_ratio:>9.2f}x")
        for row in self.latency:
            lines.append(f"{f'latency @ batch {row.batch_size}':<22}{_ms(row.dense_s):>16}"
                         f"{_ms(row.compact_s):>16}{row.speedup:>9.2f}x")
        lines.append(f"parameter density {100 * self.density:.2f}%, "
                     f"units kept {100 * self.unit_density:.2f}%")
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3f} ms"


def run_times(metrics: Mapping[str, Any]) -> str:
    """``"12.3s training, 45.6s compiling"`` from a run's metrics (``training_seconds``, and
    ``compile_seconds`` where recorded: XLA compilation of the epoch programs, after each shrink too)."""
    text = f"{float(metrics.get('training_seconds') or 0):.1f}s training"
    if isinstance(metrics.get("compile_seconds"), (int, float)):
        text += f", {float(metrics['compile_seconds']):.1f}s compiling"
    return text


def compression_report(net: nnx.Module, compact_net: nnx.Module, keep: Mapping[str, Any],
                       input_shape: Sequence[int], *, measure_latency: bool = True,
                       batch_sizes: Sequence[int] = (1, 1024), repeats: int = 20,
                       warmup: int = 3) -> CompressionReport:
    """Compare a dense network with its compact version.

    Args:
      net: the dense network.
      compact_net: what :func:`sparse_bnn.compact.prune.compact` made of it with ``keep``.
      keep: ``{layer_name: bool [units]}``, the masks used to prune.
      input_shape: one example's shape, without the batch axis.
      measure_latency: time jitted forward passes at each of ``batch_sizes``.
      repeats: timed calls per measurement (the median is reported), after ``warmup`` calls.
    """
    input_shape = tuple(int(d) for d in input_shape)
    masks = check_keep(net.unit_layers(), keep)
    layers = [LayerCompression(layer.name, int(masks[layer.name].sum()), layer.units, layer.prunable)
              for layer in net.unit_layers()]
    latency = []
    if measure_latency:
        for batch_size in batch_sizes:
            dense_s, compact_s = forward_latency((net, compact_net), input_shape, batch_size,
                                                 repeats=repeats, warmup=warmup)
            latency.append(LatencyRow(int(batch_size), dense_s, compact_s))
    return CompressionReport(
        layers=layers,
        params_dense=count_params(net), params_compact=count_params(compact_net),
        flops_dense=2 * count_macs(net, input_shape),
        flops_compact=2 * count_macs(compact_net, input_shape),
        latency=latency, input_shape=input_shape)


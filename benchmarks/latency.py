"""Dense vs compact network: measured speed-up against the FLOP ratio.

Every prunable unit layer of the net keeps a random 50%, 20%, 10% or 5% of its units (at least
one); the compact network comes from :func:`sparse_bnn.compact.prune.compact`, FLOPs from
:func:`sparse_bnn.compact.report.count_macs` and latency from :func:`sparse_bnn.compact.report.forward_latency`
(median of jitted forward passes after warm-up; dense and compact take turns in blocks of
consecutive calls), on whatever device JAX uses by default.

    python benchmarks/latency.py [--repeats 30] [--out benchmarks/results/latency.json]   # MLP
    python benchmarks/latency.py --net lenet5-caffe        # batch 1 and 1024
    python benchmarks/latency.py --net resnet20            # batch 128 and 1 (evaluation mode)

Nets: ``mlp`` (784-400-400-10, batch 1 and 1024), ``lenet5-caffe`` (28x28x1, batch 1 and 1024),
``resnet20`` (32x32x3, batch 128 and 1). Prints a table and writes JSON:
``benchmarks/results/latency.json`` for the MLP, ``latency_<net>.json`` for the others (or
``--out``). At batch 1024 the compute dominates and the measured speed-up of the MLP should
reach at least 0.7x the FLOP ratio; at batch 1 dispatch overhead dominates.

For every net other than the MLP the rows also carry ``flops_masked``: the FLOPs the *masked*
dense network needs, each matmul/conv counted with only its kept output units and kept input
units (read off the unit layers' members and consumers, not from the compact network). The
compact network's FLOPs are counted by tracing it. For ResNet-20 they agree because a
residual-stream channel is one unit shared by every conv writing into it (the rule in
``sparse_bnn/nets/resnet.py``): a removed stream channel is removed everywhere, so the compact
network executes no work for it.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend import core as jcore

from sparse_bnn.nets import MLP, FunctionalNet
from sparse_bnn.nets.lenet import LeNet5Caffe
from sparse_bnn.nets.resnet import ResNet
from sparse_bnn.compact.prune import compact
from sparse_bnn.compact.report import count_macs, count_params, forward_latency, jaxpr_macs

RESULTS = Path(__file__).parent / "results"
DENSITIES = (0.5, 0.2, 0.1, 0.05)
TARGET_EFFICIENCY = 0.7


class BenchNet(NamedTuple):
    title: str
    build: Callable[[nnx.Rngs], nnx.Module]
    input_shape: tuple[int, ...]
    batch_sizes: tuple[int, ...]


BENCH_NETS: dict[str, BenchNet] = {
    "mlp": BenchNet("MLP 784-400-400-10", lambda rngs: MLP(784, (400, 400), 10, rngs=rngs),
                    (784,), (1, 1024)),
    "lenet5-caffe": BenchNet("LeNet-5-Caffe 20-50-800-500", lambda rngs: LeNet5Caffe(rngs=rngs),
                             (28, 28, 1), (1, 1024)),
    "resnet20": BenchNet("ResNet-20 (16/32/64, SiLU, eval mode)",
                         lambda rngs: ResNet(20, rngs=rngs), (32, 32, 3), (128, 1)),
}


def random_keep(net: nnx.Module, density: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``{layer: bool [units]}`` keeping ``round(density * units)`` (>= 1) random units of every
    prunable unit layer."""
    keep = {}
    for layer in net.unit_layers():
        if layer.prunable:
            keep[layer.name] = rng.permutation(layer.units) < max(1, round(density * layer.units))
    return keep


def masked_macs(net: nnx.Module, keep: Mapping[str, np.ndarray], input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one example through the *masked* dense network, counting only
    the work on kept units.

    The network is traced as a function of its parameters; every ``dot_general`` or
    ``conv_general_dilated`` whose kernel is a parameter counts its MACs (as
    :func:`sparse_bnn.compact.report.jaxpr_macs` does) times the kept fraction of the kernel's output
    units (the unit layer it is a member of) and of its input units (the unit layer it
    consumes). Other work counts in full.
    """
    functional = FunctionalNet(net)
    paths = list(functional.initial)
    out_layer, in_layer = {}, {}
    for layer in net.unit_layers():
        kept = float(np.sum(keep[layer.name])) / layer.units if layer.name in keep else 1.0
        for member in layer.members:
            out_layer[member.path] = kept
        for consumer in layer.consumers:
            in_layer[consumer.path] = kept
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    closed = jax.make_jaxpr(lambda values, x: functional.apply(dict(zip(paths, values)), x))(
        [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in functional.initial.values()], x)
    param_of = dict(zip(closed.jaxpr.invars, paths))
    total = float(jaxpr_macs(closed))
    for eqn in closed.jaxpr.eqns:
        if eqn.primitive.name not in ("dot_general", "conv_general_dilated"):
            continue
        kernel = param_of.get(eqn.invars[1]) if not isinstance(eqn.invars[1], jcore.Literal) else None
        if kernel is None:
            continue
        one_op = jcore.Jaxpr([], list(eqn.invars), list(eqn.outvars), [eqn])
        fraction = out_layer.get(kernel, 1.0) * in_layer.get(kernel, 1.0)
        total -= (1.0 - fraction) * jaxpr_macs(one_op)
    return int(round(total))


def kept_widths(net: nnx.Module, name: str) -> list[int] | dict[str, int]:
    """The MLP's hidden widths (as in earlier results), or ``{layer: units}`` for other nets."""
    if name == "mlp":
        return list(net.widths)
    return {layer.name: layer.units for layer in net.unit_layers() if layer.prunable}


def run(name: str, repeats: int, warmup: int, block: int = 10, seed: int = 0) -> dict:
    bench = BENCH_NETS[name]
    dense = bench.build(nnx.Rngs(seed))
    if hasattr(dense, "eval"):
        dense.eval()  # batch norm on running statistics, as deployed
    params = FunctionalNet(dense).initial
    dense_macs = count_macs(dense, bench.input_shape)
    rng = np.random.default_rng(seed)
    rows = []
    for density in DENSITIES:
        keep = random_keep(dense, density, rng)
        small, _ = compact(dense, params, keep)
        small.eval()
        macs = count_macs(small, bench.input_shape)
        extra = {}
        if name != "mlp":
            flops_masked = 2 * masked_macs(dense, keep, bench.input_shape)
            extra = {"flops_masked": flops_masked, "flop_ratio_masked": 2 * dense_macs / flops_masked}
        for batch_size in bench.batch_sizes:
            dense_latency, latency = forward_latency((dense, small), bench.input_shape, batch_size,
                                                     repeats=repeats, warmup=warmup, block=block)
            speedup = dense_latency / latency
            flop_ratio = dense_macs / macs
            rows.append({"density": density, "widths": kept_widths(small, name),
                         "batch_size": batch_size,
                         "params_dense": count_params(dense), "params_compact": count_params(small),
                         "flops_dense": 2 * dense_macs, "flops_compact": 2 * macs, **extra,
                         "flop_ratio": flop_ratio, "dense_ms": 1e3 * dense_latency,
                         "compact_ms": 1e3 * latency, "speedup": speedup,
                         "efficiency": speedup / flop_ratio})
            if name != "mlp":  # progress on the slow nets (the MLP prints its table only)
                print(f"  {name} kept {100 * density:.0f}% batch {batch_size}: speedup {speedup:.2f}x, "
                      f"FLOP ratio {flop_ratio:.2f}x", flush=True)
    result = {"device": str(jax.devices()[0]), "platform": platform.platform(),
              "jax_version": jax.__version__, "repeats": repeats, "warmup": warmup}
    if name == "mlp":
        result["target_efficiency_batch_1024"] = TARGET_EFFICIENCY
    else:
        result = {"net": name, "title": bench.title, "input_shape": list(bench.input_shape),
                  "block": block, **result}
    return {**result, "rows": rows}


def table(result: dict) -> str:
    if "net" not in result:
        title = BENCH_NETS["mlp"].title
        head = f"{'kept':>6} {'widths':>10}"
    else:
        title = result["title"]
        head = f"{'kept':>6} {'masked FLOPs':>13} {'compact FLOPs':>14}"
    calls = (f"{result['repeats']}" if "net" not in result else
             f"{result['repeats']} turns x {result['block'] - 1}")
    lines = [f"{title} on {result['device']} (median of {calls} jitted calls)",
             f"{head} {'batch':>6} {'FLOP ratio':>11} {'dense ms':>10} "
             f"{'compact ms':>11} {'speedup':>8} {'speedup/FLOP ratio':>19}"]
    for r in result["rows"]:
        if "net" not in result:
            widths = "-".join(map(str, r["widths"]))
            first = f"{100 * r['density']:>5.0f}% {widths:>10}"
        else:
            first = (f"{100 * r['density']:>5.0f}% {r['flops_masked'] / 1e6:>12.2f}M "
                     f"{r['flops_compact'] / 1e6:>13.2f}M")
        lines.append(f"{first} {r['batch_size']:>6} "
                     f"{r['flop_ratio']:>10.2f}x {r['dense_ms']:>10.3f} {r['compact_ms']:>11.3f} "
                     f"{r['speedup']:>7.2f}x {r['efficiency']:>19.2f}")
    if "net" in result:
        lines.append(f"dense: {result['rows'][0]['flops_dense'] / 1e6:.2f}M FLOPs per example")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="mlp", choices=sorted(BENCH_NETS))
    parser.add_argument("--repeats", type=int, default=30, help="turns per network")
    parser.add_argument("--block", type=int, default=10,
                        help="consecutive calls per turn (the first is not recorded)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: results/latency.json (mlp), results/latency_<net>.json")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / ("latency.json" if args.net == "mlp" else f"latency_{args.net}.json")
    result = run(args.net, args.repeats, args.warmup, args.block)
    print(table(result))
    if args.net == "mlp":
        big = [r for r in result["rows"] if r["batch_size"] == 1024]
        met = all(r["efficiency"] >= TARGET_EFFICIENCY for r in big)
        print(f"batch 1024: speedup >= {TARGET_EFFICIENCY} x FLOP ratio at every density: "
              f"{'yes' if met else 'no'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

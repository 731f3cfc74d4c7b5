"""Dense vs compact MLP 784-400-400-10: measured speed-up against the FLOP ratio.

Each hidden layer keeps 50%, 20%, 10% or 5% of its units; the compact network comes from
:func:`sparse_bnn.prune.compact`. Latency is the median of repeated jitted forward passes after
warm-up (dense and compact calls alternate), at batch 1 and batch 1024, on whatever device JAX uses by default.

    python benchmarks/latency.py [--repeats 30] [--out benchmarks/results/latency.json]

Prints a table and writes JSON. At batch 1024 the compute dominates and the measured speed-up
should reach at least 0.7x the FLOP ratio; at batch 1 dispatch overhead dominates.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from sparse_bnn.nets import MLP, FunctionalNet
from sparse_bnn.prune import compact
from sparse_bnn.report import count_macs, count_params, forward_latency

INPUT_SHAPE = (784,)
WIDTHS = (400, 400)
DENSITIES = (0.5, 0.2, 0.1, 0.05)
BATCH_SIZES = (1, 1024)
TARGET_EFFICIENCY = 0.7


def run(repeats: int, warmup: int, seed: int = 0) -> dict:
    dense = MLP(INPUT_SHAPE[0], WIDTHS, 10, rngs=nnx.Rngs(seed))
    params = FunctionalNet(dense).initial
    dense_macs = count_macs(dense, INPUT_SHAPE)
    rng = np.random.default_rng(seed)
    rows = []
    for density in DENSITIES:
        keep = {}
        for i, width in enumerate(WIDTHS):
            kept = rng.permutation(width) < round(density * width)
            keep[f"dense{i}"] = kept
        small, _ = compact(dense, params, keep)
        macs = count_macs(small, INPUT_SHAPE)
        for batch_size in BATCH_SIZES:
            dense_latency, latency = forward_latency((dense, small), INPUT_SHAPE, batch_size,
                                                     repeats=repeats, warmup=warmup)
            speedup = dense_latency / latency
            flop_ratio = dense_macs / macs
            rows.append({"density": density, "widths": list(small.widths), "batch_size": batch_size,
                         "params_dense": count_params(dense), "params_compact": count_params(small),
                         "flops_dense": 2 * dense_macs, "flops_compact": 2 * macs,
                         "flop_ratio": flop_ratio, "dense_ms": 1e3 * dense_latency,
                         "compact_ms": 1e3 * latency, "speedup": speedup,
                         "efficiency": speedup / flop_ratio})
    return {"device": str(jax.devices()[0]), "platform": platform.platform(),
            "jax_version": jax.__version__, "repeats": repeats, "warmup": warmup,
            "target_efficiency_batch_1024": TARGET_EFFICIENCY, "rows": rows}


def table(result: dict) -> str:
    lines = [f"MLP 784-400-400-10 on {result['device']} (median of {result['repeats']} jitted calls)",
             f"{'kept':>6} {'widths':>10} {'batch':>6} {'FLOP ratio':>11} {'dense ms':>10} "
             f"{'compact ms':>11} {'speedup':>8} {'speedup/FLOP ratio':>19}"]
    for r in result["rows"]:
        widths = "-".join(map(str, r["widths"]))
        lines.append(f"{100 * r['density']:>5.0f}% {widths:>10} {r['batch_size']:>6} "
                     f"{r['flop_ratio']:>10.2f}x {r['dense_ms']:>10.3f} {r['compact_ms']:>11.3f} "
                     f"{r['speedup']:>7.2f}x {r['efficiency']:>19.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency.json")
    args = parser.parse_args(argv)
    result = run(args.repeats, args.warmup)
    print(table(result))
    big = [r for r in result["rows"] if r["batch_size"] == 1024]
    met = all(r["efficiency"] >= TARGET_EFFICIENCY for r in big)
    print(f"batch 1024: speedup >= {TARGET_EFFICIENCY} x FLOP ratio at every density: "
          f"{'yes' if met else 'no'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Data-parallel scaling of ``fit``: training throughput (examples/s) on 1, 2, 4, ... devices.

    python benchmarks/scaling.py                      # 1, 2, 4 devices; fake CPU devices if no accelerators
    python benchmarks/scaling.py --devices 1 2 4 8 --n-data 65536 --batch-size 4096 --epochs 4

Real accelerators (more than one local GPU/TPU) are used in this process with ``devices=N``.
Without them, each device count runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``: those fake CPU devices share the same
CPU cores, so the efficiency measures the overhead of sharding (partitioning, collectives,
per-device dispatch), not a speedup. The global batch is fixed (strong scaling); every mode
(device-resident, streamed from host memory) is timed over the epochs after the first.
Writes a table to stdout and JSON to ``benchmarks/results/scaling.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE_DEVICES_NOTE = ("fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count) share the same "
                     "{cores} CPU core(s): efficiency here measures sharding overhead, not speedup")


def measure(devices: int, mode: str, args: argparse.Namespace) -> dict:
    """Fit a Bayesian MLP on synthetic data on ``devices`` devices; throughput over epochs 2..E."""
    import jax
    import numpy as np
    from flax import nnx

    sys.path.insert(0, str(REPO))
    from sparse_bnn.fit import fit
    from sparse_bnn.model import SparseBNN
    from sparse_bnn.nets.mlp import MLP
    from sparse_bnn.priors import get_prior

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n_data, args.features)).astype(np.float32)
    y = rng.integers(0, args.classes, size=args.n_data).astype(np.int32)
    bnn = SparseBNN(MLP(args.features, tuple(args.widths), args.classes, rngs=nnx.Rngs(0)),
                    get_prior("ss-ghs"), n_data=args.n_data)
    result = fit(bnn, x, y, epochs=args.epochs, batch_size=args.batch_size, progress=False,
                 devices=devices, streaming=(mode == "streaming"))
    timed = result.history[1:] if len(result.history) > 1 else result.history
    steps = args.n_data // args.batch_size
    seconds = sum(record["seconds"] for record in timed)
    return {"devices": devices, "mode": mode, "backend": jax.default_backend(),
            "device_kind": jax.local_devices()[0].device_kind, "global_batch": args.batch_size,
            "examples_per_second": len(timed) * steps * args.batch_size / seconds,
            "seconds_per_epoch": seconds / len(timed), "compile_seconds": result.compile_seconds}


def run_fake_devices(devices: int, mode: str, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh process that sees ``devices`` fake CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip())
    command = [sys.executable, __file__, "--worker", str(devices), "--mode", mode, *forwarded(args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {devices}-device run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def forwarded(args: argparse.Namespace) -> list[str]:
    return ["--n-data", str(args.n_data), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
            "--features", str(args.features), "--classes", str(args.classes),
            "--widths", *map(str, args.widths)]


def table(rows: list[dict]) -> str:
    """Throughput per device count and mode, with speedup and efficiency against 1 device."""
    lines = [f"{'mode':<10} {'devices':>7} {'examples/s':>12} {'s/epoch':>9} {'speedup':>8} {'efficiency':>10}"]
    for row in rows:
        lines.append(f"{row['mode']:<10} {row['devices']:>7} {row['examples_per_second']:>12.0f} "
                     f"{row['seconds_per_epoch']:>9.3f} {row['speedup']:>8.2f} {row['efficiency']:>9.0%}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", choices=["resident", "streaming"], default=["resident", "streaming"])
    parser.add_argument("--n-data", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch (divisible by every device count)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--widths", type=int, nargs="+", default=[400, 400])
    parser.add_argument("--fake", action="store_true", help="fake CPU devices even if accelerators are present")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "scaling.json")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="resident", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.mode, args)))
        return
    for devices in args.devices:
        if args.batch_size % devices:
            parser.error(f"--batch-size {args.batch_size} does not divide by {devices} devices")

    import jax
    accelerators = jax.default_backend() != "cpu" and jax.local_device_count() > 1 and not args.fake
    if accelerators:
        counts = [d for d in args.devices if d <= jax.local_device_count()]
        note = f"{jax.local_device_count()} x {jax.local_devices()[0].device_kind}"
    else:
        counts = args.devices
        note = FAKE_DEVICES_NOTE.format(cores=os.cpu_count())
    rows = []
    for mode in args.modes:
        for devices in counts:
            started = time.perf_counter()
            row = measure(devices, mode, args) if accelerators else run_fake_devices(devices, mode, args)
            row["wall_seconds"] = time.perf_counter() - started
            rows.append(row)
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"] and r["devices"] == counts[0])
        row["speedup"] = row["examples_per_second"] / base["examples_per_second"]
        row["efficiency"] = row["speedup"] * counts[0] / row["devices"]
    print(table(rows))
    print(f"note: {note}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "mode", "output")}
    payload = {"settings": settings, "fake_devices": not accelerators, "note": note,
               "machine": platform.platform(), "jax": jax.__version__, "rows": rows}
    args.output.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

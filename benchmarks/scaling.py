"""Data-parallel scaling of every training scheme: time per SVI step on 1, 2, 4, ... devices.

    python benchmarks/scaling.py                      # plain SS-GHS, 1, 2, 4 devices, resident and streamed
    python benchmarks/scaling.py --schemes shrink bmr-shrink --data fashion-mnist --epochs 30
    python benchmarks/scaling.py --devices 1 2 4 8 --n-data 65536 --batch-size 4096 --epochs 4

Schemes (each one ``sparse_bnn.train.fit`` with its hooks):

* ``plain``: SS-GHS on the full network every epoch;
* ``shrink``: the main job's settings: SS-GHS, Adam 3e-3, indicator logits 1e-2, ``rho_init -3``,
  the ``Shrink`` hook (units removed for good, the network rebuilt smaller);
* ``bmr-shrink``: the flat prior with node-wise BMR removing units (``Shrink(rule=NodeBMRRule)``).

Real accelerators are used in this process with ``devices=N`` (N up to the local device count:
on a one-GPU machine, one device). Without them each device count runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``: those fake CPU devices share the same
CPU cores, so the ratio to one device measures the overhead of sharding (partitioning,
collectives, per-device dispatch), not a speedup. The global batch is fixed (strong scaling).
Each row times the epochs after the first, compilation excluded (reported apart); ``overhead``
is a row's time per step over the 1-device row's of the same scheme and mode, and
``max_loss_difference`` the largest relative difference of its per-epoch losses from that row's
(every placement computes the same run). Writes a table to stdout and JSON (default
``benchmarks/results/scaling.json``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAKE_DEVICES_NOTE = ("fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count) share the same "
                     "{cores} CPU core(s): the overhead here is that of sharding, not a speedup")
SCHEMES = ("plain", "shrink", "bmr-shrink")


def load_data(args: argparse.Namespace):
    """``(x, y, augment)``: Fashion-MNIST's training set (flips, as the main job) or synthetic data."""
    import numpy as np
    if args.data == "fashion-mnist":
        from sparse_bnn.data.preprocess import flip_augment
        from sparse_bnn.data.sources import load_dataset
        data = load_dataset("fashion-mnist", n_train=args.n_data, data_dir=args.data_dir)
        return data.x_train.reshape(len(data.x_train), -1), data.y_train, flip_augment
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n_data, args.features)).astype(np.float32)
    return x, rng.integers(0, args.classes, size=args.n_data).astype(np.int32), None


def measure(devices: int, mode: str, scheme: str, args: argparse.Namespace) -> dict:
    """Fit ``scheme`` on ``devices`` devices; time per step over epochs 2..E."""
    import jax
    from flax import nnx

    sys.path.insert(0, str(REPO))
    from sparse_bnn.core.model import SparseBNN
    from sparse_bnn.nets.mlp import MLP
    from sparse_bnn.priors import get_prior
    from sparse_bnn.sparsify.reduction import NodeBMRRule
    from sparse_bnn.sparsify.shrink import Shrink, ShrinkSchedule
    from sparse_bnn.train import fit, svi_optimizer

    x, y, augment = load_data(args)
    classes = int(y.max()) + 1 if args.data == "fashion-mnist" else args.classes
    prior = "flat" if scheme == "bmr-shrink" else "ss-ghs"
    bnn = SparseBNN(MLP(x.shape[1], tuple(args.widths), classes, rngs=nnx.Rngs(0)), get_prior(prior),
                    n_data=len(x), rho_init=-3.0 if scheme != "plain" else -6.0)
    hooks, optimizer = [], None
    if scheme == "shrink":
        hooks, optimizer = [Shrink(ShrinkSchedule())], svi_optimizer(3e-3, 1e-2)
    elif scheme == "bmr-shrink":
        hooks, optimizer = [Shrink(ShrinkSchedule(), NodeBMRRule(5))], svi_optimizer(3e-3)
    result = fit(bnn, x, y, epochs=args.epochs, batch_size=args.batch_size, progress=False, devices=devices,
                 streaming=(mode == "streaming"), hooks=hooks, optimizer=optimizer, augment=augment)
    timed = result.history[1:] if len(result.history) > 1 else result.history
    steps = len(x) // args.batch_size
    seconds = sum(record["seconds"] for record in timed)
    return {"scheme": scheme, "devices": devices, "mode": mode, "backend": jax.default_backend(),
            "device_kind": jax.local_devices()[0].device_kind, "global_batch": args.batch_size,
            "epochs": args.epochs, "steps_per_epoch": steps,
            "ms_per_step": 1e3 * seconds / (len(timed) * steps),
            "examples_per_second": len(timed) * steps * args.batch_size / seconds,
            "compile_seconds": result.compile_seconds, "compilations": result.compilations,
            "final_widths": [layer.units for layer in result.bnn.layers[:-1]],
            "losses": [record["loss"] for record in result.history]}


def run_fake_devices(devices: int, mode: str, scheme: str, args: argparse.Namespace) -> dict:
    """``measure`` in a fresh process that sees ``devices`` fake CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip())
    command = [sys.executable, __file__, "--worker", str(devices), "--mode", mode, "--scheme", scheme,
               *forwarded(args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {devices}-device run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def forwarded(args: argparse.Namespace) -> list[str]:
    data_dir = ["--data-dir", args.data_dir] if args.data_dir else []
    return ["--n-data", str(args.n_data), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
            "--features", str(args.features), "--classes", str(args.classes), "--data", args.data,
            *data_dir, "--widths", *map(str, args.widths)]


def table(rows: list[dict]) -> str:
    """Time per step per scheme, mode and device count, with the overhead against 1 device."""
    lines = [f"{'scheme':<11} {'mode':<10} {'devices':>7} {'ms/step':>9} {'overhead':>9} {'compile s':>10} "
             f"{'compiles':>8} {'max loss diff':>13}  final widths"]
    for row in rows:
        lines.append(f"{row['scheme']:<11} {row['mode']:<10} {row['devices']:>7} {row['ms_per_step']:>9.2f} "
                     f"{row['overhead']:>8.2f}x {row['compile_seconds']:>10.1f} {row['compilations']:>8} "
                     f"{row['max_loss_difference']:>13.1e}  {row['final_widths']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", nargs="+", choices=SCHEMES, default=["plain"])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", choices=["resident", "streaming"], default=["resident", "streaming"])
    parser.add_argument("--data", choices=["synthetic", "fashion-mnist"], default="synthetic")
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--n-data", type=int, default=16384, help="examples (Fashion-MNIST: the first N)")
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch (divisible by every device count)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--features", type=int, default=784, help="synthetic data: inputs per example")
    parser.add_argument("--classes", type=int, default=10, help="synthetic data: classes")
    parser.add_argument("--widths", type=int, nargs="+", default=[400, 400])
    parser.add_argument("--fake", action="store_true", help="fake CPU devices even if accelerators are present")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "scaling.json")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="resident", help=argparse.SUPPRESS)
    parser.add_argument("--scheme", default="plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.mode, args.scheme, args)))
        return
    for devices in args.devices:
        if args.batch_size % devices:
            parser.error(f"--batch-size {args.batch_size} does not divide by {devices} devices")

    import jax
    sys.path.insert(0, str(REPO))
    import sparse_bnn
    accelerators = jax.default_backend() != "cpu" and not args.fake
    if accelerators:
        counts = [d for d in args.devices if d <= jax.local_device_count()]
        note = f"{jax.local_device_count()} x {jax.local_devices()[0].device_kind}"
    else:
        counts = args.devices
        note = FAKE_DEVICES_NOTE.format(cores=os.cpu_count())
    rows = []
    for scheme in args.schemes:
        for mode in args.modes:
            for devices in counts:
                started = time.perf_counter()
                row = measure(devices, mode, scheme, args) if accelerators else run_fake_devices(devices, mode, scheme, args)
                row["wall_seconds"] = time.perf_counter() - started
                rows.append(row)
                print(f"{scheme} {mode} {devices}: {row['ms_per_step']:.2f} ms/step", flush=True)
    for row in rows:
        base = next(r for r in rows if (r["scheme"], r["mode"], r["devices"]) == (row["scheme"], row["mode"], counts[0]))
        row["overhead"] = row["ms_per_step"] / base["ms_per_step"]
        row["max_loss_difference"] = max(abs(a - b) / abs(b) for a, b in zip(row["losses"], base["losses"]))
    print(table(rows))
    print(f"note: {note}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "mode", "scheme", "output")}
    payload = {"command": "python " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
               "machine": platform.platform(), "cpu_cores": os.cpu_count(), "device": note,
               "fake_devices": not accelerators, "sparse_bnn_version": sparse_bnn.__version__,
               "jax": jax.__version__, "settings": settings, "rows": rows}
    args.output.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

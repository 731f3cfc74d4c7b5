"""Time each of the first epochs separately: SS-GHS SVI against the deterministic MLP.

Real Fashion-MNIST (``sparse_bnn.data.sources.load_dataset("fashion-mnist")``), MLP 784-400-400-10,
batch 1024, each epoch one jitted ``lax.scan`` as ``sparse_bnn.train`` runs it. Compilation is
timed apart (AOT ``.lower().compile()``), and every epoch is timed with ``block_until_ready``;
epochs of the two configurations are interleaved so that machine noise hits both alike.

To tell *warm-up* (thread pools, allocator, caches: the first calls are slow whatever the
numbers) from *data-dependent* slowness (e.g. denormal floats in early parameters or optimiser
moments), the script then replays the first epoch from a saved copy of the initial state, and
the last epoch again from its own input state: if the replayed first epoch is fast again, the
slowness was warm-up; if it is slow again, it is the numbers. It also counts subnormal float32
values in the parameters and optimiser state after each epoch, and checks whether compiled code
flushes subnormal results to zero (XLA's CPU runtime sets FTZ while it runs; if so, no step can
create subnormals and they cannot be the cause).

    python benchmarks/first_epochs.py [--epochs 10] [--prior ss-ghs] [--n-train 60000]

Writes ``benchmarks/results/first_epochs.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from step_time import RESULTS, deterministic_epoch, svi_epoch  # benchmarks/ is on sys.path
from sparse_bnn.data.sources import load_dataset
from sparse_bnn.nets import MLP

TINY = np.finfo(np.float32).tiny


def subnormal_count(tree) -> int:
    """Number of nonzero float32 entries smaller in magnitude than the smallest normal float."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        leaf = np.asarray(leaf)
        if leaf.dtype == np.float32:
            total += int(np.sum((leaf != 0) & (np.abs(leaf) < TINY)))
    return total


def flushes_subnormals() -> bool:
    """Whether compiled code flushes subnormal results to zero (XLA CPU sets FTZ when it runs)."""
    tiny = jnp.full((8,), TINY, jnp.float32)
    return bool(np.all(np.asarray(jax.jit(lambda v: v * jnp.float32(0.5))(tiny)) == 0))


def copy_state(state):
    return jax.tree_util.tree_map(jnp.copy, state)


def run(args) -> dict:
    data = load_dataset("fashion-mnist", n_train=args.n_train)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    n_data, batch_size = x.shape[0], args.batch_size
    make_net = lambda: MLP(784, (400, 400), 10, rngs=nnx.Rngs(0))  # noqa: E731
    configs = {"deterministic": deterministic_epoch(make_net(), n_data, batch_size),
               args.prior: svi_epoch(make_net(), args.prior, n_data, batch_size)}
    report = {"data": "fashion-mnist", "n_train": int(n_data), "batch_size": batch_size,
              "steps_per_epoch": n_data // batch_size, "jax": jax.__version__,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "flushes_subnormals": flushes_subnormals(), "configs": {}}
    compiled, states, initial = {}, {}, {}
    for name, (epoch, state) in configs.items():
        started = time.perf_counter()
        compiled[name] = epoch.lower(state, x, y).compile()
        report["configs"][name] = {"compile_seconds": time.perf_counter() - started, "epochs": []}
        initial[name] = copy_state(state)
        states[name] = state
        print(f"compiled {name} in {report['configs'][name]['compile_seconds']:.1f}s", flush=True)

    last_input = {}
    for epoch in range(1, args.epochs + 1):
        for name in compiled:
            if epoch == args.epochs:
                last_input[name] = copy_state(states[name])
            started = time.perf_counter()
            states[name], stats = jax.block_until_ready(compiled[name](states[name], x, y))
            seconds = time.perf_counter() - started
            loss = float(stats.loss if hasattr(stats, "loss") else stats)
            record = {"epoch": epoch, "seconds": seconds, "loss": loss,
                      "subnormals": subnormal_count(states[name])}
            report["configs"][name]["epochs"].append(record)
        line = "  ".join(f"{n}: {report['configs'][n]['epochs'][-1]['seconds']:.2f}s "
                         f"(subnormal {report['configs'][n]['epochs'][-1]['subnormals']})" for n in compiled)
        print(f"epoch {epoch:>2}  {line}", flush=True)

    # Replays: the first epoch from the initial state, the last from its own input, interleaved.
    for name in compiled:
        replays = {"first": [], "last": []}
        for _ in range(args.replays):
            for which, source in (("first", initial[name]), ("last", last_input[name])):
                state = copy_state(source)
                started = time.perf_counter()
                jax.block_until_ready(compiled[name](state, x, y))
                replays[which].append(time.perf_counter() - started)
        report["configs"][name]["replay_first_epoch_seconds"] = replays["first"]
        report["configs"][name]["replay_last_epoch_seconds"] = replays["last"]
    return report


def print_table(report: dict) -> None:
    names = list(report["configs"])
    steps = report["steps_per_epoch"]
    print(f"\nFashion-MNIST n={report['n_train']}, batch {report['batch_size']}, {steps} steps/epoch")
    print(f"compiled code flushes subnormal results to zero: {report['flushes_subnormals']}")
    print("compile: " + ", ".join(f"{n} {report['configs'][n]['compile_seconds']:.1f}s" for n in names))
    print(f"{'epoch':>5}" + "".join(f"{n + ' s':>16}{'steps/s':>9}" for n in names) + f"{'ratio':>8}")
    rows = zip(*(report["configs"][n]["epochs"] for n in names))
    for records in rows:
        line = f"{records[0]['epoch']:>5}"
        for record in records:
            line += f"{record['seconds']:>16.2f}{steps / record['seconds']:>9.1f}"
        print(line + f"{records[1]['seconds'] / records[0]['seconds']:>8.2f}")
    for n in names:
        first = statistics.median(report["configs"][n]["replay_first_epoch_seconds"])
        last = statistics.median(report["configs"][n]["replay_last_epoch_seconds"])
        print(f"replay {n}: first epoch from the initial state {first:.2f}s, "
              f"last epoch again {last:.2f}s (medians)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--prior", default="ss-ghs")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--n-train", type=int, default=None, help="fewer training points (faster)")
    parser.add_argument("--replays", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "first_epochs.json")
    args = parser.parse_args(argv)
    report = run(args)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Shrinking while training vs. the full network, vs. a deterministic MLP of the same size.

SS-GHS on Fashion-MNIST, MLP 784-400-400-10, batch 1024, the same number of epochs for

* ``ss-ghs``: :func:`sparse_bnn.train.fit` on the full network every epoch;
* ``ss-ghs+shrink``: :func:`sparse_bnn.sparsify.shrink.fit_shrinking` (units removed for good, the
  network rebuilt smaller when bucketed widths drop);
* ``dense``: a deterministic Flax MLP of the same size, Adam, cross-entropy, one jitted
  ``lax.scan`` per epoch like ``fit``.

Wall-clock is the whole training call, compilation included (shrinking recompiles). Accuracy of
the Bayesian runs is Bayesian model averaging over 10 posterior samples on the test set;
``density`` is the fraction of the dense MLP's weights in the compact (median-probability)
network. Both Bayesian runs use the main job's settings: Adam 3e-3, the indicator logits at
1e-2 (``--indicator-lr``, :func:`sparse_bnn.train.svi_optimizer`), and ``rho_init = -3``. Units
are removed when ``gamma < max(0.05, 2 lambda_l)`` (``--threshold`` sets a fixed value) for
``--patience`` epochs after ``--warmup``.

    python benchmarks/shrink.py --epochs 300 --out benchmarks/results/shrink.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sparse_bnn.data.sources import load_dataset
from sparse_bnn.train import fit, kept_units, svi_optimizer
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets import MLP, FunctionalNet
from sparse_bnn.core.posterior import predict
from sparse_bnn.priors import get_prior
from sparse_bnn.sparsify.shrink import DEFAULT_THRESHOLD, ShrinkSchedule, fit_shrinking

WIDTHS = (400, 400)


def dense_weights(widths, n_in=784, n_out=10) -> int:
    sizes = (n_in, *widths, n_out)
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def train_dense(x, y, x_test, y_test, epochs: int, batch_size: int, lr: float, seed: int) -> dict:
    """Deterministic MLP: softmax cross-entropy, Adam, one jitted scan per epoch."""
    started = time.perf_counter()
    net = MLP(x.shape[1], WIDTHS, 10, rngs=nnx.Rngs(seed))
    functional = FunctionalNet(net)
    params = dict(functional.initial)
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    n = x.shape[0]
    steps = n // batch_size
    x_device, y_device = jnp.asarray(x), jnp.asarray(y)

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(functional.apply(p, xb), yb).mean()

    @jax.jit
    def epoch(p, s, key):
        order = jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)

        def body(carry, index):
            p, s = carry
            value, grads = jax.value_and_grad(loss)(p, x_device[index], y_device[index])
            updates, s = optimizer.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        (p, s), values = jax.lax.scan(body, (p, s), order)
        return p, s, values.mean()

    key = jax.random.PRNGKey(seed)
    for _ in range(epochs):
        key, sub = jax.random.split(key)
        params, opt_state, value = epoch(params, opt_state, sub)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - started
    logits = jax.jit(functional.apply)(params, jnp.asarray(x_test))
    return {"run": "dense", "seconds": seconds, "accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
            "density": 1.0, "widths": list(WIDTHS), "kept": list(WIDTHS), "compilations": 1}


def bayes_summary(name, result, seconds, x_test, y_test, masks) -> dict:
    bnn = result.bnn
    probs = predict(bnn, result.params, x_test, n_samples=10, masks=masks)
    kept = kept_units(bnn, result.params, masks=masks)
    return {"run": name, "seconds": seconds, "accuracy": float(np.mean(np.argmax(probs, -1) == y_test)),
            "density": dense_weights(tuple(kept.values())) / dense_weights(WIDTHS),
            "widths": [l.units for l in bnn.layers[:-1]], "kept": list(kept.values()),
            "compilations": getattr(result, "compilations", 1), "compile_seconds": result.compile_seconds,
            "final_loss": result.history[-1]["loss"] if result.history else None}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--indicator-lr", type=float, default=1e-2)
    parser.add_argument("--rho-init", type=float, default=-3.0)
    parser.add_argument("--warmup", type=int, default=ShrinkSchedule().warmup_epochs)
    parser.add_argument("--patience", type=int, default=ShrinkSchedule().patience)
    parser.add_argument("--threshold", type=float, default=None,
                        help=f"default: max({DEFAULT_THRESHOLD}, 2 lambda_l) per layer")
    parser.add_argument("--bucket", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=None, help="use the first N training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="ss-ghs,ss-ghs+shrink,dense")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")

    data = load_dataset("fashion-mnist", n_train=args.n_train)
    x = data.x_train.reshape(data.x_train.shape[0], -1).astype(np.float32)
    x_test = data.x_test.reshape(data.x_test.shape[0], -1).astype(np.float32)
    y, y_test = data.y_train, data.y_test
    runs = args.runs.split(",")
    rows = []

    def bnn():
        return SparseBNN(MLP(x.shape[1], WIDTHS, 10, rngs=nnx.Rngs(args.seed)), get_prior("ss-ghs"),
                         n_data=x.shape[0], rho_init=args.rho_init)

    optimizer = svi_optimizer(args.lr, args.indicator_lr)
    if "ss-ghs" in runs:
        started = time.perf_counter()
        result = fit(bnn(), x, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
                     seed=args.seed, progress=False)
        jax.block_until_ready(result.params)
        rows.append(bayes_summary("ss-ghs", result, time.perf_counter() - started, x_test, y_test, None))
    if "ss-ghs+shrink" in runs:
        schedule = ShrinkSchedule(warmup_epochs=args.warmup, threshold=args.threshold,
                                  patience=args.patience, bucket=args.bucket)
        started = time.perf_counter()
        result = fit_shrinking(bnn(), x, y, epochs=args.epochs, shrink=schedule, batch_size=args.batch_size,
                               optimizer=optimizer, seed=args.seed, progress=False)
        jax.block_until_ready(result.params)
        row = bayes_summary("ss-ghs+shrink", result, time.perf_counter() - started, x_test, y_test,
                            result.state.masks)
        row["widths_over_epochs"] = [list(r["widths"].values()) for r in result.history]
        row["epoch_seconds"] = [r["seconds"] for r in result.history]
        rows.append(row)
    if "dense" in runs:
        rows.append(train_dense(x, y, x_test, y_test, args.epochs, args.batch_size, args.lr, args.seed))

    report = {"dataset": "fashion-mnist", "n_train": int(x.shape[0]), "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "indicator_lr": args.indicator_lr,
              "rho_init": args.rho_init, "schedule": schedule._asdict() if "ss-ghs+shrink" in runs else None,
              "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "runs": rows}
    print(f"{'run':<15} {'seconds':>8} {'compiles':>8} {'accuracy':>8} {'density':>8}  widths -> kept")
    for r in rows:
        print(f"{r['run']:<15} {r['seconds']:>8.1f} {r['compilations']:>8} {r['accuracy']:>8.4f} "
              f"{r['density']:>8.4f}  {r['widths']} -> {r['kept']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

"""The accuracy-density frontier on Fashion-MNIST: every method along the settings that move density.

One point per (method, setting); each Bayesian point is one
:func:`sparse_bnn.experiment.run.run_experiment`, so its figures are what ``sparse-bnn fit``
reports (BMA accuracy and ECE over posterior samples, compact parameters over dense, compact
forward latency). Methods and the settings swept (``GRID``):

* ``ss-ghs``, ``ss-gl``, ``ss-ig``: the slab scale ``sigma0``, the prior inclusion probability
  and the KL weight ``beta`` (a row with ``kl_weight != 1`` is a *tempered* posterior, labelled so);
* ``bmr-nodewise``, ``bmr-elementwise``: a flat Gaussian model pruned by Bayesian model reduction,
  along the SVI warm-up before the first reduction;
* ``deterministic``: the dense network, softmax cross-entropy, Adam;
* ``group-lasso``: the same deterministic network with a group-lasso penalty on each unit's node
  group (its incoming weights and bias, as the priors group them), trained by proximal Adam (after
  each Adam step every group ``g`` is soft-thresholded by ``lr * penalty * sqrt(|g|)``, so groups
  the data do not hold up become exactly zero) and pruned to the units whose group is not zero,
  along ``penalty``.

All points share the schedule (epochs, batch, learning rates; spike-and-slab and node-wise BMR
shrink while training). Published reference points are drawn on the same axes.

    python benchmarks/frontier.py                                  # MLP 784-400-400-10, 100 epochs
    python benchmarks/frontier.py --methods ss-ghs group-lasso     # a subset
    python benchmarks/frontier.py --quick                          # smoke test: 2,000 images, 2 epochs
    python benchmarks/frontier.py --net vit --epochs 20            # ViT (tiny): SS-GHS, BMR, deterministic

Writes ``benchmarks/results/frontier_<net>.json`` and ``frontier_<net>.png``; run directories go
to ``--runs-dir`` (ignored by git).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sparse_bnn
from sparse_bnn.compact.prune import compact
from sparse_bnn.compact.report import compression_report
from sparse_bnn.data import load_dataset
from sparse_bnn.experiment.config import RunConfig
from sparse_bnn.experiment.run import run_experiment
from sparse_bnn.experiment.sections import NET_SIZES
from sparse_bnn.metrics import ece
from sparse_bnn.nets import NETS, FunctionalNet, net_from_config

RESULTS = Path(__file__).parent / "results"
WIDTHS = [400, 400]
SCHEDULE = {"epochs": 100, "batch_size": 1024, "lr": 3e-3, "indicator_lr": 1e-2, "rho_init": -3.0}
GRID: dict[str, list[dict[str, Any]]] = {
    "ss-ghs": [{"sigma0": 1.0}, {"sigma0": 0.3}, {"sigma0": 0.1}, {"sigma0": 1.0, "inclusion": 0.5},
               {"sigma0": 0.3, "kl_weight": 0.3}, {"sigma0": 0.3, "kl_weight": 0.1}],
    "ss-gl": [{"sigma0": 1.0}, {"sigma0": 0.3}, {"sigma0": 0.3, "kl_weight": 0.3}],
    "ss-ig": [{"sigma0": 1.0}, {"sigma0": 0.3}],
    "bmr-nodewise": [{"bmr_warmup": 5}, {"bmr_warmup": 20}],
    "bmr-elementwise": [{"bmr_warmup": 5}, {"bmr_warmup": 20}],
    "deterministic": [{}],
    "group-lasso": [{"penalty": 0.03}, {"penalty": 0.1}, {"penalty": 0.2}, {"penalty": 0.3}],
}
# The transformers cost tens of times the MLP per epoch on a CPU: one point per method.
TRANSFORMER_GRID: dict[str, list[dict[str, Any]]] = {
    "ss-ghs": [{"sigma0": 1.0}], "bmr-nodewise": [{"bmr_warmup": 5}], "deterministic": [{}]}
TRANSFORMERS = ("vit", "mixer")
# published spike-and-slab reference code, Fashion-MNIST (accuracy, density)
REFERENCES = {"mlp": [("SS-IG, published", 0.8452, 0.0909), ("dense Gaussian, published", 0.8755, 1.0)],
              "lenet5-caffe": [("SS-IG, published", 0.8766, 0.0564), ("dense Gaussian, published", 0.9048, 1.0)]}


def label(method: str, setting: Mapping[str, Any]) -> str:
    """``"ss-ghs sigma0=0.3 beta=0.3 (tempered)"``: the method and what its setting changes."""
    words = [method] + [f"{'beta' if k == 'kl_weight' else k}={v}" for k, v in setting.items()]
    if setting.get("kl_weight", 1.0) != 1.0:
        words.append("(tempered)")
    return " ".join(words)


def run_config(net: str, method: str, setting: Mapping[str, Any], args: argparse.Namespace, out: Path) -> RunConfig:
    """The :class:`RunConfig` of one Bayesian point."""
    if method.startswith("bmr-"):
        prior, bmr = "flat", method.removeprefix("bmr-")
    else:
        prior, bmr = method, "none"
    return RunConfig.flat(
        out=str(out), data="fashion-mnist", net=net, widths=list(WIDTHS), net_size=args.net_size,
        prior=prior, bmr=bmr,
        epochs=args.epochs, batch_size=SCHEDULE["batch_size"], lr=SCHEDULE["lr"],
        indicator_lr=SCHEDULE["indicator_lr"], rho_init=SCHEDULE["rho_init"],
        shrink=bmr != "elementwise", seed=args.seed, n_train=args.n_train, n_test=args.n_test,
        data_dir=args.data_dir, samples=args.samples, latency=True, **dict(setting))


def bayesian_point(net: str, method: str, setting: Mapping[str, Any], args: argparse.Namespace) -> dict:
    out = args.runs_dir / net / label(method, setting).replace(" ", "_").replace("(", "").replace(")", "")
    metrics = run_experiment(run_config(net, method, setting, args, out), overwrite=True, progress=False,
                             log=lambda line: None)
    latency = {row["batch_size"]: row for row in metrics.get("latency", [])}
    return {"accuracy": metrics["compact_bma"]["accuracy"], "ece": metrics["compact_bma"]["ece"],
            "nll": metrics["compact_bma"]["nll"], "density": metrics["params_compact"] / metrics["params_dense"],
            "flops_percent": 100.0 * metrics["flops_compact"] / metrics["flops_dense"],
            "kept_units": metrics["kept_units"], "latency": latency_fields(latency),
            "training_seconds": metrics["training_seconds"], "compile_seconds": metrics["compile_seconds"]}


def latency_fields(latency: Mapping[int, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {str(b): {"dense_s": r["dense_s"], "compact_s": r["compact_s"], "speedup": r["speedup"]}
            for b, r in sorted(latency.items())}


def group_norms(layers, params: Mapping[Any, jax.Array]) -> dict[str, jax.Array]:
    """``{layer: [units]}``: the Euclidean norm of each prunable unit's node group (its members)."""
    norms = {}
    for layer in layers:
        squares = 0.0
        for member in layer.members:
            value = params[member.path]
            axes = tuple(a for a in range(value.ndim) if a != member.axis)
            squares = squares + jnp.sum(jnp.square(value), axis=axes).reshape(-1, layer.units).sum(0) \
                if member.interleave > 1 else squares + jnp.sum(jnp.square(value), axis=axes)
        norms[layer.name] = jnp.sqrt(squares)
    return norms


def group_soft_threshold(layers, params: dict, threshold: float) -> dict:
    """The proximal step of ``threshold * sum_g sqrt(|g|) ||w_g||``: each group scaled by
    ``max(0, 1 - threshold sqrt(|g|) / ||w_g||)``, so weak groups become exactly zero."""
    params = dict(params)
    norms = group_norms(layers, params)
    for layer in layers:
        size = layer.fan_in + 1
        factor = jnp.maximum(0.0, 1.0 - threshold * np.sqrt(size) / jnp.maximum(norms[layer.name], 1e-12))
        for member in layer.members:
            shape = [1] * params[member.path].ndim
            shape[member.axis] = -1
            per_entry = jnp.tile(factor, member.interleave) if member.interleave > 1 else factor
            params[member.path] = params[member.path] * per_entry.reshape(shape)
    return params


def deterministic_point(net_name: str, penalty: float, args: argparse.Namespace, data) -> dict:
    """A deterministic network trained by (proximal) Adam, pruned to its non-zero groups."""
    config = NETS[net_name].default_config(tuple(data.input_shape), data.num_classes, name=net_name,
                                           widths=list(WIDTHS), activation="silu", size=args.net_size)
    net = net_from_config(config, seed=args.seed)
    functional = FunctionalNet(net)
    layers = [layer for layer in net.unit_layers() if layer.prunable]
    params = dict(functional.initial)
    optimizer = optax.adam(SCHEDULE["lr"])
    opt_state = optimizer.init(params)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    batch = min(SCHEDULE["batch_size"], x.shape[0])
    steps = x.shape[0] // batch

    def loss(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(functional.apply(p, xb), yb).mean()

    @jax.jit
    def epoch(p, s, key):
        order = jax.random.permutation(key, x.shape[0])[: steps * batch].reshape(steps, batch)

        def body(carry, index):
            p, s = carry
            grads = jax.grad(loss)(p, x[index], y[index])
            updates, s = optimizer.update(grads, s, p)
            p = optax.apply_updates(p, updates)
            if penalty > 0:
                p = group_soft_threshold(layers, p, SCHEDULE["lr"] * penalty)
            return (p, s), None

        (p, s), _ = jax.lax.scan(body, (p, s), order)
        return p, s

    started = time.perf_counter()
    key = jax.random.PRNGKey(args.seed)
    for _ in range(args.epochs):
        key, sub = jax.random.split(key)
        params, opt_state = epoch(params, opt_state, sub)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - started
    keep = {name: np.asarray(norm > 0) for name, norm in group_norms(layers, params).items()}
    compact_net, compact_params = compact(net, params, keep)
    probs = jax.nn.softmax(FunctionalNet(compact_net).apply(compact_params, jnp.asarray(data.x_test)), axis=-1)
    y_test = jnp.asarray(data.y_test)
    report = compression_report(net, compact_net, keep, data.input_shape)
    return {"accuracy": float(jnp.mean(jnp.argmax(probs, -1) == y_test)), "ece": float(ece(probs, y_test)),
            "nll": float(-jnp.mean(jnp.log(jnp.take_along_axis(probs, y_test[:, None], 1) + 1e-12))),
            "density": report.params_compact / report.params_dense,
            "flops_percent": 100.0 * report.flops_compact / report.flops_dense,
            "kept_units": {name: int(mask.sum()) for name, mask in keep.items()},
            "latency": latency_fields({r.batch_size: {"dense_s": r.dense_s, "compact_s": r.compact_s,
                                                      "speedup": r.speedup} for r in report.latency}),
            "training_seconds": seconds, "compile_seconds": None}


def plot(net: str, rows: list[dict], path: Path) -> Path:
    """Accuracy and ECE against density, and accuracy against compact latency, one curve per method."""
    from matplotlib import ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(15, 4.5))
    FigureCanvasAgg(figure)
    accuracy_density, ece_density, accuracy_latency = figure.subplots(1, 3)
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r for r in rows if r["method"] == method), key=lambda r: r["density"])
        density = [100 * r["density"] for r in points]
        accuracy_density.plot(density, [100 * r["accuracy"] for r in points], "o-", label=method)
        ece_density.plot(density, [r["ece"] for r in points], "o-", label=method)
        latency = [1e3 * r["latency"]["1024"]["compact_s"] for r in points if "1024" in r["latency"]]
        if latency:
            accuracy_latency.plot(latency, [100 * r["accuracy"] for r in points if "1024" in r["latency"]],
                                  "o-", label=method)
    for name, accuracy, density in REFERENCES.get(net, []):
        accuracy_density.plot([100 * density], [100 * accuracy], "k*", markersize=10)
        accuracy_density.annotate(name, (100 * density, 100 * accuracy), xytext=(-6, -12),
                                  textcoords="offset points", ha="right", fontsize="small")
    accuracy_density.set(xscale="log", xlabel="parameters kept (%)", ylabel="test accuracy (%)",
                         title=f"{net}: accuracy against density")
    ece_density.set(xscale="log", xlabel="parameters kept (%)", ylabel="expected calibration error",
                    title=f"{net}: calibration against density")
    accuracy_latency.set(xscale="log", xlabel="compact forward latency at batch 1024 (ms)",
                         ylabel="test accuracy (%)", title=f"{net}: accuracy against latency")
    for axis in (accuracy_density, ece_density, accuracy_latency):
        axis.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    accuracy_latency.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    accuracy_density.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def table(rows: list[dict]) -> str:
    lines = [f"{'point':<44}{'acc %':>7}{'ECE':>7}{'density %':>11}{'FLOPs %':>9}{'speedup':>9}{'train s':>9}"]
    for r in rows:
        speedup = r["latency"].get("1024", {}).get("speedup")
        lines.append(f"{r['label']:<44}{100 * r['accuracy']:>7.2f}{r['ece']:>7.3f}{100 * r['density']:>11.2f}"
                     f"{r['flops_percent']:>9.2f}{(f'{speedup:.2f}x' if speedup else '-'):>9}"
                     f"{r['training_seconds']:>9.1f}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", choices=("mlp", "lenet5-caffe", *TRANSFORMERS), default="mlp")
    parser.add_argument("--net-size", choices=NET_SIZES,
                        help="size of the ViT or MLP-Mixer (default: tiny)")
    parser.add_argument("--methods", nargs="+", choices=list(GRID),
                        help="default: every method (ViT and Mixer: ss-ghs, bmr-nodewise, deterministic)")
    parser.add_argument("--epochs", type=int, default=SCHEDULE["epochs"])
    parser.add_argument("--n-train", type=int, help="subsample the 60,000 training images")
    parser.add_argument("--n-test", type=int, help="subsample the 10,000 test images")
    parser.add_argument("--samples", type=int, default=10, help="posterior samples for BMA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--quick", action="store_true", help="2,000 training images, 2 epochs, one point per method")
    parser.add_argument("--runs-dir", type=Path, default=RESULTS / "tmp" / "frontier")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.epochs, args.samples = args.n_train or 2000, args.n_test or 500, 2, 2
    if args.net_size is not None and args.net not in TRANSFORMERS:
        parser.error(f"--net-size applies to {' and '.join(TRANSFORMERS)}, not {args.net}")
    if args.methods is None:
        args.methods = list(TRANSFORMER_GRID if args.net in TRANSFORMERS else GRID)
    if args.epochs <= 0:
        parser.error(f"--epochs must be positive, got {args.epochs}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = load_dataset("fashion-mnist", data_dir=args.data_dir, n_train=args.n_train, n_test=args.n_test,
                        seed=args.seed)
    rows = []
    grids = {**GRID, **TRANSFORMER_GRID} if args.net in TRANSFORMERS else GRID
    for method in args.methods:
        for setting in grids[method][:1] if args.quick else grids[method]:
            if "bmr_warmup" in setting:  # a short run reduces from its last epoch at the latest
                setting = {**setting, "bmr_warmup": min(setting["bmr_warmup"], args.epochs - 1)}
            started = time.perf_counter()
            if method in ("deterministic", "group-lasso"):
                point = deterministic_point(args.net, float(setting.get("penalty", 0.0)), args, data)
            else:
                point = bayesian_point(args.net, method, setting, args)
            rows.append({"method": method, "setting": dict(setting), "label": label(method, setting),
                         "tempered": setting.get("kl_weight", 1.0) != 1.0, **point})
            print(f"{rows[-1]['label']}: {100 * point['accuracy']:.2f}% at {100 * point['density']:.2f}% density "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
    result = {"command": "python " + " ".join(["benchmarks/frontier.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": platform.platform(), "cpu_count": os.cpu_count(), "device": str(jax.devices()[0]),
              "jax": jax.__version__, "sparse_bnn_version": sparse_bnn.__version__, "net": args.net,
              "widths": WIDTHS if args.net == "mlp" else None, "net_size": args.net_size,
              "schedule": {**SCHEDULE, "epochs": args.epochs},
              "n_train": args.n_train, "n_test": args.n_test, "seed": args.seed,
              "references": REFERENCES.get(args.net, []), "rows": rows}
    if not args.quick:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        stem = args.results_dir / f"frontier_{args.net}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {stem.with_suffix('.json')} and {plot(args.net, rows, stem.with_suffix('.png'))}")
    print(table(rows))
    return result


if __name__ == "__main__":
    main()

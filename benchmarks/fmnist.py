"""Fashion-MNIST: structured-sparsity priors against a dense Gaussian BNN and Bayesian model reduction.

Networks: MLP 784-400-400-10 and LeNet-5-Caffe (conv 20, conv 50, dense 800, 500, 10).
Methods (``--priors``):

* ``ss-gl`` / ``ss-ghs`` / ``ss-ig``: spike-and-slab group lasso / group horseshoe / Gaussian;
* ``gaussian``: dense mean-field Gaussian BNN (no pruning; the baseline);
* ``bmr``: flat model trained with node-wise Bayesian model reduction
  (:func:`sparse_bnn.sparsify.reduction.fit_with_bmr`, ``mode="nodewise"``).

Every (net, method) pair is one :func:`sparse_bnn.experiment.run.run_experiment`, so the numbers are
exactly what ``sparse-bnn fit`` reports: test accuracy, NLL and ECE of Bayesian model averaging
over 10 posterior samples, the same for the compact median-probability network, kept units per
layer, parameter density, FLOPs of the compact network in % of the dense one, measured forward
latency (dense / compact) and training wall-clock.

    python benchmarks/fmnist.py                                  # cpu schedule (minutes per MLP run)
    python benchmarks/fmnist.py --schedule reference             # Adam 1e-3, batch 1024, 1200 epochs
    python benchmarks/fmnist.py --nets mlp --priors ss-ghs --epochs 1 --n-train 2000   # smoke test
    python benchmarks/fmnist.py --nets lenet5-caffe --epochs 30 --indicator-lr 3e-3 --tag x  # variants

Writes ``benchmarks/results/fmnist_<schedule>.json``, ``.md`` (machine, date and schedule
stated) and ``fmnist_<schedule>_*.png``; the run directories go to ``--runs-dir``
(default ``benchmarks/results/tmp/fmnist``, ignored by git).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sparse_bnn.train import LR_SCHEDULES  # noqa: E402
from sparse_bnn.experiment.config import RunConfig, ShrinkConfig  # noqa: E402
from sparse_bnn.experiment.run import run_experiment  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NETS = ("mlp", "lenet5-caffe")
PRIORS = ("ss-gl", "ss-ghs", "ss-ig", "gaussian", "bmr")
MLP_WIDTHS = [400, 400]
SHRINKABLE = ("ss-gl", "ss-ghs", "ss-ig", "bmr")  # bmr: node-wise BMR removes the units it prunes
SCHEDULES = {
    # the main job's settings (docs/tuning.md, "Settings that prune"): minutes per MLP run on 2 CPU cores;
    # spike-and-slab and BMR runs shrink the network while they train
    "cpu": {"epochs": 300, "batch_size": 1024, "lr": 3e-3, "indicator_lr": 1e-2, "rho_init": -3.0,
            "shrink": True},
    # the published comparison (Adam 1e-3, rho_init -6), for accelerators
    "reference": {"epochs": 1200, "batch_size": 1024, "lr": 1e-3},
}


def run_config(net: str, method: str, schedule: dict, args: argparse.Namespace, out: Path) -> RunConfig:
    """The :class:`RunConfig` of one (net, method) pair."""
    prior, bmr = ("flat", "nodewise") if method == "bmr" else (method, "none")
    shrink = bool(schedule.get("shrink")) and method in SHRINKABLE
    return RunConfig.flat(out=str(out), data="fashion-mnist", net=net, widths=list(MLP_WIDTHS), prior=prior,
                          bmr=bmr, epochs=schedule["epochs"], batch_size=schedule["batch_size"],
                          lr=schedule["lr"],
                          **{k: schedule[k] for k in ("indicator_lr", "lr_schedule", "lr_final_fraction", "rho_init",
                                                      "sigma0") if k in schedule},
                          shrink=shrink, **({"shrink_factor": schedule["shrink_factor"]} if shrink else {}),
                          bmr_warmup=schedule.get("bmr_warmup") if bmr != "none" else None, seed=args.seed,
                          data_dir=args.data_dir, n_train=args.n_train,
                          n_test=args.n_test, samples=args.samples, latency=not args.no_latency,
                          download=not args.no_download)


def summarise(net: str, method: str, metrics: dict) -> dict:
    """One table row from a run's ``metrics.json``."""
    latency = {row["batch_size"]: row for row in metrics.get("latency", [])}
    kept = metrics["kept_units"]
    total = metrics["total_units"]
    return {
        "net": net, "method": method,
        "accuracy": metrics["bma"]["accuracy"], "nll": metrics["bma"]["nll"], "ece": metrics["bma"]["ece"],
        "compact_accuracy": metrics["compact"]["accuracy"], "compact_nll": metrics["compact"]["nll"],
        "kept_units": kept, "total_units": total,
        "density": metrics["params_compact"] / metrics["params_dense"],
        "flops_percent": 100.0 * metrics["flops_compact"] / metrics["flops_dense"],
        "latency": {str(b): {"dense_s": r["dense_s"], "compact_s": r["compact_s"], "speedup": r["speedup"]}
                    for b, r in latency.items()},
        "training_seconds": metrics["training_seconds"], "compile_seconds": metrics["compile_seconds"],
        "epochs": metrics["epochs"],
    }


def markdown(rows: list[dict], header: dict) -> str:
    """The results as a markdown table, machine, date and schedule stated above it."""
    lines = [f"# Fashion-MNIST benchmark ({header['schedule']} schedule)", "",
             f"* date: {header['date']}", f"* machine: {header['machine']} ({header['device']}, "
             f"{header['cpu_count']} CPU cores visible)", f"* jax {header['jax']}",
             f"* schedule: {header['settings']}", f"* training examples: {header['n_train'] or 60000}, "
             f"test examples: {header['n_test'] or 10000}", "",
             "Accuracy / NLL / ECE: Bayesian model averaging over posterior samples. Density: compact "
             "parameters / dense parameters. Speedup: dense / compact forward latency at the given batch size.",
             "", "| net | method | acc | NLL | ECE | compact acc | kept units | density | FLOPs % | "
             "speedup (b=1) | speedup (b=batch) | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = " / ".join(f"{r['kept_units'][k]}/{r['total_units'][k]}" for k in r["kept_units"])
        speedups = [v["speedup"] for _, v in sorted(r["latency"].items(), key=lambda kv: int(kv[0]))]
        speed = [f"{s:.2f}x" for s in speedups] + ["-"] * (2 - len(speedups))
        lines.append(f"| {r['net']} | {r['method']} | {r['accuracy']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} | "
                     f"{r['compact_accuracy']:.4f} | {kept} | {r['density']:.4f} | {r['flops_percent']:.2f} | "
                     f"{speed[0]} | {speed[1]} | {r['training_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], stem: Path) -> list[Path]:
    """Accuracy against density, and kept units per layer, one panel per network."""
    paths = []
    nets = sorted({r["net"] for r in rows})
    fig, axes = plt.subplots(1, len(nets), figsize=(5 * len(nets), 4), squeeze=False)
    for ax, net in zip(axes[0], nets):
        for r in (r for r in rows if r["net"] == net):
            ax.scatter(100 * r["density"], r["accuracy"], label=r["method"])
            ax.annotate(r["method"], (100 * r["density"], r["accuracy"]), fontsize="small")
        ax.set(xscale="log", xlabel="parameters kept (%)", ylabel="test accuracy (BMA)", title=net)
    fig.tight_layout()
    paths.append(stem.with_name(stem.name + "_accuracy_density.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(nets), figsize=(5 * len(nets), 4), squeeze=False)
    for ax, net in zip(axes[0], nets):
        net_rows = [r for r in rows if r["net"] == net]
        layers = list(net_rows[0]["kept_units"])
        width = 0.8 / len(net_rows)
        for i, r in enumerate(net_rows):
            ax.bar([j + i * width for j in range(len(layers))], [r["kept_units"][l] for l in layers],
                   width, label=r["method"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))], layers)
        ax.set(yscale="log", ylabel="kept units", title=net)
        ax.legend(fontsize="small")
    fig.tight_layout()
    paths.append(stem.with_name(stem.name + "_kept_units.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="cpu")
    parser.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    parser.add_argument("--priors", nargs="+", choices=PRIORS, default=list(PRIORS))
    parser.add_argument("--epochs", type=int, help="override the schedule's epochs (smoke tests)")
    parser.add_argument("--batch-size", type=int, help="override the schedule's batch size")
    parser.add_argument("--lr", type=float, help="override the schedule's Adam learning rate")
    parser.add_argument("--indicator-lr", type=float, help="override the indicators' learning rate")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="decay the learning rates (default: constant)")
    parser.add_argument("--lr-final-fraction", type=float, help="end of a decaying --lr-schedule (default 0.1)")
    parser.add_argument("--rho-init", type=float, help="override the initial rho of the posterior scales")
    parser.add_argument("--sigma0", type=float, help="slab scale sigma_0 (default: the net's, 1 here)")
    parser.add_argument("--bmr-warmup", type=int,
                        help="SVI epochs before BMR's first reduction (default: fit_with_bmr's, 5)")
    parser.add_argument("--shrink", action=argparse.BooleanOptionalAction,
                        help="override whether spike-and-slab and BMR runs shrink while training")
    parser.add_argument("--shrink-factor", type=float,
                        help="rebuild when a layer's alive units fit in this fraction of its width "
                             "(default: the library's, 0.25; 0.5 until 2026-12-02)")
    parser.add_argument("--n-train", type=int, help="subsample the 60,000 training images")
    parser.add_argument("--n-test", type=int, help="subsample the 10,000 test images")
    parser.add_argument("--samples", type=int, default=10, help="posterior samples for BMA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--runs-dir", type=Path, default=RESULTS / "tmp" / "fmnist")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "n_train", "n_test", "lr", "indicator_lr", "sigma0", "shrink_factor"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.bmr_warmup is not None and args.bmr_warmup < 0:
        parser.error(f"--bmr-warmup must be >= 0, got {args.bmr_warmup}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    schedule = dict(SCHEDULES[args.schedule])
    if args.epochs is not None:
        schedule["epochs"] = args.epochs
    for name in ("batch_size", "lr", "indicator_lr", "lr_schedule", "lr_final_fraction", "rho_init", "sigma0",
                 "shrink", "bmr_warmup", "shrink_factor"):
        if getattr(args, name) is not None:
            schedule[name] = getattr(args, name)
    if schedule.get("shrink"):
        schedule.setdefault("shrink_factor", ShrinkConfig().factor)  # recorded: the default changed
    name = f"fmnist_{args.schedule}{'_' + args.tag if args.tag else ''}"
    header = {"schedule": args.schedule, "settings": schedule,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": platform.platform(), "processor": platform.processor(),
              "cpu_count": os.cpu_count(), "device": str(jax.devices()[0]), "jax": jax.__version__,
              "n_train": args.n_train, "n_test": args.n_test, "seed": args.seed}
    rows = []
    for net in args.nets:
        for method in args.priors:
            out = args.runs_dir / name / f"{net}_{method}"
            print(f"== {net} / {method}: {schedule['epochs']} epochs -> {out}", flush=True)
            metrics = run_experiment(run_config(net, method, schedule, args, out), overwrite=True,
                                     progress=False, log=lambda line: print("  " + line, flush=True))
            rows.append(summarise(net, method, metrics))
            print(f"  accuracy {rows[-1]['accuracy']:.4f}, density {rows[-1]['density']:.4f}, "
                  f"kept {rows[-1]['kept_units']}", flush=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    result = {**header, "rows": rows}
    stem = args.results_dir / name
    stem.with_name(stem.name + ".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_name(stem.name + ".md").write_text(markdown(rows, header))
    for path in plot(rows, stem):
        print(f"wrote {path}")
    print(markdown(rows, header))
    return result


if __name__ == "__main__":
    main()

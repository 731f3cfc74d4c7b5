"""Bayesian model reduction against fully hierarchical SVI on Fashion-MNIST (issue 6).

Methods, each on the same network and data:

* ``map``: deterministic MAP training of the dense net (optax Adam, cross-entropy plus the
  Gaussian ``N(0, 1)`` prior as weight decay);
* ``flat-svi``: mean-field SVI of the flat model (no pruning);
* ``group-horseshoe``: group horseshoe without spike;
* ``bmr-elementwise`` / ``bmr-nodewise``: flat SVI with iterative BMR (:func:`fit_with_bmr`);
* ``ss-gl`` / ``ss-ghs``: spike-and-slab group lasso / group horseshoe;
* ``bmr-nodewise-shrink`` / ``ss-ghs-shrink``: the same, removing pruned units physically while
  training (``fit_with_bmr(shrink=...)`` / ``fit_shrinking``), so later epochs run on a smaller net.

Reports test accuracy, NLL, ECE (Bayesian model averaging over posterior samples), fractions of
weights and units pruned, training wall-clock, and the wall-clock until each method's test
accuracy settled (within 0.5 point of its final value for good; the posterior-mean network is
evaluated on the test set after every epoch, for this curve only); writes JSON + markdown to
``benchmarks/results/`` and a plot of sparsity over epochs and accuracy over wall-clock.

    python benchmarks/bmr_vs_svi.py --quick      # ~2-3 minutes on a CPU: small MLP, subsets
    python benchmarks/bmr_vs_svi.py              # full: 60k images, MLP 400-400 and LeNet-5
    python benchmarks/bmr_vs_svi.py --nets lenet5   # only LeNet-5; the MLP rows already written stay
    python benchmarks/bmr_vs_svi.py --nets mlp --methods bmr-nodewise-shrink ss-ghs-shrink --repeats 3

``--repeats K`` runs every method K times, the methods' order rotating from one round to the
next, and reports the median of each timing (every run's timings are kept in the JSON). One
seed gives the same numbers in every repeat; the wall-clock of a CPU shared with other work
varies by 20% from run to run, so single runs are a poor base for a ratio of times. With both
``bmr-nodewise-shrink`` and ``ss-ghs-shrink`` the JSON and the markdown also give their ratio of
settled times per round (issue 6's target: at most 0.5).

Rows of an earlier run with the same setting (and ``--tag``) are kept unless this run redoes
their net and method, so the table can be filled one network at a time.
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
from sparse_bnn.train import fit, svi_optimizer
from sparse_bnn.metrics import classification_metrics
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets import NETS, MLP
from sparse_bnn.core.posterior import predict
from sparse_bnn.priors import get_prior
from sparse_bnn.sparsify.reduction import fit_with_bmr, resolve_warmup_epochs
from sparse_bnn.sparsify.scores import sparsity
from sparse_bnn.sparsify.shrink import ShrinkSchedule, fit_shrinking

RESULTS = Path(__file__).parent / "results"
METHODS = ("map", "flat-svi", "group-horseshoe", "bmr-elementwise", "bmr-nodewise", "ss-gl", "ss-ghs",
           "bmr-nodewise-shrink", "ss-ghs-shrink")
SETTINGS = {
    "quick": {"n_train": 10000, "n_test": 2000, "epochs": 6, "warmup": 3, "batch_size": 256,
              "mlp_widths": (100, 100), "nets": ("mlp",), "lr": 3e-3, "indicator_lr": 1e-2,
              "rho_init": -3.0, "n_samples": 5},
    # the main job's settings (docs/tuning.md, "Settings that prune")
    # warm-up None: fit_with_bmr's default (docs/tuning.md, "BMR warm-up")
    "full": {"n_train": None, "n_test": None, "epochs": 100, "warmup": None, "batch_size": 1024,
             "mlp_widths": (400, 400), "nets": ("mlp", "lenet5"), "lr": 3e-3, "indicator_lr": 1e-2,
             "rho_init": -3.0, "n_samples": 10},
}


def build_net(name: str, widths, input_shape, num_classes: int, seed: int):
    rngs = nnx.Rngs(seed)
    if name == "mlp":
        return MLP(int(np.prod(input_shape)), widths, num_classes, rngs=rngs)
    return NETS[name](image_size=input_shape[0], in_channels=input_shape[-1], num_classes=num_classes,
                      rngs=rngs)


def train_map(net, data, setting, seed):
    """Plain optax on the dense net: cross-entropy + ||w||^2 / (2 N) (the N(0, 1) prior)."""
    from sparse_bnn.nets import FunctionalNet
    functional = FunctionalNet(net)
    params = functional.initial
    n, batch = data.x_train.shape[0], setting["batch_size"]
    optimizer = optax.adam(setting["lr"])
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    def loss(params, xb, yb):
        logits = functional.apply(params, xb)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return nll + 0.5 * sum(jnp.sum(w**2) for w in params.values()) / n

    @jax.jit
    def epoch(params, opt_state, key):
        steps = n // batch
        order = jax.random.permutation(key, n)[: steps * batch].reshape(steps, batch)

        def body(carry, index):
            params, opt_state = carry
            grads = jax.grad(loss)(params, x[index], y[index])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(body, (params, opt_state), order)[0]

    opt_state, key = optimizer.init(params), jax.random.PRNGKey(seed)
    history = []
    apply = jax.jit(functional.apply)
    x_test = jnp.asarray(data.x_test)
    run_started = time.perf_counter()
    for e in range(setting["epochs"]):
        started = time.perf_counter()
        key, sub = jax.random.split(key)
        params, opt_state = jax.block_until_ready(epoch(params, opt_state, sub))
        seconds = time.perf_counter() - started
        accuracy = float(np.mean(np.argmax(np.asarray(apply(params, x_test)), -1) == data.y_test))
        history.append({"epoch": e + 1, "seconds": seconds, "val_accuracy": accuracy,
                        "elapsed": time.perf_counter() - run_started})
    logits = apply(params, x_test)
    return jax.nn.softmax(logits, -1), history


def run_method(method, net_name, data, setting, seed=0):
    net = build_net(net_name, setting["mlp_widths"], data.input_shape, data.num_classes, seed)
    started = time.perf_counter()
    if method == "map":
        probs, history = train_map(net, data, setting, seed)
        wall = time.perf_counter() - started
        out = {"pruned_weights": 0.0, "pruned_units": 0.0}
    else:
        shrinking = method.endswith("-shrink")
        base = method.removesuffix("-shrink")
        prior = "flat" if base in ("flat-svi", "bmr-elementwise", "bmr-nodewise") else base
        bnn = SparseBNN(net, get_prior(prior), n_data=data.x_train.shape[0], rho_init=setting["rho_init"])
        # the indicator rate only touches spike-and-slab priors' indicator logits
        elapsed = []
        shrink_schedule = ShrinkSchedule(shrink_factor=setting["shrink_factor"])
        common = dict(epochs=setting["epochs"], batch_size=setting["batch_size"], seed=seed,
                      optimizer=svi_optimizer(setting["lr"], setting["indicator_lr"]), progress=False,
                      validation=(data.x_test, data.y_test),
                      callbacks=(lambda epoch, record, state: elapsed.append(time.perf_counter() - started),))
        if base.startswith("bmr-"):
            result = fit_with_bmr(bnn, data.x_train, data.y_train, mode=base[4:],
                                  warmup_epochs=setting["warmup"],
                                  shrink=shrink_schedule if shrinking else None, **common)
        elif shrinking:
            result = fit_shrinking(bnn, data.x_train, data.y_train, shrink=shrink_schedule, **common)
        else:
            result = fit(bnn, data.x_train, data.y_train, **common)
        wall = time.perf_counter() - started
        masks, history = result.state.masks, result.history
        for record, seconds in zip(history, elapsed):
            record["elapsed"] = seconds
        probs = predict(result.bnn, result.params, data.x_test, n_samples=setting["n_samples"], masks=masks)
        out = sparsity(result.bnn, result.params, masks)
        # fractions of the original network (a shrunk run ends on a smaller one)
        total_weights = sum(int(np.prod(shape)) for shape in bnn.shapes.values())
        final_weights = sum(int(np.prod(shape)) for shape in result.bnn.shapes.values())
        units_total = sum(l.units for l in bnn.layers if l.prunable)
        out["pruned_weights"] = 1.0 - (1.0 - out["pruned_weights"]) * final_weights / total_weights
        out["pruned_units"] = 1.0 - sum(out["kept_units"].values()) / units_total
        for record in history:
            record["pruned_units"] = 1.0 - sum(record["kept"].values()) / units_total
        out["compile_seconds"] = result.compile_seconds
        out["bmr_seconds_mean"] = float(np.mean([r["bmr_seconds"] for r in history if r.get("bmr_seconds")])) \
            if base.startswith("bmr-") and not shrinking else None
    metrics = classification_metrics(jnp.asarray(probs), jnp.asarray(data.y_test))
    epoch_seconds = [r["seconds"] for r in history]
    out.update({"method": method, "net": net_name, "accuracy": metrics["accuracy"], "nll": metrics["nll"],
                "ece": metrics["ece"], "wall_seconds": wall, "train_seconds": float(np.sum(epoch_seconds)),
                "epoch_seconds_median": float(np.median(epoch_seconds)),
                "history": [{k: v for k, v in r.items() if k in ("epoch", "pruned_fraction", "pruned_units",
                                                                  "seconds", "bmr_seconds", "kept", "widths",
                                                                  "val_accuracy", "elapsed")}
                            for r in history]})
    out["seconds_to_final_accuracy"] = seconds_to_final_accuracy(history)
    if out.get("bmr_seconds_mean"):
        out["bmr_over_epoch"] = out["bmr_seconds_mean"] / out["epoch_seconds_median"]
    return out


TIMINGS = ("wall_seconds", "train_seconds", "epoch_seconds_median", "seconds_to_final_accuracy", "compile_seconds")
RATIO = ("bmr-nodewise-shrink", "ss-ghs-shrink")  # issue 6: settled time of the first over the second


def median_of_repeats(runs: list[dict]) -> dict:
    """The first run's row with each timing replaced by its median over ``runs`` (every run's
    values kept under ``<timing>_runs``). The runs share a seed, so all else must agree."""
    row = dict(runs[0])
    if len({r["accuracy"] for r in runs}) > 1:
        print(f"warning: {row['method']} gave accuracies {[r['accuracy'] for r in runs]} with one seed", flush=True)
    for timing in TIMINGS:
        values = [r[timing] for r in runs if r.get(timing) is not None]
        if values:
            row[timing], row[f"{timing}_runs"] = float(np.median(values)), values
    row["repeats"] = len(runs)
    return row


def settled_ratios(runs: dict[str, list[dict]]) -> list[float] | None:
    """Per round, the settled time of ``RATIO[0]`` over that of ``RATIO[1]`` (None without both)."""
    if not all(method in runs for method in RATIO):
        return None
    return [a["seconds_to_final_accuracy"] / b["seconds_to_final_accuracy"]
            for a, b in zip(runs[RATIO[0]], runs[RATIO[1]])]


def seconds_to_final_accuracy(history, tolerance=0.005):
    """Wall-clock from the start of training until the posterior-mean network's test accuracy
    (measured after every epoch) is within ``tolerance`` of its final value and stays there."""
    final = history[-1]["val_accuracy"]
    settled = len(history) - 1
    while settled > 0 and history[settled - 1]["val_accuracy"] >= final - tolerance:
        settled -= 1
    return history[settled]["elapsed"]


def merged_rows(path: Path, setting: dict, rows: list[dict]) -> list[dict]:
    """``rows`` after the rows of an earlier run at ``path`` with the same setting that this run
    did not redo (same net and method), in net order."""
    if not path.exists():
        return rows
    earlier = json.loads(path.read_text())
    earlier_setting = {"seed": 0, **earlier.get("setting", {})}  # files before the seed was recorded
    if {k: v for k, v in earlier_setting.items() if k != "nets"} != \
            {k: v for k, v in setting.items() if k != "nets"}:
        print(f"{path} has another setting: its rows are replaced, not merged", flush=True)
        return rows
    redone = {(r["net"], r["method"]) for r in rows}
    kept = [r for r in earlier["rows"] if (r["net"], r["method"]) not in redone]
    if kept:
        print(f"kept {len(kept)} rows of the earlier run in {path}", flush=True)
    order = {net: i for i, net in enumerate(dict.fromkeys(r["net"] for r in kept + rows))}
    return sorted(kept + rows, key=lambda r: order[r["net"]])


def markdown(rows, setting_name, ratios=None):
    lines = [f"# BMR vs SVI on Fashion-MNIST ({setting_name})", "",
             "Accuracy, NLL, ECE: Bayesian model averaging on the test set after training. *Settled*: "
             "wall-clock until the posterior-mean network's test accuracy, measured after every epoch, "
             "is within 0.5 point of its final value for good (training, pruning, recompilations and "
             "the per-epoch evaluation included).", "",
             "| net | method | accuracy | NLL | ECE | weights pruned | units pruned | wall s | train s | settled s "
             "| BMR step / epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{100 * r['bmr_over_epoch']:.3f}%" if r.get("bmr_over_epoch") else "-"
        lines.append(f"| {r['net']} | {r['method']} | {r['accuracy']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} | "
                     f"{r['pruned_weights']:.3f} | {r['pruned_units']:.3f} | {r['wall_seconds']:.1f} | "
                     f"{r['train_seconds']:.1f} | {r['seconds_to_final_accuracy']:.1f} | {ratio} |")
    repeated = [r for r in rows if r.get("repeats", 1) > 1]
    if repeated:
        lines += ["", "Times are medians over the repeats; settled seconds of each run:", ""]
        lines += [f"* {r['net']} {r['method']}: " + ", ".join(f"{s:.1f}" for s in r["seconds_to_final_accuracy_runs"])
                  for r in repeated]
    for net, values in (ratios or {}).items():
        lines += ["", f"{net}: settled time of {RATIO[0]} / {RATIO[1]}, per round: "
                  + ", ".join(f"{v:.2f}" for v in values) + f" (median {np.median(values):.2f})"]
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_w, ax_u, ax_a) = plt.subplots(1, 3, figsize=(15, 3.8))
    for r in rows:
        epochs = [h["epoch"] for h in r["history"]]
        label = f"{r['net']} {r['method']}"
        if all("elapsed" in h for h in r["history"]):
            ax_a.plot([h["elapsed"] for h in r["history"]], [h["val_accuracy"] for h in r["history"]], label=label)
        if any("pruned_fraction" in h for h in r["history"]):
            ax_w.plot(epochs, [h["pruned_fraction"] for h in r["history"]], marker=".", label=label)
        if any("pruned_units" in h for h in r["history"]):
            ax_u.plot(epochs, [h["pruned_units"] for h in r["history"]], marker=".", label=label)
    ax_w.set(xlabel="epoch", ylabel="fraction of weights pruned", title="BMR: weights")
    ax_u.set(xlabel="epoch", ylabel="fraction of units pruned", title="units")
    ax_a.set(xlabel="wall-clock s", ylabel="test accuracy (posterior mean)", title="accuracy over time",
             ylim=(0.75, 0.9))
    ax_u.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small MLP on data subsets (~2-3 min on CPU)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--nets", nargs="+", default=None, help="override the setting's networks")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None,
                        help="SVI epochs before BMR's first reduction (default: fit_with_bmr's, 5; "
                             "--quick: half the epochs)")
    parser.add_argument("--shrink-factor", type=float, default=None,
                        help="the -shrink rows rebuild the network when a layer's width falls to this "
                             "fraction of its physical width (default: ShrinkSchedule's, 0.5)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every method this many times, in rotating order, and report median times")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    name = "quick" if args.quick else "full"
    setting = dict(SETTINGS[name])
    if args.epochs:
        if setting["warmup"] is not None:  # the quick setting's warm-up keeps its share of the schedule
            setting["warmup"] = setting["warmup"] * args.epochs // setting["epochs"]
        setting["epochs"] = args.epochs
    if args.warmup is not None:
        setting["warmup"] = args.warmup
    try:
        setting["warmup"] = resolve_warmup_epochs(setting["warmup"], setting["epochs"])
    except ValueError as error:
        parser.error(f"--warmup: {error}")
    if args.shrink_factor is not None:
        try:
            ShrinkSchedule(shrink_factor=args.shrink_factor).validate()
        except ValueError as error:
            parser.error(f"--shrink-factor: {error}")
    # recorded either way: the default changed (0.5 until 2026-12-02, then 0.25)
    setting["shrink_factor"] = ShrinkSchedule().shrink_factor if args.shrink_factor is None else args.shrink_factor
    nets = [n for n in (args.nets or setting["nets"]) if n == "mlp" or n in NETS]
    data = load_dataset("fashion-mnist", data_dir=args.data_dir, n_train=setting["n_train"],
                        n_test=setting["n_test"], seed=args.seed)
    rows, ratios = [], {}
    for net_name in nets:
        runs: dict[str, list[dict]] = {method: [] for method in args.methods}
        for round_ in range(args.repeats):
            shift = round_ % len(args.methods)  # no method always runs first or last
            for method in args.methods[shift:] + args.methods[:shift]:
                row = run_method(method, net_name, data, setting, args.seed)
                runs[method].append(row)
                print(f"{net_name:8s} {method:16s} acc {row['accuracy']:.4f} nll {row['nll']:.4f} "
                      f"ece {row['ece']:.4f} weights pruned {row['pruned_weights']:.3f} units pruned "
                      f"{row['pruned_units']:.3f} wall {row['wall_seconds']:.1f}s "
                      f"settled {row['seconds_to_final_accuracy']:.1f}s", flush=True)
        rows += [median_of_repeats(runs[method]) for method in args.methods]
        net_ratios = settled_ratios(runs)
        if net_ratios is not None:
            ratios[net_name] = net_ratios
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"bmr_vs_svi_{name}{'_' + args.tag if args.tag else ''}"
    setting_record = {**{k: list(v) if isinstance(v, tuple) else v for k, v in setting.items()},
                      "seed": args.seed}
    json_path = stem.with_name(stem.name + ".json")  # not with_suffix: a dotted --tag would lose its end
    rows = merged_rows(json_path, setting_record, rows)
    info = {"setting": setting_record, "device": str(jax.devices()[0]), "repeats": args.repeats, "rows": rows}
    if ratios:
        info["settled_ratios"] = {"of": list(RATIO), **ratios}
    json_path.write_text(json.dumps(info, indent=1))
    stem.with_name(stem.name + ".md").write_text(markdown(rows, name, ratios))
    plot(rows, stem.with_name(stem.name + "_sparsity.png"))
    print(markdown(rows, name, ratios))


if __name__ == "__main__":
    main()

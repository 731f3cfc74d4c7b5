"""Render the benchmark results pages from the JSON files in benchmarks/results/.

    python scripts/render_results.py            # write RESULTS.md, docs/results.md, README's table
    python scripts/render_results.py --check    # exit 1 if any of them is out of date

One JSON per benchmark configuration; each section states the command, date, machine and library
version the JSON records ("unknown" where an older JSON does not record one). The README's
headline table sits between the markers ``<!-- headline:start -->`` and ``<!-- headline:end -->``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- headline:start -->", "<!-- headline:end -->"
UNKNOWN = "unknown"

METHODS = {"ss-ghs": "SS-GHS", "ss-gl": "SS-GL", "ss-ig": "SS-IG", "gaussian": "dense Gaussian",
           "bmr": "flat + node-wise BMR", "dense": "deterministic"}
SCRIPTS = {"fmnist": "benchmarks/fmnist.py", "bmr_vs_svi": "benchmarks/bmr_vs_svi.py",
           "shrink": "benchmarks/shrink.py", "step_time": "benchmarks/step_time.py",
           "latency": "benchmarks/latency.py", "scaling": "benchmarks/scaling.py",
           "first_epochs": "benchmarks/first_epochs.py", "frontier": "benchmarks/frontier.py"}
# What a JSON cannot say about itself: runs whose timings other jobs on the same cores inflated.
NOTES = {
    "fmnist_cpu_lenet5caffe80_bmr": "training time inflated: the job was paused and shared the cores with other runs",
    "fmnist_cpu_lenet5caffe120_sigma0.3_cosine": "training time inflated: the test suite shared the cores for part of the run",
    "fmnist_cpu_lenet5caffe30_sigma0.1": "training time inflated: ran beside another benchmark",
    "fmnist_cpu_lenet5caffe30_ssgl_sigma0.3": "training time inflated: ran beside another benchmark",
    "fmnist_cpu_lenet5caffe30": "latencies and training times measured while other jobs shared the cores",
    "frontier_mixer": "training times inflated for the first row: another job shared the cores",
    "frontier_vit": "training times inflated: the test suite shared the cores, most of all for the deterministic row",
    "step_time": "step and compile times inflated: measured while a training benchmark and the test suite "
                 "shared the cores (the ratios were measured interleaved)",
}
# Published figures beside ours: the spike-and-slab reference code's Fashion-MNIST logs (1200 epochs).
PUBLISHED = {
    "mlp": [("SS-IG, published (1200 epochs)", 0.8452, 0.0909),
            ("dense Gaussian, published (1200 epochs)", 0.8755, 1.0)],
    "lenet5-caffe": [("SS-IG, published (1200 epochs)", 0.8766, 0.0564),
                     ("dense Gaussian, published (1200 epochs)", 0.9048, 1.0)],
}
# The headline table: (file stem, net, method, label); every figure comes from that JSON.
HEADLINE = {
    "mlp": ("MLP 784-400-400-10, 300 epochs", [
        ("fmnist_cpu_threshold005", "ss-ghs", "SS-GHS, shrinking"),
        ("fmnist_cpu_sigma0.3_cosine_threshold005", "ss-ghs", "SS-GHS, slab 0.3, cosine decay"),
        ("fmnist_cpu_threshold005", "ss-gl", "SS-GL, shrinking"),
        ("fmnist_cpu_threshold005", "ss-ig", "SS-IG, shrinking"),
        ("fmnist_cpu_bmr-warmup5", "bmr", "flat + node-wise BMR, shrinking"),
        ("fmnist_cpu", "gaussian", "dense Gaussian"),
    ], ("shrink_threshold005", "dense")),
    "lenet5-caffe": ("LeNet-5-Caffe (no deterministic run recorded)", [
        ("fmnist_cpu_lenet5caffe30", "ss-ghs", "SS-GHS, 30 epochs"),
        ("fmnist_cpu_lenet5caffe30_sigma0.3", "ss-ghs", "SS-GHS, slab 0.3, 30 epochs"),
        ("fmnist_cpu_lenet5caffe120_sigma0.3_cosine", "ss-ghs", "SS-GHS, slab 0.3, cosine decay, 120 epochs"),
        ("fmnist_cpu_lenet5caffe30_bmr-warmup5", "bmr", "flat + node-wise BMR, 30 epochs"),
        ("fmnist_cpu_lenet5caffe80_bmr", "bmr", "flat + node-wise BMR, 80 epochs"),
        ("fmnist_cpu_lenet5caffe30", "gaussian", "dense Gaussian, 30 epochs"),
    ], None),
}


def load_results(folder: Path = RESULTS) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def family(stem: str) -> str:
    for name in sorted(SCRIPTS, key=len, reverse=True):
        if stem.startswith(name):
            return name
    raise ValueError(f"benchmarks/results/{stem}.json: no renderer for this file name; "
                     f"name it after its script ({', '.join(SCRIPTS)})")


def pct(value: Any, digits: int = 1) -> str:
    return UNKNOWN if value is None else f"{100 * value:.{digits}f}%"


def num(value: Any, digits: int = 3) -> str:
    return UNKNOWN if value is None else f"{value:.{digits}f}"


def provenance(stem: str, data: dict) -> dict[str, str]:
    """Command, date, machine and library version as the JSON records them."""
    machine = data.get("machine") or data.get("platform")
    cores = data.get("cpu_count") or data.get("cpu_cores")
    if machine and cores:
        machine = f"{machine}, {cores} cores"
    command = data.get("command")
    return {"command": f"`{command}`" if command else f"{UNKNOWN} (`{SCRIPTS[family(stem)]}`)",
            "date": data.get("date") or UNKNOWN, "machine": machine or UNKNOWN,
            "version": data.get("sparse_bnn_version") or UNKNOWN,
            "jax": data.get("jax") or data.get("jax_version") or UNKNOWN,
            "device": str(data.get("device") or data.get("backend") or UNKNOWN)}


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def speedup(row: dict, batch: str = "1024") -> str:
    latency = row.get("latency", {}).get(batch)
    return f"{latency['speedup']:.1f}x" if latency else UNKNOWN


def kept(units: Any) -> str:
    if isinstance(units, dict):
        return " + ".join(str(v) for v in units.values())
    if isinstance(units, list):
        return " + ".join(map(str, units))
    return UNKNOWN


def fmnist_rows(data: dict) -> list[str]:
    rows = [[r["net"], METHODS.get(r["method"], r["method"]), pct(r["accuracy"]), num(r.get("nll")),
             num(r.get("ece")), pct(r.get("compact_accuracy")), kept(r.get("kept_units")),
             density(r["density"]), num(r.get("flops_percent"), 1) + "%", speedup(r),
             num(r.get("training_seconds"), 0), str(r.get("epochs", UNKNOWN))] for r in data["rows"]]
    settings = ", ".join(f"{k}={v}" for k, v in data.get("settings", {}).items())
    return [f"Schedule `{data.get('schedule', UNKNOWN)}`: {settings}.", "",
            *table(["net", "method", "accuracy", "NLL", "ECE", "compact acc", "kept units", "density",
                    "FLOPs", "speedup @1024", "train s", "epochs"], rows)]


def bmr_vs_svi_rows(data: dict) -> list[str]:
    rows = [[r["net"], r["method"], pct(r["accuracy"]), num(r.get("nll")), num(r.get("ece")),
             pct(r.get("pruned_weights")), pct(r.get("pruned_units")), num(r.get("train_seconds"), 1),
             num(r.get("seconds_to_final_accuracy"), 1)] for r in data["rows"]]
    settings = ", ".join(f"{k}={v}" for k, v in data.get("setting", {}).items())
    lines = [f"Settings: {settings}.", "",
             *table(["net", "method", "accuracy", "NLL", "ECE", "weights pruned", "units pruned",
                     "train s", "settled s"], rows)]
    ratios = data.get("settled_ratios")
    if ratios:
        of = " / ".join(ratios.get("of", []))
        for net, values in ratios.items():
            if net != "of":
                lines += ["", f"Settled-time ratio {of} ({net}, {len(values)} rounds): "
                              + ", ".join(f"{v:.2f}" for v in values)]
    return lines


def shrink_rows(data: dict) -> list[str]:
    rows = [[METHODS.get(r["run"], r["run"]), num(r.get("seconds"), 1), pct(r.get("accuracy")),
             pct(r.get("density"), 2), kept(r.get("kept")), str(r.get("compilations", UNKNOWN))]
            for r in data["runs"]]
    return [f"{data.get('dataset', UNKNOWN)}, {data.get('epochs', UNKNOWN)} epochs, batch "
            f"{data.get('batch_size', UNKNOWN)}, Adam {data.get('lr', UNKNOWN)} / indicators "
            f"{data.get('indicator_lr', UNKNOWN)}, rho_init {data.get('rho_init', UNKNOWN)}.", "",
            *table(["run", "training s", "accuracy", "density", "kept units", "compilations"], rows)]


def step_time_rows(data: dict) -> list[str]:
    rows = [[name, num(r.get("ms_per_step"), 2), num(r.get("ratio_to_deterministic"), 2) + "x"]
            for name, r in data["results"].items()]
    return [f"Net `{data.get('net', UNKNOWN)}`, batch {data.get('batch_size', UNKNOWN)}, "
            f"{data.get('rounds', UNKNOWN)} rounds (median), weight-noise generator of the comparison "
            f"`{data.get('rng', UNKNOWN)}`.", "",
            *table(["configuration", "ms per step", "vs deterministic"], rows), *step_time_compile_rows(data)]


def step_time_compile_rows(data: dict) -> list[str]:
    """The epoch's compile seconds in fresh processes, cold and warm persistent cache (medians)."""
    compile_ = data.get("compile")
    if not compile_:
        return []
    rows = [[name, num(r.get("cold_compile_s"), 2), num(r.get("warm_compile_s"), 2),
             num(r.get("cold_ratio_to_deterministic", 1.0), 2) + "x", num(r.get("warm_ratio_to_deterministic", 1.0), 2) + "x"]
            for name, r in compile_["configs"].items()]
    return ["", f"Compiling the epoch in a fresh process, median of {compile_.get('repeats', UNKNOWN)}: cold "
                "(empty persistent compilation cache) and warm (a second process on the cache the first filled).", "",
            *table(["epoch", "cold compile s", "warm compile s", "cold vs deterministic", "warm vs deterministic"], rows)]


def latency_rows(data: dict) -> list[str]:
    rows = [[pct(r["density"], 0), str(r["batch_size"]), num(r.get("dense_ms"), 3), num(r.get("compact_ms"), 3),
             f"{r['speedup']:.2f}x", f"{r['flop_ratio']:.2f}x"] for r in data["rows"]]
    return [f"{data.get('title', 'MLP 784-400-400-10')}: dense network against compact networks of "
            f"the given parameter density.", "",
            *table(["density", "batch", "dense ms", "compact ms", "speedup", "FLOP ratio"], rows)]


def scaling_rows(data: dict) -> list[str]:
    rows = [[r["scheme"], str(r["devices"]), r["mode"], num(r.get("ms_per_step"), 2),
             num(r.get("overhead"), 2) + "x", f"{r.get('max_loss_difference', 0):.1e}"] for r in data["rows"]]
    return [str(data.get("device", "")), "",
            *table(["scheme", "devices", "data", "ms per step", "vs 1 device", "max loss difference"], rows)]


def first_epochs_rows(data: dict) -> list[str]:
    rows = []
    for name, r in data["configs"].items():
        epochs = r["epochs"]
        replay = r.get("replay_first_epoch_seconds") or []
        rows.append([name, num(r.get("compile_seconds"), 2), num(epochs[0]["seconds"], 3),
                     num(epochs[-1]["seconds"], 3), num(min(replay), 3) if replay else UNKNOWN])
    return [f"{data.get('data', UNKNOWN)}, batch {data.get('batch_size', UNKNOWN)}, "
            f"{data.get('steps_per_epoch', UNKNOWN)} steps per epoch.", "",
            *table(["configuration", "compile s", "first epoch s", "last epoch s", "first epoch replayed s"], rows)]


def frontier_rows(data: dict) -> list[str]:
    """One row per point; a tempered posterior (``kl_weight != 1``) says so in its label."""
    rows = [[r["label"], pct(r["accuracy"]), num(r.get("ece")), density(r["density"]),
             num(r.get("flops_percent"), 1) + "%", speedup(r), num(r.get("training_seconds"), 0)]
            for r in sorted(data["rows"], key=lambda r: (r["method"], -r["density"]))]
    rows += [[f"{name} (reference)", pct(accuracy), UNKNOWN, density(share), UNKNOWN, UNKNOWN, UNKNOWN]
             for name, accuracy, share in data.get("references", [])]
    schedule = ", ".join(f"{k}={v}" for k, v in data.get("schedule", {}).items())
    size = f" ({data['net_size'] or 'tiny'})" if data.get("net") in ("vit", "mixer") else ""
    return [f"Net `{data.get('net', UNKNOWN)}`{size}, {schedule}. Accuracy and ECE: the compact network's "
            "Bayesian model average (deterministic rows: the compact network itself). `beta` is the KL "
            "weight; a row marked (tempered) is not the posterior of its prior.", "",
            *table(["point", "accuracy", "ECE", "density", "FLOPs", "speedup @1024", "train s"], rows)]


RENDERERS: dict[str, Callable[[dict], list[str]]] = {
    "fmnist": fmnist_rows, "bmr_vs_svi": bmr_vs_svi_rows, "shrink": shrink_rows, "step_time": step_time_rows,
    "latency": latency_rows, "scaling": scaling_rows, "first_epochs": first_epochs_rows,
    "frontier": frontier_rows}


def find_row(results: dict[str, dict], stem: str, net: str | None, method: str) -> dict:
    data = results.get(stem)
    if data is None:
        raise KeyError(f"the headline table needs benchmarks/results/{stem}.json, which is missing")
    for row in data.get("rows", data.get("runs", [])):
        if row.get("method", row.get("run")) == method and (net is None or row.get("net", net) == net):
            return row
    raise KeyError(f"benchmarks/results/{stem}.json has no row {net}/{method}")


def headline(results: dict[str, dict]) -> str:
    """The README's tables, one per network: our methods, then the published rows beside them."""
    lines: list[str] = []
    for net, (title, entries, deterministic) in HEADLINE.items():
        base = find_row(results, deterministic[0], None, deterministic[1]) if deterministic else None
        base_seconds = base.get("seconds") if base else None
        lines += ["" if lines else None, f"**{title}**", "",
                  "| method | accuracy | ECE | density | FLOPs | speedup | training | vs deterministic |",
                  "|---|---|---|---|---|---|---|---|"]
        for stem, method, label in entries:
            row = find_row(results, stem, net, method)
            seconds = row.get("training_seconds")
            ratio = f"{seconds / base_seconds:.2f}x" if seconds and base_seconds else UNKNOWN
            lines.append(f"| {label} | {pct(row['accuracy'])} | {num(row.get('ece'))} | "
                         f"{density(row['density'])} | {num(row.get('flops_percent'), 1)}% | {speedup(row)} | "
                         f"{num(seconds, 0)} s | {ratio} |")
        if base is not None:
            lines.append(f"| deterministic network | {pct(base['accuracy'])} | {UNKNOWN} | 100% | 100% | 1.0x | "
                         f"{num(base_seconds, 0)} s | 1.00x |")
        for label, accuracy, published_density in PUBLISHED[net]:
            lines.append(f"| {label} | {pct(accuracy, 2)} | - | {density(published_density)} | - | - | - | - |")
    return "\n".join(line for line in lines if line is not None)


def density(value: float) -> str:
    return "100%" if value >= 1.0 else pct(value, 2)


def headline_sources() -> list[str]:
    stems = []
    for _, entries, deterministic in HEADLINE.values():
        stems += [stem for stem, _, _ in entries] + ([deterministic[0]] if deterministic else [])
    return sorted(set(stems))


def results_page(results: dict[str, dict]) -> str:
    lines = ["# Benchmark results", "",
             "Rendered by `python scripts/render_results.py` from the JSON files in `benchmarks/results/`, "
             "one per benchmark configuration; `tests/test_results_pages.py` fails when this page and "
             "the JSONs disagree. Each section names the command, date, machine and library version its "
             "JSON records, and says \"unknown\" where an older JSON does not record one. Accuracy, NLL "
             "and ECE are those of Bayesian model averaging on the test set unless a column says otherwise; "
             "density is the compact network's parameters over the dense network's.", "",
             "## Headline: Fashion-MNIST", "",
             "The README's table. Training times come from separate runs (see each source below), so "
             "compare them across rows with care; \"vs deterministic\" divides by the training time of a "
             "deterministic network of the same architecture and epochs where a JSON holds one. The "
             "published rows are the spike-and-slab reference code's Fashion-MNIST logs.", "",
             headline(results), "",
             "Sources: " + ", ".join(f"`{stem}.json`" for stem in headline_sources()) + ".", "",
             "## All configurations", ""]
    index = []
    for stem, data in results.items():
        p = provenance(stem, data)
        index.append([f"`{stem}`", p["command"], p["date"], p["machine"], p["version"]])
    lines += table(["result", "command", "date", "machine", "sparse_bnn"], index)
    for stem, data in results.items():
        p = provenance(stem, data)
        lines += ["", f"### {stem}", "",
                  f"`benchmarks/results/{stem}.json`: command {p['command']}; date {p['date']}; machine "
                  f"{p['machine']}; device {p['device']}; sparse_bnn {p['version']}; JAX {p['jax']}.", ""]
        if stem in NOTES:
            lines += [f"Note: {NOTES[stem]}.", ""]
        lines += RENDERERS[family(stem)](data)
    return "\n".join(lines) + "\n"


def readme_with_headline(readme: str, results: dict[str, dict]) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"README.md needs the markers {START} and {END} around the headline table")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{headline(results)}\n{END}{tail}"


def rendered(root: Path = ROOT) -> dict[Path, str]:
    """``{file: its up-to-date text}`` for every file this script writes."""
    results = load_results(root / "benchmarks" / "results")
    page = results_page(results)
    readme = root / "README.md"
    return {root / "RESULTS.md": page, root / "docs" / "results.md": page,
            readme: readme_with_headline(readme.read_text(), results)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print("out of date (run python scripts/render_results.py): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

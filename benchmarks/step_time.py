"""Steady-state time of one SVI step per prior, against a deterministic Flax NNX + Optax step.

Every step runs as ``sparse_bnn.train`` runs it: ``fit.make_step`` inside ``fit.make_epoch``'s
jitted ``lax.scan`` over an epoch of ``K`` minibatches; we time whole epochs and divide by ``K``.
The deterministic baseline is the same network as a point estimate (same forward pass, softmax
cross-entropy, ``optax.adam(1e-3)``) in the same kind of jitted ``lax.scan`` epoch (same
shuffling and minibatch gather). Runs of all configurations are interleaved round by round, so
machine noise (other processes on shared cores) hits them alike; we report medians, and the
ratio to the deterministic step is the median of the per-round ratios.

    python benchmarks/step_time.py                # MLP 784-400-400-10, batch 1024, all priors
    python benchmarks/step_time.py --quick        # fewer rounds and steps
    python benchmarks/step_time.py --net lenet5-caffe --priors ss-ghs ss-gl gaussian
    python benchmarks/step_time.py --net resnet20 --priors ss-ghs ss-gl gaussian --quick   # batch 128
    python benchmarks/step_time.py --also-rng threefry-nonpartitionable   # extra rows, another RNG
    python benchmarks/step_time.py --compare-noise   # extra rows: the guide's noise from threefry
    python benchmarks/step_time.py --net lenet5-caffe --compare-conv-gradient   # extra rows: lax's

Weight noise: the rows of ``--priors`` draw the guide's weight noise as the library does by
default (``SparseBNN(weight_noise="hash")``, ``sparse_bnn.core.noise``); ``--compare-noise`` adds, for
``--also-rng-priors``, rows with ``weight_noise="threefry"`` (``jax.random.normal``) and with
threefry hashing once per two normals (``partitionable_noise=False``).

Conv gradients: conv nets run ``sparse_bnn.nets.conv``'s loop-friendly CPU gradient;
``--compare-conv-gradient`` adds rows (deterministic and ``--also-rng-priors``) traced with
``lax.conv_general_dilated``'s own gradient, which XLA:CPU runs ~20x slower inside the epoch's scan.

RNG settings (JAX's global PRNG, which also shuffles and keys every site):
``threefry`` is JAX's default (partitionable threefry); ``threefry-nonpartitionable`` sets
``jax_threefry_partitionable=False`` (one 64-bit hash per two numbers instead of one per number);
``rbg``/``unsafe_rbg`` set ``jax_default_prng_impl`` (XLA's RngBitGenerator; very slow on CPU).

Compile time: besides each row's in-process ``compile_seconds`` (no persistent cache), the
deterministic and the ``--compile-priors`` epochs are compiled again in fresh processes, each
``--compile-repeats`` times: *cold* with an empty persistent compilation cache folder
(:mod:`sparse_bnn.compile_cache`), then *warm*, a second process on the folder the first filled.
``compile`` in the JSON holds their medians and the median ratio of each prior to the
deterministic epoch; ``--no-compile-check`` skips them.

Writes ``benchmarks/results/step_time.json`` for the MLP and ``step_time_<net>.json`` for the
other nets (or ``--out``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sparse_bnn
from sparse_bnn import train as fit_lib
from sparse_bnn.core.model import SparseBNN
from sparse_bnn.nets import MLP, NETS
from sparse_bnn.nets.base import FunctionalNet
from sparse_bnn.nets.conv import conv_gradient
from sparse_bnn.priors import PRIORS, get_prior

RESULTS = Path(__file__).parent / "results"

# name -> (constructor(rngs), input shape of one example, batch size, number of classes)
BENCH_NETS: dict[str, tuple[Callable[[nnx.Rngs], nnx.Module], tuple[int, ...], int, int]] = {
    "mlp": (lambda rngs: MLP(784, (400, 400), 10, rngs=rngs), (28, 28, 1), 1024, 10),
    "lenet5-caffe": (lambda rngs: NETS["lenet5-caffe"](rngs=rngs), (28, 28, 1), 1024, 10),
    "lenet5": (lambda rngs: NETS["lenet5"](rngs=rngs), (28, 28, 1), 1024, 10),
    "resnet20": (lambda rngs: NETS["resnet20"](depth=20, rngs=rngs), (32, 32, 3), 128, 10),
}


RNG_SETTINGS = {
    "threefry": {},
    "threefry-nonpartitionable": {"jax_threefry_partitionable": False},
    "rbg": {"jax_default_prng_impl": "rbg"},
    "unsafe_rbg": {"jax_default_prng_impl": "unsafe_rbg"},
}


@contextmanager
def rng_setting(name: str):
    """Trace, lower and initialise keys under one of :data:`RNG_SETTINGS` (restored after)."""
    changes = RNG_SETTINGS[name]
    saved = {option: getattr(jax.config, option) for option in changes}
    for option, value in changes.items():
        jax.config.update(option, value)
    try:
        yield
    finally:
        for option, value in saved.items():
            jax.config.update(option, value)


def random_data(n: int, input_shape: tuple[int, ...], classes: int, seed: int = 0):
    """Standard-normal inputs ``[n, *input_shape]`` and uniform labels ``[n]`` (the data's shape)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *input_shape)).astype(np.float32), rng.integers(0, classes, n).astype(np.int32)


def svi_epoch(net: nnx.Module, prior_name: str, n_data: int, batch_size: int, seed: int = 0, **options):
    """``(jitted epoch fn, initial TrainState)`` for one prior, exactly as ``fit`` builds them;
    ``options`` go to :class:`SparseBNN`."""
    bnn = SparseBNN(net, get_prior(prior_name), n_data=n_data, **options)
    optimizer = optax.adam(1e-3)
    step = fit_lib.make_step(bnn, optimizer)
    epoch = jax.jit(fit_lib.make_epoch(step, n_data, batch_size), donate_argnums=0)
    return epoch, fit_lib.init_state(bnn, optimizer, seed)


class DeterministicState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    rng_key: jax.Array


def deterministic_epoch(net: nnx.Module, n_data: int, batch_size: int, seed: int = 0):
    """The baseline: the same network as a point estimate, Adam on softmax cross-entropy,
    an epoch as one ``lax.scan`` with the same shuffle and gather as :func:`fit.make_epoch`."""
    functional = FunctionalNet(net)
    optimizer = optax.adam(1e-3)
    steps = n_data // batch_size

    def loss(params, x, y):
        logits = functional.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grad_fn = jax.value_and_grad(loss)

    def epoch(state: DeterministicState, x, y):
        key, shuffle_key, next_key = jax.random.split(state.rng_key, 3)
        order = jax.random.permutation(shuffle_key, n_data)[: steps * batch_size].reshape(steps, batch_size)

        def body(carry, index):
            params, opt_state = carry
            value, grads = grad_fn(params, x[index], y[index])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        (params, opt_state), losses = jax.lax.scan(body, (state.params, state.opt_state), order)
        return DeterministicState(params, opt_state, next_key), jnp.mean(losses)

    params = {k: jnp.asarray(v, jnp.float32) for k, v in functional.initial.items()}
    state = DeterministicState(params, optimizer.init(params), jax.random.PRNGKey(seed))
    return jax.jit(epoch, donate_argnums=0), state


def run(args) -> dict:
    make_net, input_shape, batch_size, classes = BENCH_NETS[args.net]
    batch_size = args.batch_size or batch_size
    n_data = args.steps * batch_size
    x, y = random_data(n_data, input_shape, classes)
    x, y = jnp.asarray(x), jnp.asarray(y)

    # name -> (rng setting, builder of (jitted epoch fn, initial state))
    builders: dict[str, tuple[str, Callable]] = {
        "deterministic": (args.rng, lambda: deterministic_epoch(make_net(nnx.Rngs(0)), n_data, batch_size))}
    for prior in args.priors:
        builders[prior] = (args.rng, lambda prior=prior: svi_epoch(make_net(nnx.Rngs(0)), prior, n_data, batch_size))
    if args.compare_noise:
        for prior in args.also_rng_priors:
            for label, options in (("threefry", {}), ("threefry, pairwise", {"partitionable_noise": False})):
                builders[f"{prior} [{label}]"] = (args.rng, lambda prior=prior, options=options: svi_epoch(
                    make_net(nnx.Rngs(0)), prior, n_data, batch_size, weight_noise="threefry", **options))
    for rng in args.also_rng:
        for prior in args.also_rng_priors:
            builders[f"{prior} [{rng}]"] = (rng, lambda prior=prior: svi_epoch(
                make_net(nnx.Rngs(0)), prior, n_data, batch_size))
    lax_gradient_rows = []  # traced with lax's own conv gradient
    if args.compare_conv_gradient:
        builders["deterministic [lax conv gradient]"] = builders["deterministic"]
        for prior in args.also_rng_priors:
            builders[f"{prior} [lax conv gradient]"] = (args.rng, lambda prior=prior: svi_epoch(
                make_net(nnx.Rngs(0)), prior, n_data, batch_size))
        lax_gradient_rows = [name for name in builders if name.endswith("[lax conv gradient]")]

    compiled, states, compile_seconds = {}, {}, {}
    for name, (rng, build) in builders.items():
        with rng_setting(rng), conv_gradient("lax" if name in lax_gradient_rows else "auto"):
            epoch, state = build()
            started = time.perf_counter()
            compiled[name] = epoch.lower(state, x, y).compile()
            compile_seconds[name] = time.perf_counter() - started
        states[name] = state
        for _ in range(args.warmup):  # past the first epochs (see first_epochs.py)
            states[name] = jax.block_until_ready(compiled[name](states[name], x, y))[0]
        print(f"compiled {name} in {compile_seconds[name]:.1f}s", flush=True)

    seconds: dict[str, list[float]] = {name: [] for name in compiled}
    names = list(compiled)
    for round_ in range(args.rounds):
        # Rotate the order each round so that no configuration always runs first or last.
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            states[name] = jax.block_until_ready(compiled[name](states[name], x, y))[0]
            seconds[name].append(time.perf_counter() - started)

    baseline = seconds["deterministic"]
    results = {}
    for name in names:
        per_step = [s / args.steps for s in seconds[name]]
        ratios = [s / b for s, b in zip(seconds[name], baseline)]
        ms = 1e3 * statistics.median(per_step)
        results[name] = {"ms_per_step": ms, "steps_per_s": 1e3 / ms,
                         "ratio_to_deterministic": statistics.median(ratios),
                         "ms_per_step_all_rounds": [1e3 * s for s in per_step],
                         "compile_seconds": compile_seconds[name]}
    return {"net": args.net, "batch_size": batch_size, "steps_per_epoch": args.steps,
            "rounds": args.rounds, "warmup_epochs": args.warmup, "rng": args.rng,
            "jax": jax.__version__, "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "backend": jax.default_backend(), "results": results}


def compile_once(args) -> dict:
    """Lower and compile the epoch of ``args.compile_only`` in this process (a fresh one, with the
    persistent cache that ``SPARSE_BNN_COMPILE_CACHE`` names); seconds of each phase."""
    from sparse_bnn.compile_cache import setup_compile_cache
    setup_compile_cache()
    make_net, input_shape, batch_size, classes = BENCH_NETS[args.net]
    batch_size = args.batch_size or batch_size
    n_data = args.steps * batch_size
    x, y = (jnp.asarray(a) for a in random_data(n_data, input_shape, classes))
    with rng_setting(args.rng):
        if args.compile_only == "deterministic":
            epoch, state = deterministic_epoch(make_net(nnx.Rngs(0)), n_data, batch_size)
        else:
            epoch, state = svi_epoch(make_net(nnx.Rngs(0)), args.compile_only, n_data, batch_size)
        started = time.perf_counter()
        lowered = epoch.lower(state, x, y)
        lowered_at, cpu_started = time.perf_counter(), time.process_time()
        lowered.compile()
        return {"lower_s": lowered_at - started, "compile_s": time.perf_counter() - lowered_at,
                "compile_cpu_s": time.process_time() - cpu_started}


def compile_in_subprocess(args, name: str, cache: str) -> dict:
    command = [sys.executable, __file__, "--net", args.net, "--steps", str(args.steps), "--rng", args.rng,
               "--compile-only", name] + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env={**os.environ, "SPARSE_BNN_COMPILE_CACHE": cache})
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_report(args) -> dict:
    """Cold and warm compile seconds of the deterministic and ``args.compile_priors`` epochs, each
    in a fresh process (module docstring), ``args.compile_repeats`` times, interleaved."""
    names = ["deterministic", *args.compile_priors]
    runs: dict[str, dict[str, list[dict]]] = {name: {"cold": [], "warm": []} for name in names}
    for _ in range(args.compile_repeats):
        for name in names:
            with tempfile.TemporaryDirectory(prefix="step_time_cache_") as cache:
                for phase in ("cold", "warm"):
                    runs[name][phase].append(compile_in_subprocess(args, name, cache))
        print("compile times: " + ", ".join(f"{name} cold {runs[name]['cold'][-1]['compile_s']:.2f}s "
                                            f"warm {runs[name]['warm'][-1]['compile_s']:.2f}s" for name in names),
              flush=True)
    def median(phase, name, key="compile_s"):
        return statistics.median(r[key] for r in runs[name][phase])

    report = {"repeats": args.compile_repeats, "configs": {}}
    for name in names:
        entry = {f"{phase}_{key}": median(phase, name, key) for phase in ("cold", "warm")
                 for key in ("compile_s", "compile_cpu_s", "lower_s")}
        entry["all_runs"] = runs[name]
        if name != "deterministic":
            for phase in ("cold", "warm"):
                entry[f"{phase}_ratio_to_deterministic"] = statistics.median(
                    r["compile_s"] / b["compile_s"] for r, b in zip(runs[name][phase], runs["deterministic"][phase]))
        report["configs"][name] = entry
    return report


def print_table(report: dict) -> None:
    print(f"\n{report['net']}, batch {report['batch_size']}, {report['steps_per_epoch']} steps/epoch, "
          f"{report['rounds']} interleaved rounds, rng {report['rng']}, {report['backend']}")
    print(f"{'config':<40}{'ms/step':>10}{'steps/s':>10}{'ratio':>8}{'compile s':>11}")
    for name, r in report["results"].items():
        print(f"{name:<40}{r['ms_per_step']:>10.2f}{r['steps_per_s']:>10.1f}"
              f"{r['ratio_to_deterministic']:>8.2f}{r['compile_seconds']:>11.1f}")
    if "compile" in report:
        print(f"\n{'epoch compile, fresh process':<30}{'cold s':>9}{'warm s':>9}{'cold ratio':>12}{'warm ratio':>12}")
        for name, r in report["compile"]["configs"].items():
            print(f"{name:<30}{r['cold_compile_s']:>9.2f}{r['warm_compile_s']:>9.2f}"
                  f"{r.get('cold_ratio_to_deterministic', 1.0):>12.2f}{r.get('warm_ratio_to_deterministic', 1.0):>12.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", default="mlp", choices=sorted(BENCH_NETS))
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=list(PRIORS))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the net's own")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed epochs per config")
    parser.add_argument("--warmup", type=int, default=2, help="untimed epochs per config first")
    parser.add_argument("--rng", default="threefry", choices=list(RNG_SETTINGS), help="for every row")
    parser.add_argument("--also-rng", nargs="*", default=[], choices=list(RNG_SETTINGS),
                        help="extra rows: --also-rng-priors under these RNG settings")
    parser.add_argument("--compare-noise", action="store_true",
                        help="extra rows: --also-rng-priors with weight_noise='threefry' (pairwise or not)")
    parser.add_argument("--compare-conv-gradient", action="store_true",
                        help="extra rows: deterministic and --also-rng-priors with lax's conv gradient")
    parser.add_argument("--also-rng-priors", nargs="+", default=["ss-ghs", "ss-gl"], choices=list(PRIORS))
    parser.add_argument("--compile-priors", nargs="*", default=["ss-ghs"], choices=list(PRIORS),
                        help="priors whose cold and warm compile times are measured in fresh processes")
    parser.add_argument("--compile-repeats", type=int, default=3, help="fresh-process compiles per config and phase")
    parser.add_argument("--no-compile-check", action="store_true", help="skip the fresh-process compile times")
    parser.add_argument("--compile-only", default=None, help=argparse.SUPPRESS)  # internal: one subprocess
    parser.add_argument("--quick", action="store_true", help="10 steps, 3 rounds, 1 warm-up epoch")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: results/step_time.json (mlp), results/step_time_<net>.json")
    args = parser.parse_args(argv)
    if args.compile_only:
        print(json.dumps(compile_once(args)))
        return
    if args.quick:
        args.steps, args.rounds, args.warmup = 10, 3, 1
    if args.out is None:
        args.out = RESULTS / ("step_time.json" if args.net == "mlp" else f"step_time_{args.net}.json")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = {"command": "python " + " ".join(["benchmarks/step_time.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": started, "sparse_bnn_version": sparse_bnn.__version__, **run(args)}
    if not args.no_compile_check:
        report["compile"] = compile_report(args)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

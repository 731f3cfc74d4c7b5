"""``sparse-bnn``: fit, evaluate and report structurally sparse BNNs from the command line.

    sparse-bnn fit --data fashion-mnist --net mlp --widths 400,400 --prior ss-ghs \\
        --epochs 20 --out runs/fmnist
    sparse-bnn evaluate runs/fmnist
    sparse-bnn report runs/fmnist
    sparse-bnn predict runs/fmnist t10k-images-idx3-ubyte.gz --out predictions.csv

The options of ``fit`` are generated from the fields of :class:`sparse_bnn.experiment.config.RunConfig`
(:func:`sparse_bnn.cli_options.add_config_options`): their flags, help texts, defaults and checks are declared there once.

Exit codes: 0 success; 2 bad input (unknown names, missing or corrupt data, a run directory
that must not be touched or that another process is writing); 3 the loss diverged (the last good
checkpoint is kept, and the message shows the command that resumes it with smaller learning rates);
130 interrupted. Output cut short by its reader (``sparse-bnn predict ... | head``) ends quietly with 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Mapping, Sequence

from sparse_bnn.cli_options import add_config_options, config_from_args

EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` only where it informs: not to flags (True/False), not where the
    default is computed later (None), not where the help text already states the default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(replay: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """The parser of ``sparse-bnn``; ``replay`` (``{flat name: value}`` of ``fit --config``) replaces
    the defaults of ``fit``'s options."""
    from sparse_bnn import __version__
    parser = argparse.ArgumentParser(
        prog="sparse-bnn", description="Structurally sparse Bayesian neural networks: fit with "
        "spike-and-slab group priors, prune nodes, evaluate the compact network.")
    parser.add_argument("--version", action="version", version=f"sparse-bnn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="train a model into a run directory",
                              formatter_class=_HelpFormatter)
    run = add_config_options(fit, replay)
    run.add_argument("--config", metavar="FILE", default=None,
                     help="replay a run: take the options of its config.json (or of the run directory "
                          "holding it); options given here override the file's")
    run.add_argument("--tensorboard", metavar="DIR", default=None,
                     help="also write the per-epoch metrics as TensorBoard scalars into DIR (needs "
                          "tensorboardX); RUN/history.csv is always written")
    run.add_argument("--resume", action="store_true",
                     help="continue the unfinished run in --out from its last checkpoint (a run that diverged "
                          "may change --lr, --indicator-lr, --lr-schedule and --lr-final-fraction)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run in --out (the old run is deleted once the new one has trained an epoch)")
    run.add_argument("--quiet", action="store_true", help="one log line per epoch instead of a progress bar")

    evaluate = commands.add_parser("evaluate", help="recompute test metrics from a run's compact model")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--data-dir", default=None, help="folder holding the data set's files")
    evaluate.add_argument("--json", action="store_true", help="print JSON")

    report = commands.add_parser("report", help="print a run's compression table")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--json", action="store_true", help="print metrics.json")

    predict = commands.add_parser(
        "predict", help="predict new examples with a run's compact model",
        description="Predict new examples, given in the data set's own units (pixel values 0-255, raw "
                    "features), with a run's compact model. Classification: label, predictive entropy, "
                    "mutual information (its epistemic part) and class probabilities; regression: mean and "
                    "standard deviation in the targets' units.")
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("inputs", metavar="INPUT",
                         help=".npy, .npz (array x), .csv (one example per row) or IDX image file (.gz or not)")
    predict.add_argument("--out", default=None,
                         help="write a .csv or .npz file instead of CSV on standard output")
    predict.add_argument("--median", action="store_true",
                         help="use the median-probability network alone instead of averaging over the "
                              "saved posterior samples")
    predict.add_argument("--data-dir", default=None,
                         help="folder holding the training data (only for runs saved without their "
                              "preprocessing)")

    export = commands.add_parser(
        "export", help="write a run's compact model as one file that plain JAX runs",
        description="Write a run's compact model as a jax.export artifact: the weights as constants, the run's "
                    "input preprocessing folded in, any batch size. Load it with jax.export.deserialize; "
                    "it takes inputs in the data set's own units (float32) and returns class probabilities "
                    "or, for regression, mean and standard deviation in the targets' units.")
    export.add_argument("run_dir", metavar="RUN", help="run directory (or a compact model directory)")
    export.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    export.add_argument("--format", default="stablehlo", choices=["stablehlo"],
                        help="stablehlo: a serialized jax.export.Exported")
    export.add_argument("--samples", action="store_true",
                        help="average over the saved posterior samples (as predict does by default) instead "
                             "of the median-probability network with posterior-mean weights (predict --median)")
    export.add_argument("--platforms", default="cpu,cuda,rocm,tpu", type=lambda text: text.split(","),
                        help="comma-separated platforms to lower for (default: cpu,cuda,rocm,tpu)")
    from sparse_bnn.compile_cache import add_cache_option
    for command in (fit, evaluate, predict, export):
        add_cache_option(command)
    return parser


def _fit(args: argparse.Namespace) -> int:
    from sparse_bnn.experiment.evaluate import report_table
    from sparse_bnn.experiment.run import run_experiment
    from sparse_bnn.experiment.collapse import CollapseWarning
    config = config_from_args(args)
    log = (lambda message: print(message, flush=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)  # report_table prints them under the table
        run_experiment(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, log=log,
                       tensorboard=args.tensorboard)
    print(report_table(args.out), flush=True)
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from sparse_bnn.experiment.evaluate import evaluate_run, read_run
    _, saved = read_run(args.run_dir)
    result = evaluate_run(args.run_dir, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    for label, values in result.items():
        print(f"{label}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
    for block in ("compact", "compact_bma"):  # compact_bma: recorded by runs of this version on
        recorded = saved.get(block, {})
        differences = {k: abs(v - recorded[k]) for k, v in result.get(block, {}).items() if k in recorded}
        if differences:
            print(f"largest difference to metrics.json ({block}): {max(differences.values()):.2e}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from sparse_bnn.experiment.evaluate import read_run, report_table
    if args.json:
        print(json.dumps(read_run(args.run_dir)[1], indent=2))
    else:
        print(report_table(args.run_dir))
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from sparse_bnn.compact.deploy import check_output, predict_run, read_inputs, write_predictions
    check_output(args.out)
    predictions = predict_run(args.run_dir, read_inputs(args.inputs), samples=not args.median,
                              data_dir=args.data_dir, source=args.inputs)
    write_predictions(args.out, predictions)
    if args.out is not None:
        print(f"{len(next(iter(predictions.values())))} predictions -> {args.out}", file=sys.stderr)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from sparse_bnn.compact.export import export
    written = export(args.run_dir, args.out, samples=args.samples, platforms=args.platforms, format=args.format)
    what = f"average over {written.samples} posterior samples" if written.samples else "posterior-mean network"
    print(f"{written.path}: {what}, inputs [batch, {', '.join(map(str, written.input_shape))}] float32 -> "
          f"{written.outputs}; platforms {', '.join(written.exported.platforms)}", file=sys.stderr)
    return EXIT_OK


def _replay(argv: Sequence[str]) -> Mapping[str, Any] | None:
    """The options of ``fit --config FILE`` in ``argv`` (``None`` without it)."""
    if not argv or argv[0] != "fit":
        return None
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config", default=None)
    known, _ = finder.parse_known_args(argv[1:])
    if known.config is None:
        return None
    from sparse_bnn.cli_options import replayed_options
    return replayed_options(known.config)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sparse-bnn`` (and ``python -m sparse_bnn``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        replay = _replay(argv)
    except ValueError as error:
        print(f"sparse-bnn fit: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = build_parser(replay).parse_args(argv)
    from sparse_bnn.errors import show_warnings_on_one_line
    show_warnings_on_one_line()
    from sparse_bnn.compile_cache import setup_from_args
    setup_from_args(args)  # JAX's persistent compilation cache, unless --no-compile-cache
    from sparse_bnn.train import DivergenceError
    command = {"fit": _fit, "evaluate": _evaluate, "report": _report, "predict": _predict,
               "export": _export}[args.command]
    try:
        return command(args)
    except DivergenceError as error:
        print(f"sparse-bnn: training diverged: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as error:
        print(f"sparse-bnn {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if args.command == "fit" else ""
        print(f"sparse-bnn: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader stopped early (sparse-bnn predict ... | head): end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail too
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

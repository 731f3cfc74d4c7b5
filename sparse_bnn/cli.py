"""``sparse-bnn``: fit, evaluate and report structurally sparse BNNs from the command line.

    sparse-bnn fit --data fashion-mnist --net mlp --widths 400,400 --prior ss-ghs \\
        --epochs 20 --out runs/fmnist
    sparse-bnn evaluate runs/fmnist
    sparse-bnn report runs/fmnist
    sparse-bnn predict runs/fmnist t10k-images-idx3-ubyte.gz --out predictions.csv

The options of ``fit`` are generated from the fields of :class:`sparse_bnn.experiment.config.RunConfig`
(:func:`add_config_options`): their flags, help texts, defaults and checks are declared there once.

Exit codes: 0 success; 2 bad input (unknown names, missing or corrupt data, a run directory
that must not be touched); 3 the loss diverged (the last good checkpoint is kept);
130 interrupted. Output cut short by its reader (``sparse-bnn predict ... | head``) ends quietly with 0.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` only where it informs: not to flags (True/False), not where the
    default is computed later (None), not where the help text already states the default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_config_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add one option per field of :class:`~sparse_bnn.experiment.config.RunConfig`, in one group per section.

    Flag, help text, default, type and choices come from the field (:func:`sparse_bnn.experiment.options.option`);
    the ``dest`` is the field's flat name, so that :func:`config_from_args` finds it. Returns the
    last group, "run directory and output" (``--out``), for the options of a run that are not
    part of its config.
    """
    from sparse_bnn.experiment.config import RunConfig
    groups = {f.name: parser.add_argument_group(f.metadata["help"])
              for f in dataclasses.fields(RunConfig) if f.metadata.get("section")}
    groups[None] = parser.add_argument_group("run directory and output")
    for entry in RunConfig.options():
        groups[entry.section].add_argument(entry.flag, **_argparse_keywords(entry))
    return groups[None]


def _argparse_keywords(entry) -> dict:
    """The keywords of ``add_argument`` for an :class:`~sparse_bnn.experiment.options.Option`."""
    from sparse_bnn.experiment.options import MISSING
    metadata, default = entry.field.metadata, entry.default
    parse = metadata["parse"] or (type(default) if default not in (None, MISSING) else str)
    keywords = {"dest": entry.name, "help": entry.help}
    if parse is bool:  # a switch: on, off, or both where the default is decided later
        keywords["action"] = {False: "store_true", True: "store_false", None: argparse.BooleanOptionalAction}[default]
        keywords["default"] = default
    else:
        keywords["type"] = parse if parse in (int, float, str) else _argparse_type(parse)
        if default is MISSING:
            keywords["required"] = True
        else:  # text that parses to the default, so that --help shows 400,400, not (400, 400)
            keywords["default"] = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        if metadata["choices"] is not None:
            keywords["choices"] = list(metadata["choices"]())
    return {**keywords, **metadata["cli"]}


def _argparse_type(parse):
    """``parse``, its ``ValueError`` turned into argparse's error with the same message."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = parse.__name__
    return convert


def config_from_args(args: argparse.Namespace):
    """The :class:`~sparse_bnn.experiment.config.RunConfig` of parsed ``sparse-bnn fit`` arguments."""
    from sparse_bnn.experiment.config import RunConfig
    return RunConfig.flat(**{entry.name: getattr(args, entry.name) for entry in RunConfig.options()})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-bnn", description="Structurally sparse Bayesian neural networks: fit with "
        "spike-and-slab group priors, prune nodes, evaluate the compact network.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="train a model into a run directory",
                              formatter_class=_HelpFormatter)
    run = add_config_options(fit)
    run.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    run.add_argument("--overwrite", action="store_true", help="replace the run in --out")
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
    return parser


def _fit(args: argparse.Namespace) -> int:
    from sparse_bnn.experiment.evaluate import report_table
    from sparse_bnn.experiment.run import run_experiment
    config = config_from_args(args)
    log = (lambda message: print(message, flush=True))
    run_experiment(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, log=log)
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
    recorded = saved.get("compact", {})
    differences = {k: abs(v - recorded[k]) for k, v in result["compact"].items() if k in recorded}
    if differences:
        print(f"largest difference to metrics.json (compact): {max(differences.values()):.2e}")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from sparse_bnn.experiment.evaluate import read_run, report_table
    if args.json:
        print(json.dumps(read_run(args.run_dir)[1], indent=2))
    else:
        print(report_table(args.run_dir))
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from sparse_bnn.compact.deploy import predict_run, read_inputs, write_predictions
    predictions = predict_run(args.run_dir, read_inputs(args.inputs), samples=not args.median,
                              data_dir=args.data_dir, source=args.inputs)
    write_predictions(args.out, predictions)
    if args.out is not None:
        print(f"{len(next(iter(predictions.values())))} predictions -> {args.out}", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sparse-bnn`` (and ``python -m sparse_bnn``); returns the exit code."""
    args = build_parser().parse_args(argv)
    from sparse_bnn.train import DivergenceError
    command = {"fit": _fit, "evaluate": _evaluate, "report": _report, "predict": _predict}[args.command]
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

"""``sparse-bnn``: fit, evaluate and report structurally sparse BNNs from the command line.

    sparse-bnn fit --data fashion-mnist --net mlp --widths 400,400 --prior ss-ghs \\
        --epochs 20 --out runs/fmnist
    sparse-bnn evaluate runs/fmnist
    sparse-bnn report runs/fmnist
    sparse-bnn predict runs/fmnist t10k-images-idx3-ubyte.gz --out predictions.csv

Exit codes: 0 success; 2 bad input (unknown names, missing or corrupt data, a run directory
that must not be touched); 3 the loss diverged (the last good checkpoint is kept);
130 interrupted. Output cut short by its reader (``sparse-bnn predict ... | head``) ends quietly with 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130


def _widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must be comma-separated integers like 400,400, got {text!r}")
    if not widths or any(w <= 0 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be positive integers like 400,400, got {text!r}")
    return widths


def _inclusion(text: str) -> str | float:
    if text == "theory":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--inclusion takes 'theory' or a probability in (0, 1), got {text!r}")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"--inclusion probability must lie in (0, 1), got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` only where it informs: not to flags (True/False), not where the
    default is computed later (None), not where the help text already states the default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from sparse_bnn.data import DATASET_NAMES
    from sparse_bnn.fit import CHECKPOINT_INTERVAL, LR_SCHEDULES
    from sparse_bnn.nets import NETS
    from sparse_bnn.nets.mlp import ACTIVATIONS
    from sparse_bnn.priors import PRIORS
    from sparse_bnn.noise import WEIGHT_NOISE
    from sparse_bnn.run import BMR_MODES, RunConfig
    from sparse_bnn.shrink import DEFAULT_THRESHOLD

    parser = argparse.ArgumentParser(
        prog="sparse-bnn", description="Structurally sparse Bayesian neural networks: fit with "
        "spike-and-slab group priors, prune nodes, evaluate the compact network.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="train a model into a run directory",
                              formatter_class=_HelpFormatter)
    what = fit.add_argument_group("data, network, prior")
    what.add_argument("--data", default="fashion-mnist", metavar="NAME|FILE",
                      help=f"data set: one of {', '.join(DATASET_NAMES)}, or a .npz/.csv file")
    what.add_argument("--data-dir", default=None, help="folder holding the data set's files")
    what.add_argument("--no-download", dest="download", action="store_false",
                      help="never download MNIST/Fashion-MNIST")
    what.add_argument("--validation-fraction", type=float, default=0.0,
                      help="share of the training set held out for per-epoch validation")
    what.add_argument("--n-train", type=int, default=None, help="use only this many training examples")
    what.add_argument("--n-test", type=int, default=None, help="use only this many test examples")
    what.add_argument("--net", default="mlp", choices=sorted(NETS), help="architecture")
    what.add_argument("--widths", type=_widths, default="400,400", help="MLP hidden widths, e.g. 400,400")
    what.add_argument("--activation", default="silu", choices=sorted(ACTIVATIONS),
                      help="activation of the MLP, LeNets and ResNets (ViT and Mixer: GELU)")
    what.add_argument("--prior", default="ss-ghs", choices=sorted(PRIORS), help="shrinkage prior")
    what.add_argument("--sigma0", type=float, default=None,
                      help="slab scale sigma_0 (default: 1, or the net's reference value, 0.2 for ResNets)")
    what.add_argument("--inclusion", type=_inclusion, default=None,
                      help="prior inclusion probability: 'theory' or a float (default: theory, or the "
                           "net's reference value, 1e-4 for ResNets)")
    what.add_argument("--temperature", type=float, default=0.5, help="Concrete relaxation temperature")
    what.add_argument("--rho-init", type=float, default=-6.0,
                      help="initial rho of the weights' posterior scales softplus(rho) (reference -6; "
                           "-3 separates units within a short schedule, see the README)")
    what.add_argument("--weight-noise", default="hash", choices=sorted(WEIGHT_NOISE),
                      help="generator of the guide's weight noise: a fast counter hash (default) or "
                           "jax.random.normal's threefry")
    what.add_argument("--soft", action="store_true", help="soft Concrete relaxation instead of straight-through")
    what.add_argument("--centred", action="store_true", help="centred parametrisation")

    train = fit.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    train.add_argument("--batch-size", type=int, default=1024, help="training examples per SVI step")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    train.add_argument("--indicator-lr", type=float, default=None,
                       help="learning rate of the node indicators' logits (default: --lr); it sets how fast "
                            "units are decided (the main job: 1e-2 with --lr 3e-3 --rho-init -3)")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                       help="decay both learning rates over the run (and again over --fine-tune-epochs) to "
                            "--lr-final-fraction of their values: along a half cosine or a straight line")
    train.add_argument("--lr-final-fraction", type=float, default=0.1,
                       help="learning rate at the end of a decaying --lr-schedule, as a fraction of --lr")
    train.add_argument("--seed", type=int, default=0,
                       help="seeds initialisation, shuffling, noise and the data splits")
    train.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                       help="horizontal flips (default: as the data set says; on for Fashion-MNIST)")
    train.add_argument("--fine-tune-epochs", type=int, default=0,
                       help="after sparse training, train this many epochs with the kept units frozen")
    train.add_argument("--bmr", default="none", choices=BMR_MODES,
                       help="Bayesian model reduction during training")
    train.add_argument("--bmr-warmup", type=int, default=None,
                       help="SVI epochs before the first reduction; then one after every epoch "
                            "(default: 5, or half the epochs of a run shorter than 10)")
    train.add_argument("--shrink", action="store_true",
                       help="remove switched-off units while training and continue on the smaller network "
                            "(spike-and-slab priors; with --bmr nodewise, the units the reduction prunes)")
    train.add_argument("--shrink-warmup", type=int, default=RunConfig.shrink_warmup,
                       help="epochs before any unit is removed")
    train.add_argument("--shrink-patience", type=int, default=RunConfig.shrink_patience,
                       help="consecutive epochs below the threshold before a unit is removed")
    train.add_argument("--shrink-threshold", type=float, default=None,
                       help="remove a unit when its inclusion probability stays below this "
                            f"(default: {DEFAULT_THRESHOLD}, or twice the layer's prior inclusion probability "
                            "when that is larger)")
    train.add_argument("--shrink-factor", type=float, default=RunConfig.shrink_factor,
                       help="rebuild the network when a layer's alive units fit in this fraction of its "
                            "physical width (fewer, larger rebuilds when smaller; each one recompiles)")
    train.add_argument("--devices", type=int, default=None,
                       help="train data-parallel on the first N local devices (default: every device)")

    evaluation = fit.add_argument_group("pruning and evaluation")
    evaluation.add_argument("--threshold", type=float, default=0.5,
                            help="keep a unit when its inclusion probability exceeds this")
    evaluation.add_argument("--samples", type=int, default=10, help="posterior samples for BMA predictions")
    evaluation.add_argument("--no-latency", dest="latency", action="store_false",
                            help="skip the latency measurement")

    run = fit.add_argument_group("run directory and output")
    run.add_argument("--out", required=True, help="run directory")
    run.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    run.add_argument("--checkpoint-interval", type=float, default=CHECKPOINT_INTERVAL, metavar="SECONDS",
                     help="seconds of training between checkpoints in --out/checkpoint (0: after every "
                          "epoch); the last epoch is always written, and a diverging run writes its "
                          "last good state")
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
    from sparse_bnn.run import RunConfig, report_table, run_experiment
    names = {f for f in RunConfig.__dataclass_fields__}
    config = RunConfig(**{k: v for k, v in vars(args).items() if k in names})
    log = (lambda message: print(message, flush=True))
    run_experiment(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, log=log)
    print(report_table(args.out), flush=True)
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    from sparse_bnn.run import evaluate_run, read_run
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
    from sparse_bnn.run import read_run, report_table
    if args.json:
        print(json.dumps(read_run(args.run_dir)[1], indent=2))
    else:
        print(report_table(args.run_dir))
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from sparse_bnn.deploy import predict_run, read_inputs, write_predictions
    predictions = predict_run(args.run_dir, read_inputs(args.inputs), samples=not args.median,
                              data_dir=args.data_dir, source=args.inputs)
    write_predictions(args.out, predictions)
    if args.out is not None:
        print(f"{len(next(iter(predictions.values())))} predictions -> {args.out}", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sparse-bnn`` (and ``python -m sparse_bnn``); returns the exit code."""
    args = build_parser().parse_args(argv)
    from sparse_bnn.fit import DivergenceError
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

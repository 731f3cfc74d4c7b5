"""The sections of a run's configuration (:class:`~sparse_bnn.experiment.config.RunConfig`):
data, network and prior, training, shrinking, Bayesian model reduction, evaluation.

Each field, declared with :func:`~sparse_bnn.experiment.options.option`, carries its default, help text,
command-line spelling, parser, check, and whether it belongs to the run's identity. Nothing here
imports JAX: defaults kept in modules that do are read from there when first needed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sparse_bnn.experiment.options import (Section, check_inclusion, finite, lazy, non_negative, option,
                                            parse_inclusion, parse_prior_option, parse_widths, positive,
                                            positive_integer, prior_hyperparameters, seed_in_range,
                                            strictly_between_0_and_1, typed_prior_options)

NET_SIZES = ("tiny", "small", "base")  # the named configurations of VisionTransformer and MLPMixer


__all__ = ["BMR_MODES", "BMRConfig", "DataConfig", "EvaluationConfig", "ModelConfig", "ShrinkConfig",
           "TrainingConfig"]

BMR_MODES = ("none", "elementwise", "nodewise")


def _shrink_default(field: str):
    return lazy("sparse_bnn.sparsify.shrink", "ShrinkSchedule", lambda schedule: getattr(schedule(), field))


def _check_checkpoint_interval(name: str, value: Any) -> None:
    from sparse_bnn.train import check_checkpoint_interval
    check_checkpoint_interval(value)


def _check_epochs(name: str, value: Any) -> None:
    if int(value) < 1:
        raise ValueError(f"--epochs {value}: a run needs at least one epoch of training (with none it would "
                         "save the untrained model as a finished run); give --epochs 1 or more")


# ----------------------------------------------------------------------------- texts read on first use

def _datasets_help() -> str:
    from sparse_bnn.data.sources import DATASET_NAMES
    return f"data set: one of {', '.join(DATASET_NAMES)}, or a .npz/.csv file"


def _prior_options_help() -> str:
    from sparse_bnn.priors import PRIORS
    listed = "; ".join(f"{prior}: " + (", ".join(f"{k}={v}" for k, v in prior_hyperparameters(prior).items())
                                       or "none") for prior in sorted(PRIORS))
    return ("a hyperparameter of the --prior as NAME=VALUE (repeat the option for more); the priors' "
            f"hyperparameters and their defaults: {listed}")


def _bmr_warmup_help() -> str:
    from sparse_bnn.sparsify.reduction import DEFAULT_WARMUP_EPOCHS as epochs
    return ("SVI epochs before the first reduction; then one after every epoch "
            f"(default: {epochs}, or half the epochs of a run shorter than {2 * epochs})")


def _shrink_threshold_help() -> str:
    from sparse_bnn.sparsify.shrink import DEFAULT_THRESHOLD
    return ("remove a unit when its inclusion probability stays below this (default: "
            f"{DEFAULT_THRESHOLD}, or twice the layer's prior inclusion probability when that is larger)")


# ----------------------------------------------------------------------------- the sections

@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Which data set, from where, and how much of it."""

    data: str = option("fashion-mnist", help=_datasets_help, cli={"metavar": "NAME|FILE"})
    data_dir: str | None = option(None, parse=str, identity=False, help="folder holding the data set's files")
    download: bool = option(True, identity=False, help="never download MNIST/Fashion-MNIST")
    validation_fraction: float = option(0.0, help="share of the training set held out for per-epoch validation")
    n_train: int | None = option(None, parse=int, help="use only this many training examples")
    n_test: int | None = option(None, parse=int, help="use only this many test examples")
    augment: bool | None = option(None, parse=bool,
                                  help="horizontal flips (default: as the data set says; on for Fashion-MNIST)")

    def check(self) -> DataConfig:
        super().check()
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            from sparse_bnn.data.formats import DataNotFoundError
            raise DataNotFoundError(
                f"data directory {self.data_dir} does not exist (--data-dir); give the folder that holds "
                "the data set's files")
        return self


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The network, its prior and the guide.

    ``sigma0``/``inclusion`` ``None`` take the architecture's reference values when it has them
    (``reference_sigma_0``, ``reference_inclusion``; the CIFAR ResNets), else 1 and ``"theory"``.
    ``prior_options``: keywords of the prior's class besides ``sigma_0``
    (:func:`~sparse_bnn.experiment.options.prior_hyperparameters`), e.g. ``{"lam2_shape": 3.0}`` for ``ss-gl``.
    """

    net: str = option("mlp", choices=lazy("sparse_bnn.nets", "NETS", sorted), help="architecture")
    widths: tuple[int, ...] = option((400, 400), parse=parse_widths, help="MLP hidden widths, e.g. 400,400")
    net_size: str | None = option(None, choices=lambda: NET_SIZES,
                                  help="named configuration of the ViT and the MLP-Mixer: tiny (default; "
                                       "fits a CPU), small or base (see docs/guide/networks.md)")
    activation: str = option("silu", choices=lazy("sparse_bnn.nets.mlp", "ACTIVATIONS", sorted),
                             help="activation of the MLP, LeNets and ResNets (ViT and Mixer: GELU)")
    prior: str = option("ss-ghs", choices=lazy("sparse_bnn.priors", "PRIORS", sorted), help="shrinkage prior")
    prior_options: dict[str, Any] = option(
        default_factory=dict, flag="--prior-option", parse=parse_prior_option, help=_prior_options_help,
        cli={"action": "append", "default": None, "metavar": "NAME=VALUE"})
    sigma0: float | None = option(None, parse=float, check=positive,
                                  help="slab scale sigma_0 (default: 1, or the net's reference value, 0.2 for ResNets)")
    inclusion: str | float | None = option(
        None, parse=parse_inclusion, check=check_inclusion,
        help="prior inclusion probability: 'theory' or a float (default: theory, or the net's reference "
             "value, 1e-4 for ResNets)")
    temperature: float = option(0.5, help="Concrete relaxation temperature")
    rho_init: float = option(-6.0, check=finite,
                             help="initial rho of the weights' posterior scales softplus(rho) (reference -6; "
                                  "-3 separates units within a short schedule, see docs/tuning.md)")
    weight_noise: str = option("hash", choices=lazy("sparse_bnn.core.noise", "WEIGHT_NOISE", sorted),
                               help="generator of the guide's weight noise: a fast counter hash (default) or "
                                    "jax.random.normal's threefry")
    soft: bool = option(False, help="soft Concrete relaxation instead of straight-through")
    centred: bool = option(False, help="centred parametrisation")
    kl_weight: float = option(1.0, check=positive,
                              help="KL weight beta of the tempered objective E[log p(y|w)] - beta * KL "
                                   "(1: the Bayesian posterior of the stated prior; below 1 fits the data "
                                   "more and prunes less, and is no longer that posterior)")

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        inclusion = self.inclusion
        if inclusion is not None and inclusion != "theory":
            try:
                object.__setattr__(self, "inclusion", float(inclusion))
            except ValueError:
                raise ValueError(f"inclusion must be 'theory' or a probability, got {inclusion!r}") from None
        object.__setattr__(self, "prior_options", typed_prior_options(self.prior, self.prior_options))

    def check(self) -> ModelConfig:
        super().check()
        if self.net_size is not None:
            from sparse_bnn.nets import NETS
            sizes = getattr(NETS.get(self.net), "SIZES", {})
            if self.net_size not in sizes:
                takes = [name for name, cls in sorted(NETS.items()) if getattr(cls, "SIZES", None)]
                raise ValueError(f"--net-size {self.net_size}: the net {self.net} has no named configurations; "
                                 f"--net-size applies to {', '.join(takes)} (the MLP takes --widths)")
        valid = prior_hyperparameters(self.prior)
        unknown = [name for name in self.prior_options if name not in valid]
        if unknown:
            takes = f"its options are {', '.join(valid)}" if valid else "it takes none"
            raise ValueError(f"--prior-option {unknown[0]}: the prior {self.prior} has no such hyperparameter; "
                             f"{takes} (its slab scale is --sigma0)")
        if self.prior_options:
            from sparse_bnn.priors import get_prior
            try:
                get_prior(self.prior, **self.prior_options)
            except (TypeError, ValueError) as error:
                raise ValueError(f"--prior-option for the prior {self.prior}: {error}") from None
        return self


@dataclasses.dataclass(frozen=True)
class TrainingConfig(Section):
    """The optimiser, its schedule, seeds, devices and checkpoints."""

    epochs: int = option(10, identity=False, check=_check_epochs, help="passes over the training set")
    batch_size: int = option(1024, check=positive_integer, help="training examples per SVI step")
    lr: float = option(1e-3, check=positive, help="Adam learning rate")
    indicator_lr: float | None = option(
        None, parse=float, check=positive,
        help="learning rate of the node indicators' logits (default: --lr); it sets how fast units are "
             "decided (the main job: 1e-2 with --lr 3e-3 --rho-init -3)")
    lr_schedule: str = option("constant", choices=lazy("sparse_bnn.train", "LR_SCHEDULES"),
                              help="decay both learning rates over the run (and again over --fine-tune-epochs) "
                                   "to --lr-final-fraction of their values: along a half cosine or a straight line")
    lr_final_fraction: float = option(
        0.1, help="learning rate at the end of a decaying --lr-schedule, as a fraction of --lr")
    seed: int = option(0, check=seed_in_range, help="seeds initialisation, shuffling, noise and the data splits")
    fine_tune_epochs: int = option(0, identity=False, check=non_negative,
                                   help="after sparse training, train this many epochs with the kept units frozen")
    devices: int | None = option(None, parse=int, identity=False, check=positive_integer,
                                 help="train data-parallel on the first N local devices (default: every device)")
    checkpoint_interval: float = option(
        default_factory=lazy("sparse_bnn.train", "CHECKPOINT_INTERVAL"), identity=False,
        check=_check_checkpoint_interval, cli={"metavar": "SECONDS"},
        help="seconds of training between checkpoints in --out/checkpoint (0: after every epoch); the last "
             "epoch is always written, and a diverging run writes its last good state")

    def check(self) -> TrainingConfig:
        super().check()
        from sparse_bnn.train import learning_rate_schedule
        learning_rate_schedule(self.lr, self.lr_schedule, 1, self.lr_final_fraction)
        if self.lr_schedule == "constant" and self.changed("lr_final_fraction"):
            raise ValueError("--lr-final-fraction is where a decaying --lr-schedule ends; give --lr-schedule "
                             "cosine or linear too")
        return self

    def optimizer(self, epochs: int, n_train: int):
        """The SVI optimiser of ``epochs`` epochs over ``n_train`` examples (the schedule decays over them)."""
        from sparse_bnn.train import svi_optimizer
        steps = epochs * (n_train // min(int(self.batch_size), n_train))
        return svi_optimizer(self.lr, self.indicator_lr, schedule=self.lr_schedule, total_steps=max(steps, 1),
                             final_fraction=self.lr_final_fraction)


# the options of the spike-and-slab removal rule (GammaRule); meaningless with --bmr nodewise
GAMMA_RULE_FIELDS = ("warmup", "patience", "threshold")


@dataclasses.dataclass(frozen=True)
class ShrinkConfig(Section):
    """``--shrink``: remove switched-off units while training (:class:`sparse_bnn.sparsify.shrink.ShrinkSchedule`)."""

    enabled: bool = option(False, name="shrink",
                           help="remove switched-off units while training and continue on the smaller network "
                                "(spike-and-slab priors; with --bmr nodewise, the units the reduction prunes)")
    warmup: int = option(default_factory=_shrink_default("warmup_epochs"), name="shrink_warmup",
                         help="epochs before any unit is removed")
    patience: int = option(default_factory=_shrink_default("patience"), name="shrink_patience",
                           help="consecutive epochs below the threshold before a unit is removed")
    threshold: float | None = option(default_factory=_shrink_default("threshold"), name="shrink_threshold",
                                     parse=float, help=_shrink_threshold_help)
    factor: float = option(default_factory=_shrink_default("shrink_factor"), name="shrink_factor",
                           help="rebuild the network when a layer's alive units fit in this fraction of its "
                                "physical width (fewer, larger rebuilds when smaller; each one recompiles)")

    def check(self) -> ShrinkConfig:
        super().check()
        given = self.changed("warmup", "patience", "threshold", "factor")
        if self.enabled:
            self.schedule().validate()
        elif given:
            raise ValueError(f"{', '.join(given)} set how --shrink removes units and rebuilds the network; "
                             "give --shrink too")
        return self

    def schedule(self):
        """The :class:`~sparse_bnn.sparsify.shrink.ShrinkSchedule` of these options."""
        from sparse_bnn.sparsify.shrink import ShrinkSchedule
        return ShrinkSchedule(warmup_epochs=int(self.warmup), patience=int(self.patience), threshold=self.threshold,
                              shrink_factor=float(self.factor))


@dataclasses.dataclass(frozen=True)
class BMRConfig(Section):
    """``--bmr``: Bayesian model reduction during training (:func:`sparse_bnn.sparsify.reduction.fit_with_bmr`)."""

    mode: str = option("none", name="bmr", choices=lambda: BMR_MODES, help="Bayesian model reduction during training")
    warmup: int | None = option(None, name="bmr_warmup", parse=int, help=_bmr_warmup_help)

    def check(self) -> BMRConfig:
        super().check()
        if self.warmup is not None and self.mode == "none":
            raise ValueError("--bmr-warmup is the warm-up of Bayesian model reduction; give --bmr too")
        return self


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(Section):
    """Which units the compact network keeps, and how it is evaluated."""

    threshold: float = option(0.5, identity=False, check=strictly_between_0_and_1,
                              help="keep a unit when its inclusion probability exceeds this")
    samples: int = option(10, identity=False, check=positive_integer, help="posterior samples for BMA predictions")
    latency: bool = option(True, identity=False, help="skip the latency measurement")

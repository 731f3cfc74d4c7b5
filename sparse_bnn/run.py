"""One experiment in one run directory: load data, build the model, fit, prune, evaluate, plot.

:func:`run_experiment` is what ``sparse-bnn fit`` calls; notebooks and benchmarks call it too::

    metrics = run_experiment(RunConfig(data="digits", widths=[32, 32], epochs=5, out="runs/d"))

The run directory ``RUN`` ends up holding

* ``config.json``: the :class:`RunConfig`, the network's config and the library version;
* ``checkpoint/`` (and ``checkpoint_finetune/``): the latest checkpoint, written atomically
  every ``checkpoint_interval`` seconds of training and after the last epoch
  (:func:`sparse_bnn.fit.run_epochs`);
* ``history.json``: one record per epoch (loss, nll, kl, kept units, seconds, validation);
* ``variational_params.msgpack``: the fitted variational parameters and fixed masks;
* ``compact/``: the compact median-probability network with posterior samples
  (:func:`sparse_bnn.compact_io.load_compact`);
* ``report.json``: the :class:`~sparse_bnn.report.CompressionReport`;
* ``plots/*.png``: loss curves, kept units, inclusion histograms, reliability diagram;
* ``metrics.json``: written last and atomically; its presence marks the run as finished.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

import sparse_bnn
from sparse_bnn import compact_io, metrics as metric_fns, posterior, prune, report as report_lib
from sparse_bnn.data import Dataset, DataNotFoundError, flip_augment, load_dataset
from sparse_bnn.fit import (CHECKPOINT_INTERVAL, FitResult, check_checkpoint_interval, fit, learning_rate_schedule,
                            svi_optimizer)
from sparse_bnn.model import Masks, SparseBNN
from sparse_bnn.nets import NETS, FunctionalNet, net_from_config
from sparse_bnn.noise import WEIGHT_NOISE
from sparse_bnn.priors import PRIORS, get_prior
from sparse_bnn.shrink import ShrinkSchedule, fit_shrinking

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.json"
PARAMS_FILE = "variational_params.msgpack"
COMPACT_DIR = "compact"
CHECKPOINT_DIR = "checkpoint"
FINETUNE_CHECKPOINT_DIR = "checkpoint_finetune"
PLOTS_DIR = "plots"
BMR_MODES = ("none", "elementwise", "nodewise")
REGRESSION_LIKELIHOOD_NOISE = None  # learned

# Fields that define the experiment: a resumed run must agree on them with the saved config.
_MODEL_FIELDS = ("data", "net", "widths", "prior", "batch_size", "lr", "indicator_lr", "lr_schedule",
                 "lr_final_fraction", "seed", "validation_fraction",
                 "n_train", "n_test", "sigma0", "inclusion", "temperature", "soft", "centred",
                 "augment", "activation", "bmr", "bmr_warmup", "shrink", "rho_init", "shrink_warmup", "shrink_patience",
                 "shrink_threshold", "shrink_factor", "weight_noise")


# --shrink options of the spike-and-slab removal rule (GammaRule); meaningless with --bmr nodewise.
_GAMMA_RULE_FIELDS = ("shrink_warmup", "shrink_patience", "shrink_threshold")
# every option of --shrink; meaningless without it
_SHRINK_FIELDS = (*_GAMMA_RULE_FIELDS, "shrink_factor")


class RunDirectoryError(ValueError):
    """The output directory holds a finished or unfinished run that we must not silently touch."""


@dataclasses.dataclass
class RunConfig:
    """Everything that defines a run (``sparse-bnn fit --help`` describes each field).

    ``sigma0``/``inclusion`` ``None`` take the architecture's reference values when it has them
    (``reference_sigma_0``, ``reference_inclusion``; the CIFAR ResNets), else 1 and ``"theory"``.
    ``augment`` ``None`` follows the data set (flips for Fashion-MNIST).
    """

    out: str
    data: str = "fashion-mnist"
    net: str = "mlp"
    widths: list[int] = dataclasses.field(default_factory=lambda: [400, 400])
    prior: str = "ss-ghs"
    epochs: int = 10
    batch_size: int = 1024
    lr: float = 1e-3
    indicator_lr: float | None = None
    lr_schedule: str = "constant"
    lr_final_fraction: float = 0.1
    seed: int = 0
    data_dir: str | None = None
    download: bool = True
    validation_fraction: float = 0.0
    n_train: int | None = None
    n_test: int | None = None
    sigma0: float | None = None
    inclusion: str | float | None = None
    temperature: float = 0.5
    rho_init: float = -6.0
    weight_noise: str = "hash"
    soft: bool = False
    centred: bool = False
    threshold: float = 0.5
    samples: int = 10
    augment: bool | None = None
    activation: str = "silu"
    latency: bool = True
    fine_tune_epochs: int = 0
    bmr: str = "none"
    bmr_warmup: int | None = None
    shrink: bool = False
    shrink_warmup: int = ShrinkSchedule().warmup_epochs
    shrink_patience: int = ShrinkSchedule().patience
    shrink_threshold: float | None = None
    shrink_factor: float = ShrinkSchedule().shrink_factor
    devices: int | None = None
    checkpoint_interval: float = CHECKPOINT_INTERVAL

    def check(self) -> "RunConfig":
        """Raise ``ValueError`` naming the bad field and the valid choices."""
        check_checkpoint_interval(self.checkpoint_interval)
        if self.net not in NETS:
            raise ValueError(f"unknown net {self.net!r}; choose one of {', '.join(sorted(NETS))}")
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; choose one of {', '.join(sorted(PRIORS))}")
        if self.bmr not in BMR_MODES:
            raise ValueError(f"unknown --bmr mode {self.bmr!r}; choose one of {', '.join(BMR_MODES)}")
        if self.bmr == "elementwise" and self.shrink:
            raise ValueError("--shrink removes whole units; element-wise BMR prunes single weights. "
                             "Use --bmr nodewise with --shrink")
        if self.bmr != "none" and self.shrink:
            gamma_options = self._options_set(_GAMMA_RULE_FIELDS)
            if gamma_options:
                raise ValueError(f"{', '.join(gamma_options)} set the spike-and-slab removal rule of "
                                 "--shrink; with --bmr nodewise the reduction decides which units go "
                                 "(after --bmr-warmup epochs), so leave them out")
        if self.bmr_warmup is not None:
            if self.bmr == "none":
                raise ValueError("--bmr-warmup is the warm-up of Bayesian model reduction; give --bmr too")
            from sparse_bnn.reduction import resolve_warmup_epochs
            resolve_warmup_epochs(self.bmr_warmup, self.epochs)
        for name in ("epochs", "fine_tune_epochs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "samples"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"the learning rate must be positive, got {self.lr}")
        if self.indicator_lr is not None and not (math.isfinite(self.indicator_lr) and self.indicator_lr > 0):
            raise ValueError(f"the indicator learning rate must be positive, got {self.indicator_lr}")
        learning_rate_schedule(self.lr, self.lr_schedule, 1, self.lr_final_fraction)
        if self.lr_schedule == "constant" and self._options_set(("lr_final_fraction",)):
            raise ValueError("--lr-final-fraction is where a decaying --lr-schedule ends; give --lr-schedule "
                             "cosine or linear too")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {self.threshold}")
        if self.sigma0 is not None and not (math.isfinite(self.sigma0) and self.sigma0 > 0):
            raise ValueError(f"sigma0 must be positive, got {self.sigma0}")
        if isinstance(self.inclusion, str) and self.inclusion != "theory":
            try:
                self.inclusion = float(self.inclusion)
            except ValueError:
                raise ValueError(f"inclusion must be 'theory' or a probability, got {self.inclusion!r}") from None
        if isinstance(self.inclusion, float) and not 0.0 < self.inclusion < 1.0:
            raise ValueError(f"inclusion probability must lie in (0, 1), got {self.inclusion}")
        if not math.isfinite(self.rho_init):
            raise ValueError(f"rho_init must be finite, got {self.rho_init}")
        if self.weight_noise not in WEIGHT_NOISE:
            raise ValueError(f"unknown weight_noise {self.weight_noise!r}; choose one of {tuple(WEIGHT_NOISE)}")
        if self.shrink:
            self.shrink_schedule().validate()
        else:
            shrink_options = self._options_set(_SHRINK_FIELDS)
            if shrink_options:
                raise ValueError(f"{', '.join(shrink_options)} set how --shrink removes units and rebuilds "
                                 "the network; give --shrink too")
        if self.devices is not None and int(self.devices) <= 0:
            raise ValueError(f"devices must be a positive integer, got {self.devices}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise DataNotFoundError(f"data directory {self.data_dir} does not exist (--data-dir); "
                                    "give the folder that holds the data set's files")
        self.widths = [int(w) for w in self.widths]
        return self

    def _options_set(self, names: tuple[str, ...]) -> list[str]:
        """The CLI spelling (``--shrink-warmup``) of those fields that differ from their defaults."""
        return [f"--{name.replace('_', '-')}" for name in names if getattr(self, name) != _FIELD_DEFAULTS[name]]

    def optimizer(self, epochs: int, n_train: int):
        """The SVI optimiser of ``epochs`` epochs over ``n_train`` examples (the schedule decays over them)."""
        steps = epochs * (n_train // min(int(self.batch_size), n_train))
        return svi_optimizer(self.lr, self.indicator_lr, schedule=self.lr_schedule,
                             total_steps=max(steps, 1), final_fraction=self.lr_final_fraction)

    def shrink_schedule(self):
        """The :class:`~sparse_bnn.shrink.ShrinkSchedule` of ``--shrink``."""
        return ShrinkSchedule(warmup_epochs=int(self.shrink_warmup), patience=int(self.shrink_patience),
                              threshold=self.shrink_threshold, shrink_factor=float(self.shrink_factor))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


# ----------------------------------------------------------------------------- building blocks

def net_config(config: RunConfig, dataset: Dataset) -> dict:
    """The network config for the data set's input shape and classes (or 1 output for regression)."""
    outputs = dataset.num_classes if dataset.task == "classification" else int(np.prod(dataset.y_train.shape[1:]))
    if config.net == "mlp":
        return {"net": "mlp", "in_features": dataset.input_dim, "widths": list(config.widths),
                "out_features": outputs, "activation": config.activation}
    cls = NETS[config.net]
    if hasattr(cls, "default_config"):
        built = dict(cls.default_config(tuple(dataset.input_shape), outputs))
    else:  # until every net has default_config: image nets take (image_size, in_channels, classes)
        if len(dataset.input_shape) != 3 or dataset.input_shape[0] != dataset.input_shape[1]:
            raise ValueError(f"net {config.net!r} needs square images [H, W, C]; the data set "
                             f"{dataset.name!r} has examples of shape {tuple(dataset.input_shape)}")
        size, _, channels = dataset.input_shape
        kwargs = dict(image_size=int(size), in_channels=int(channels), num_classes=int(outputs))
        if config.net.startswith("resnet"):
            kwargs["depth"] = int(config.net.removeprefix("resnet"))
        if "activation" in inspect.signature(cls.__init__).parameters:
            kwargs["activation"] = config.activation
        from flax import nnx
        built = cls(**kwargs, rngs=nnx.Rngs(0)).config
    if config.net.startswith("resnet"):
        built["net"] = config.net
    return built


def build_model(config: RunConfig, dataset: Dataset, net_cfg: Mapping[str, Any], *,
                freeze_indicators: bool = False) -> SparseBNN:
    """The :class:`SparseBNN` of a run (network seeded by ``config.seed``)."""
    cls = NETS[config.net]
    sigma_0 = config.sigma0 if config.sigma0 is not None else getattr(cls, "reference_sigma_0", 1.0)
    inclusion = config.inclusion if config.inclusion is not None else getattr(cls, "reference_inclusion", "theory")
    net = net_from_config(dict(net_cfg), seed=config.seed)
    likelihood = "categorical" if dataset.task == "classification" else "gaussian"
    return SparseBNN(net, get_prior(config.prior, sigma_0=float(sigma_0)), n_data=len(dataset.x_train),
                     likelihood=likelihood, noise=REGRESSION_LIKELIHOOD_NOISE, inclusion=inclusion,
                     centred=config.centred, temperature=config.temperature, hard=not config.soft,
                     rho_init=config.rho_init, freeze_indicators=freeze_indicators,
                     weight_noise=config.weight_noise)


def load_run_dataset(config: RunConfig) -> Dataset:
    return load_dataset(config.data, data_dir=config.data_dir, validation_fraction=config.validation_fraction,
                        seed=config.seed, download=config.download, n_train=config.n_train,
                        n_test=config.n_test)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: Path, value: Any) -> None:
    _write_atomic(Path(path), (json.dumps(value, indent=2) + "\n").encode())


def save_variational_params(path: Path, params: Mapping[str, jax.Array], masks: Masks) -> None:
    """``{"params": {name: array}, "masks": {"units": ..., "weights": ...}}`` as msgpack."""
    payload = {"params": {k: np.asarray(v) for k, v in params.items()},
               "masks": {"units": {k: np.asarray(v) for k, v in masks.units.items()},
                         "weights": {k: np.asarray(v) for k, v in masks.weights.items()}}}
    _write_atomic(Path(path), serialization.msgpack_serialize(payload))


def load_variational_params(path: Path) -> tuple[dict[str, np.ndarray], Masks]:
    """The inverse of :func:`save_variational_params` (msgpack only; no code runs)."""
    payload = serialization.msgpack_restore(Path(path).read_bytes())
    masks = payload.get("masks", {})
    return dict(payload["params"]), Masks(dict(masks.get("units", {})), dict(masks.get("weights", {})))


def prepare_run_directory(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check what ``out`` holds; returns ``True`` when an unfinished run is to be resumed.

    Raises :class:`RunDirectoryError` for a finished run without ``overwrite``, an unfinished
    one without ``resume``/``overwrite``, or a non-empty folder that is not a run directory.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise RunDirectoryError(f"--out {out} exists and is not a directory")
    entries = [p for p in out.iterdir()]
    if not entries:
        return False
    is_run = (out / CONFIG_FILE).exists() or (out / METRICS_FILE).exists() or (out / CHECKPOINT_DIR).exists()
    if not is_run:
        raise RunDirectoryError(f"--out {out} is a non-empty folder that is not a sparse-bnn run "
                                "directory; choose a new or empty folder")
    finished = (out / METRICS_FILE).exists()
    if overwrite:
        if finished:  # first un-finish it, so that an interruption cannot leave it looking finished
            (out / METRICS_FILE).unlink()
        shutil.rmtree(out)
        return False
    if finished:
        raise RunDirectoryError(f"{out} already holds a finished run ({METRICS_FILE} exists); "
                                "pass --overwrite to replace it or choose another --out")
    if not resume:
        raise RunDirectoryError(f"{out} holds a started but unfinished run; pass --resume to continue "
                                "it or --overwrite to start again")
    return True


def _check_resumable(out: Path, config: RunConfig) -> None:
    saved_file = out / CONFIG_FILE
    if not saved_file.exists():
        return
    saved = json.loads(saved_file.read_text()).get("run", {})
    # without --shrink its options are unused (and their defaults may have changed since)
    unused = _SHRINK_FIELDS if not (config.shrink or saved.get("shrink")) else ()
    different = {k: (saved.get(k), getattr(config, k)) for k in _MODEL_FIELDS
                 if k not in unused and k in saved and saved.get(k) != getattr(config, k)}
    if different:
        lines = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in different.items())
        raise RunDirectoryError(f"cannot resume {out}: the run was started with other settings ({lines}); "
                                "repeat the original options or pass --overwrite")


def _fit_function(config: RunConfig) -> Callable[..., FitResult]:
    """``fit``, or the BMR / shrinking training schemes (BMR's imported lazily)."""
    if config.bmr != "none":
        try:
            from sparse_bnn.reduction import fit_with_bmr
        except ImportError as error:
            raise ValueError(f"--bmr {config.bmr} needs sparse_bnn.reduction.fit_with_bmr, which this "
                             f"installation lacks ({error}); run without --bmr") from error
        shrink = config.shrink_schedule() if config.shrink else None
        return lambda bnn, x, y, **kwargs: fit_with_bmr(bnn, x, y, mode=config.bmr, warmup_epochs=config.bmr_warmup,
                                                        shrink=shrink, **kwargs)
    if config.shrink:
        return lambda bnn, x, y, **kwargs: fit_shrinking(bnn, x, y, shrink=config.shrink_schedule(), **kwargs)
    return fit


def _check_devices(config: RunConfig) -> None:
    if config.devices is None:
        return
    available = jax.device_count()
    if config.devices > available:
        raise ValueError(f"--devices {config.devices} but JAX sees only {available} device(s) "
                         f"({jax.devices()[0].platform})")


# ----------------------------------------------------------------------------- evaluation

def compact_outputs(net, x: np.ndarray) -> np.ndarray:
    """Outputs ``[N, out]`` (logits or means) of a (compact) network."""
    from flax import nnx
    graphdef, state = nnx.split(net)
    forward = jax.jit(lambda s, xb: nnx.merge(graphdef, s)(xb))  # weights as arguments, not constants
    return posterior.batched(lambda xb: forward(state, xb), np.asarray(x, np.float32), 2048)


def compact_predictions(net, x: np.ndarray, task: str) -> np.ndarray:
    """Class probabilities ``[N, C]`` or means ``[N, out]`` of a (compact) network."""
    outputs = compact_outputs(net, x)
    return np.asarray(jax.nn.softmax(outputs, -1)) if task == "classification" else outputs


def bma_predictions(apply: Callable, samples: Mapping, x: np.ndarray, task: str) -> np.ndarray:
    """Bayesian model averaging with ``apply(params, x)`` over stacked samples ``{path: [S, ...]}``.

    Returns class probabilities ``[N, C]`` (mean over samples) or sample means ``[S, N, out]``.
    """
    average = posterior.averaged_probs if task == "classification" else posterior.sampled_outputs
    fn = jax.jit(lambda s, xb: average(apply, s, xb))
    samples = dict(samples)
    return posterior.batched(lambda xb: fn(samples, xb), np.asarray(x, np.float32), 2048)


def score(predictions: np.ndarray, dataset: Dataset, *, noise: float | None = None,
          samples: bool = False) -> dict[str, float]:
    """Test metrics: accuracy/NLL/ECE/Brier, or RMSE/Gaussian NLL (standardised and original units)."""
    if dataset.task == "classification":
        return metric_fns.classification_metrics(jnp.asarray(predictions), jnp.asarray(dataset.y_test))
    y = jnp.asarray(dataset.y_test).reshape(len(dataset.y_test), -1)
    if samples:
        out = metric_fns.regression_metrics(y, sample_means=jnp.asarray(predictions).reshape(
            predictions.shape[0], len(dataset.y_test), -1), noise_std=noise)
    else:
        out = metric_fns.regression_metrics(y, mean=jnp.asarray(predictions).reshape(y.shape), std=noise)
    if dataset.y_std is not None:
        out["rmse_original_units"] = out["rmse"] * float(np.asarray(dataset.y_std).reshape(-1)[0])
    return out


# ----------------------------------------------------------------------------- the experiment

def _log_epoch(log: Callable[[str], None], offset: int = 0, label: str = "epoch"):
    def callback(epoch: int, record: dict, state) -> None:
        kept = "/".join(str(v) for v in record["kept"].values())
        extra = "".join(f" {k}={record[k]:.4f}" for k in ("val_accuracy", "val_rmse") if k in record)
        log(f"{label} {epoch + offset}: loss={record['loss']:.4f} nll={record['nll']:.4f} "
            f"kl={record['kl']:.4f} kept={kept}{extra} ({record['seconds']:.2f}s)")
    return callback


def run_experiment(config: RunConfig | Mapping[str, Any], *, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Run one experiment into ``config.out`` and return its metrics (also in ``metrics.json``).

    Args:
      config: a :class:`RunConfig` (or a dict of its fields).
      resume: continue an unfinished run in ``config.out`` from its last checkpoint.
      overwrite: replace whatever run ``config.out`` holds.
      progress: show fit's progress bar per epoch; otherwise ``log`` gets one line per epoch.
      log: where per-epoch lines and notes go (``None``: nowhere).

    Raises:
      ValueError / DataNotFoundError: bad input (nothing is written then, or an unfinished run).
      RunDirectoryError: ``config.out`` holds a run that must not be touched.
      sparse_bnn.fit.DivergenceError: the loss stopped being finite; the last good checkpoint stays
        in ``RUN/checkpoint`` and no ``metrics.json`` is written.
    """
    config = RunConfig.from_dict(config) if isinstance(config, Mapping) else dataclasses.replace(config)
    config.check()
    _check_devices(config)
    out = Path(config.out)
    resuming = prepare_run_directory(out, resume=resume, overwrite=overwrite)
    if resuming:
        _check_resumable(out, config)
    fit_function = _fit_function(config)
    dataset = load_run_dataset(config)
    net_cfg = net_config(config, dataset)
    bnn = build_model(config, dataset, net_cfg)
    augment_flag = dataset.flip_augment if config.augment is None else config.augment
    augment = flip_augment if augment_flag and dataset.is_image else None

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, {
        "run": config.to_dict(), "net_config": net_cfg, "sparse_bnn_version": sparse_bnn.__version__,
        "jax_version": jax.__version__, "dataset": dataset.summary(), "augment": bool(augment is not None),
        "sigma_0": float(bnn.prior.sigma_0), "inclusion": {k: float(v) for k, v in bnn.inclusion.items()}})
    optimizer = config.optimizer(config.epochs, len(dataset.x_train))
    validation = (dataset.x_val, dataset.y_val) if len(dataset.x_val) else None
    checkpoint_dir = out / CHECKPOINT_DIR
    quiet_log = (lambda message: None) if log is None else log
    callbacks = () if progress else (_log_epoch(quiet_log),)
    fit_kwargs = dict(epochs=config.epochs, batch_size=config.batch_size, optimizer=optimizer,
                      seed=config.seed, augment=augment, progress=progress, validation=validation,
                      callbacks=callbacks, checkpoint_interval=config.checkpoint_interval)
    if config.devices is not None:
        if "devices" not in inspect.signature(fit_function).parameters:
            raise ValueError("--devices: this training scheme (--bmr/--shrink) runs on one device; "
                             "leave --devices out")
        fit_kwargs["devices"] = config.devices
    started = time.perf_counter()
    result = fit_function(bnn, dataset.x_train, dataset.y_train, checkpoint_dir=checkpoint_dir,
                          resume=True, **fit_kwargs)
    history = [dict(r, phase="sparse") for r in result.history]
    compile_seconds = result.compile_seconds
    final_bnn, params, masks = result.bnn, result.params, result.state.masks
    inclusion = {name: np.asarray(p) for name, p in posterior.inclusion_probs(final_bnn, params).items()}

    if config.fine_tune_epochs > 0:
        keep = posterior.keep_masks(final_bnn, params, config.threshold, masks)
        unit_masks = Masks(units={name: jnp.asarray(k, jnp.float32) for name, k in keep.items()},
                           weights=dict(masks.weights))
        # the fitted net's own config: after --shrink it is smaller than net_cfg
        tuned_bnn = build_model(config, dataset, final_bnn.net.config, freeze_indicators=True)
        wanted = tuned_bnn.init_params()
        init = {k: params[k] for k in wanted}
        tuned = fit(tuned_bnn, dataset.x_train, dataset.y_train, init_params=init, masks=unit_masks,
                    checkpoint_dir=out / FINETUNE_CHECKPOINT_DIR, resume=True,
                    **{**fit_kwargs, "epochs": config.fine_tune_epochs,
                       "optimizer": config.optimizer(config.fine_tune_epochs, len(dataset.x_train)),
                       "callbacks": () if progress else (_log_epoch(quiet_log, config.epochs, "fine-tune epoch"),)})
        history += [dict(r, epoch=r["epoch"] + config.epochs, phase="fine-tune") for r in tuned.history]
        compile_seconds += tuned.compile_seconds
        final_bnn, params, masks = tuned.bnn, tuned.params, tuned.state.masks
    session_seconds = time.perf_counter() - started

    write_json(out / HISTORY_FILE, history)
    save_variational_params(out / PARAMS_FILE, params, masks)
    # after --shrink the fitted network is smaller than the one the run started from: the report
    # compares the compact network with that original dense network, in its unit numbering
    unit_origin = getattr(result, "unit_origin", None)
    dense = (net_from_config(dict(net_cfg), seed=config.seed), unit_origin) if unit_origin else None
    metrics = evaluate_fitted(final_bnn, params, masks, dataset, config, out, dense=dense)
    metrics.update(training_seconds=float(sum(r["seconds"] for r in history)),
                   compile_seconds=float(compile_seconds), session_seconds=float(session_seconds),
                   epochs=int(config.epochs), fine_tune_epochs=int(config.fine_tune_epochs))
    _plots(out, history, inclusion, metrics.pop("_calibration", None), config.threshold, quiet_log)
    write_json(out / METRICS_FILE, metrics)
    return metrics


def evaluate_fitted(bnn: SparseBNN, params: Mapping[str, jax.Array], masks: Masks, dataset: Dataset,
                    config: RunConfig, out: Path, dense: tuple[Any, Mapping[str, np.ndarray]] | None = None
                    ) -> dict:
    """BMA and compact-network test metrics; writes ``compact/`` and ``report.json``.

    ``dense``: ``(original network, {layer: original index of each unit of bnn.net})`` when
    ``bnn`` was shrunk while training; the compression report then compares the compact
    network with the original dense network (the default compares with ``bnn.net``).
    """
    key = jax.random.PRNGKey(config.seed)
    task = dataset.task
    noise = posterior.noise_scale(bnn, params) if task == "regression" else None
    samples = posterior.sample_params(bnn, params, key, config.samples, masks)  # the draws of posterior.predict
    bma = bma_predictions(bnn.functional.apply, samples, dataset.x_test, task)
    weights, keep = jax.jit(lambda p: posterior.posterior_mean_params(bnn, p, config.threshold, masks))(params)
    keep = {name: np.asarray(k, bool) for name, k in keep.items()}
    compact_net, _ = prune.compact(bnn.net, weights, keep)
    _, compact_samples = prune.compact_samples(bnn.net, samples, keep)
    compact_probs = compact_predictions(compact_net, dataset.x_test, task)
    result = {"task": task, "data": dataset.name, "num_test": int(len(dataset.x_test)),
              "bma": {**score(bma, dataset, noise=noise, samples=True), "samples": int(config.samples)},
              "compact": score(compact_probs, dataset, noise=noise),
              "threshold": float(config.threshold)}
    if noise is not None:
        result["noise_std"] = float(noise)
    dense_net, dense_keep = bnn.net, keep
    if dense is not None:
        from sparse_bnn.shrink import keep_from_origin
        dense_net, origin = dense
        kept_origin = {name: np.asarray(origin[name])[k] for name, k in keep.items()}
        dense_keep = keep_from_origin(dense_net.unit_layers(), kept_origin)
    compression = report_lib.compression_report(
        dense_net, compact_net, dense_keep, dataset.input_shape, measure_latency=config.latency,
        batch_sizes=(1, config.batch_size))
    write_json(out / REPORT_FILE, compression.to_dict())
    compact_io.save_compact(out / COMPACT_DIR, compact_net, params_samples=compact_samples, metadata={
        "task": task, "data": dataset.name, "noise_std": noise, "threshold": float(config.threshold),
        "compact_metrics": result["compact"], "preprocessing": dataset.preprocessing()})
    result.update(
        kept_units={l.name: l.kept for l in compression.layers if l.prunable},
        total_units={l.name: l.total for l in compression.layers if l.prunable},
        params_dense=compression.params_dense, params_compact=compression.params_compact,
        flops_dense=compression.flops_dense, flops_compact=compression.flops_compact,
        latency=[{"batch_size": r.batch_size, "dense_s": r.dense_s, "compact_s": r.compact_s,
                  "speedup": r.speedup} for r in compression.latency])
    if task == "classification":
        bins = metric_fns.calibration_bins(jnp.asarray(bma), jnp.asarray(dataset.y_test))
        result["_calibration"] = bins
    return result


def _plots(out: Path, history: list[dict], inclusion: Mapping[str, np.ndarray], calibration,
           threshold: float, log) -> None:
    from sparse_bnn import plots
    try:
        plots.write_run_plots(out / PLOTS_DIR, history, inclusion, calibration, threshold)
    except Exception as error:  # noqa: BLE001 - a failed figure must not lose a finished run
        log(f"warning: could not draw the plots: {error}")


# ----------------------------------------------------------------------------- evaluate / report

def read_run(run_dir: str | os.PathLike) -> tuple[RunConfig, dict]:
    """``(RunConfig, metrics)`` of a finished run; ``ValueError`` if it is not one."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(f"{run_dir} is not a sparse-bnn run directory (no {CONFIG_FILE})")
    if not (run_dir / METRICS_FILE).is_file():
        raise ValueError(f"{run_dir} holds an unfinished run (no {METRICS_FILE}); finish it with "
                         "sparse-bnn fit ... --resume")
    saved = json.loads((run_dir / CONFIG_FILE).read_text())
    return RunConfig.from_dict(saved["run"]), json.loads((run_dir / METRICS_FILE).read_text())


def evaluate_run(run_dir: str | os.PathLike, *, data_dir: str | None = None) -> dict:
    """Recompute the test metrics from the saved compact model and the data named in config.json.

    Returns ``{"compact": {...}, "compact_bma": {...}}`` (the median-probability network and
    Bayesian model averaging over the saved compact samples).
    """
    run_dir = Path(run_dir)
    config, _ = read_run(run_dir)
    if data_dir is not None:
        config.data_dir = data_dir
    dataset = load_run_dataset(config)
    architecture = compact_io.read_architecture(run_dir / COMPACT_DIR)
    noise = architecture.get("metadata", {}).get("noise_std")
    net = compact_io.load_compact(run_dir / COMPACT_DIR)
    result = {"compact": score(compact_predictions(net, dataset.x_test, dataset.task), dataset, noise=noise)}
    if architecture.get("num_samples"):
        net, samples = compact_io.load_compact_samples(run_dir / COMPACT_DIR)
        result["compact_bma"] = score(bma_predictions(FunctionalNet(net).apply, samples, dataset.x_test, dataset.task),
                                      dataset, noise=noise, samples=True)
    return result


def report_table(run_dir: str | os.PathLike) -> str:
    """The compression table of a finished run, with its test metrics."""
    run_dir = Path(run_dir)
    config, metrics = read_run(run_dir)
    compression = report_lib.CompressionReport.from_json((run_dir / REPORT_FILE).read_text())
    lines = [f"run {run_dir}: {config.prior} on {config.data}, net {config.net}, "
             f"{metrics.get('epochs')} epochs ({metrics.get('training_seconds', 0):.1f}s training)", ""]
    lines.append(compression.table())
    lines.append("")
    names = ("accuracy", "nll", "ece", "brier") if metrics["task"] == "classification" else ("rmse", "nll")
    lines.append(f"{'test':<22}" + "".join(f"{n:>12}" for n in names))
    for label, key in ((f"BMA ({metrics['bma'].get('samples')} samples)", "bma"), ("compact (median)", "compact")):
        lines.append(f"{label:<22}" + "".join(f"{metrics[key][n]:>12.4f}" for n in names))
    return "\n".join(lines)

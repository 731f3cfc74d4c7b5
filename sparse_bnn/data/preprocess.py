"""From arrays to a training-ready :class:`Dataset`: the record itself (with its JSON-able
preprocessing recipe), seeded splits and subsampling, scaling and standardisation with
training statistics, :func:`prepare_inputs` for new data, and :func:`flip_augment`, a pure JAX
function meant to run inside a jitted ``lax.scan``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sparse_bnn.data.checks import check_dataset, check_input_range, check_preprocessing  # noqa: F401
from sparse_bnn.data.formats import _check_finite
from sparse_bnn.errors import InputError

# ----------------------------------------------------------------------------------------------
# The Dataset record
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Dataset:
    """Train/validation/test arrays of one data set, already standardised.

    Attributes:
      name: data set name (``"fashion-mnist"``, a file name for user data, ...).
      task: ``"classification"`` or ``"regression"``.
      x_train, x_val, x_test: float32 inputs ``[N, *input_shape]`` (NHWC for images).
      y_train, y_val, y_test: int32 labels ``[N]`` (classification) or float32 ``[N, 1]``
        (regression, standardised when ``y_std`` is set).
      num_classes: number of classes, ``None`` for regression.
      input_shape: shape of one example, e.g. ``(28, 28, 1)`` or ``(64,)``.
      flip_augment: whether training should apply horizontal-flip augmentation.
      raw_divisor: the source's values are divided by this first (255 for 8-bit images, 16 for
        scikit-learn's digits, else 1).
      mean, std: the input standardisation (``x = (raw / raw_divisor - mean) / std``) from the
        training split: scalars for images, ``[D]`` for tabular data; ``None`` if not standardised.
      y_mean, y_std: the target standardisation (regression), ``[1]`` each, or ``None``.
      input_min, input_max: the range of the training inputs in the source's units (before
        ``raw_divisor``): scalars for images, per feature (``input_shape``) otherwise; what
        :func:`prepare_inputs` compares new inputs with.
      source: where the arrays came from (folder, file or generator).
      info: extra facts (e.g. the teacher's weights and true number of active units).
    """

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None
    input_shape: tuple[int, ...]
    flip_augment: bool = False
    raw_divisor: float = 1.0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None
    input_min: np.ndarray | None = None
    input_max: np.ndarray | None = None
    source: str = ""
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def input_dim(self) -> int:
        """Number of input features once an example is flattened."""
        return int(np.prod(self.input_shape))

    def targets_in_original_units(self, y: np.ndarray) -> np.ndarray:
        """Undo the target standardisation: ``y * y_std + y_mean`` (identity if none)."""
        if self.y_std is None:
            return np.asarray(y)
        return np.asarray(y) * self.y_std + self.y_mean

    def preprocessing(self) -> dict[str, Any]:
        """JSON-able recipe from the source's units to the network's inputs and from its outputs
        back to the source's target units: what :func:`prepare_inputs` and ``sparse-bnn predict``
        apply to new data."""
        def listed(array):
            return None if array is None else np.asarray(array).tolist()
        return {"task": self.task, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "raw_divisor": float(self.raw_divisor), "mean": listed(self.mean), "std": listed(self.std),
                "y_mean": listed(self.y_mean), "y_std": listed(self.y_std),
                "input_min": listed(self.input_min), "input_max": listed(self.input_max)}

    def summary(self) -> dict[str, Any]:
        """JSON-able description: sizes, shapes, classes, standardisation."""
        summary: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "num_train": int(len(self.x_train)),
            "num_val": int(len(self.x_val)),
            "num_test": int(len(self.x_test)),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "flip_augment": bool(self.flip_augment),
            "standardized": self.std is not None,
            "targets_standardized": self.y_std is not None,
            "source": self.source,
        }
        if self.task == "classification":
            counts = np.bincount(self.y_train, minlength=self.num_classes or 0)
            summary["train_class_counts"] = [int(c) for c in counts]
        else:
            summary["y_std_original_units"] = (
                float(self.y_std[0]) if self.y_std is not None else None)
        return summary


# ----------------------------------------------------------------------------------------------
# Splits, subsampling, standardisation
# ----------------------------------------------------------------------------------------------


def split_indices(num_examples: int, fraction: float, rng: np.random.Generator,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split into ``(keep, held_out)`` index arrays, held out ~``fraction``.

    With ``labels``, the split is stratified: each class contributes
    ``round(fraction * class_count)`` examples to the held-out part.
    """
    if labels is None:
        order = rng.permutation(num_examples)
        n_held = int(round(fraction * num_examples))
        return np.sort(order[n_held:]), np.sort(order[:n_held])
    held = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held.append(members[: int(round(fraction * len(members)))])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(num_examples), held_out)
    return keep, held_out


def _subsample(x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator,
               what: str) -> tuple[np.ndarray, np.ndarray]:
    if n is None:
        return x, y
    if not 1 <= n <= len(x):
        raise InputError(f"{what}={n} but only {len(x)} examples are available; "
                         f"pass 1 <= {what} <= {len(x)}")
    chosen = rng.permutation(len(x))[:n]
    return x[chosen], y[chosen]


def _scale_raw(x: np.ndarray, raw_divisor: float) -> np.ndarray:
    """``float32(x) / raw_divisor`` (no copy of float32 data when the divisor is 1)."""
    x = x.astype(np.float32, copy=False)
    return x if raw_divisor == 1 else x / np.float32(raw_divisor)


def _standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((x - mean) / std).astype(np.float32)


def _standardize_inputs(x_train: np.ndarray, others: list[np.ndarray], is_image: bool
                        ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Standardise with training statistics: one scalar for images, per feature otherwise.

    Zero-variance features get ``std = 1`` (they become 0 everywhere in the training split).
    """
    axes = None if is_image else 0
    mean = np.asarray(x_train.mean(axis=axes, dtype=np.float64))
    std = np.asarray(x_train.std(axis=axes, dtype=np.float64))
    std = np.where(std > 0, std, 1.0)
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    return _standardize(x_train, mean, std), [_standardize(x, mean, std) for x in others], mean, std


def prepare_inputs(x: np.ndarray, preprocessing: Mapping[str, Any], source: str = "inputs") -> np.ndarray:
    """New examples in the source's units -> the network's inputs, as the training data were made.

    Args:
      x: ``[N, *input_shape]`` numbers in the units of the data set's files (pixel values 0-255
        for the IDX and CIFAR-10 sets and for uint8 images of a ``.npz``, 0-16 for digits, raw
        features for tabular data). Images of one channel may leave the channel axis out, and
        examples of one channel or tabular data may come flattened (``[N, prod(input_shape)]``).
      preprocessing: :meth:`Dataset.preprocessing` of the training data.
      source: names the inputs in error messages.

    Returns:
      float32 ``[N, *input_shape]``.

    Warns:
      InputWarning: values far outside the range of the training inputs (other units?).

    Raises:
      InputError: no examples, non-numeric, complex or non-finite values, examples of another
        shape, or a malformed ``preprocessing``.
    """
    check_preprocessing(preprocessing)
    x = np.asarray(x)
    _check_finite(x, "the inputs", source)
    if x.ndim >= 1 and len(x) == 0:
        raise InputError(f"{source}: holds no examples (shape {x.shape}); give at least one")
    shape = tuple(preprocessing["input_shape"])
    flat = int(np.prod(shape))
    if x.shape[1:] != shape:
        single_channel = len(shape) == 1 or shape[-1] == 1
        if x.ndim >= 2 and single_channel and (x.shape[1:] == shape[:-1] or x.shape[1:] == (flat,)):
            x = x.reshape(len(x), *shape)
        else:
            raise InputError(f"{source}: examples of shape {x.shape[1:]}, but the model takes {shape}"
                             + (f" (or {flat} values per example)" if single_channel and len(shape) > 1 else ""))
    check_input_range(x, preprocessing, source)
    with np.errstate(over="ignore", invalid="ignore"):
        x = _scale_raw(x, preprocessing["raw_divisor"])
        if preprocessing["mean"] is not None:
            x = _standardize(x, np.asarray(preprocessing["mean"], np.float32),
                             np.asarray(preprocessing["std"], np.float32))
    if not np.all(np.isfinite(x)):
        raise InputError(f"{source}: values too large for float32 once scaled and standardised as the training "
                         "data were; give the inputs in the units of the training data")
    return x


def _check_labels(y: np.ndarray, what: str, source: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"{source}: {what} labels must have shape [N], got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_:
        raise InputError(f"{source}: {what} labels must be integers, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise InputError(f"{source}: {what} labels must be integers >= 0, found {int(y.min())}; "
                         "relabel the classes 0..K-1 (or store float targets for regression)")
    if len(y) and int(y.max()) >= 2 * len(np.unique(y)) + 100:
        raise InputError(f"{source}: {what} labels go up to {int(y.max())}, which would make {int(y.max()) + 1} "
                         f"classes, but only {len(np.unique(y))} distinct labels appear; relabel the classes "
                         "0..K-1 (or store float targets for regression)")
    return y.astype(np.int32)


def _assemble(name: str, task: str, x_train: np.ndarray, y_train: np.ndarray,
              x_test: np.ndarray, y_test: np.ndarray, *, num_classes: int | None,
              is_image: bool, validation_fraction: float, standardize: bool,
              standardize_targets: bool, seed: int, n_train: int | None, n_test: int | None,
              flip: bool, source: str, info: dict[str, Any] | None = None,
              raw_divisor: float = 1.0) -> Dataset:
    """Subsample, carve the validation split, scale (``/ raw_divisor``) and standardise with
    training statistics."""
    if not 0.0 <= validation_fraction < 1.0:
        raise InputError(f"validation_fraction={validation_fraction} must lie in [0, 1)")
    rng = np.random.default_rng(seed)
    x_train, y_train = _subsample(x_train, y_train, n_train, rng, "n_train")
    x_test, y_test = _subsample(x_test, y_test, n_test, rng, "n_test")
    classification = task == "classification"
    keep, held = split_indices(len(x_train), validation_fraction, rng,
                               labels=y_train if classification else None)
    if len(keep) == 0:
        raise InputError(f"validation_fraction={validation_fraction} leaves no training data")
    x_val, y_val = x_train[held], y_train[held]
    if len(held):
        x_train, y_train = x_train[keep], y_train[keep]

    input_min = input_max = None
    if len(x_train):  # the range of the raw training inputs: one scalar for images, else per feature
        input_min, input_max = (np.asarray(reduce(x_train, axis=None if is_image else 0), np.float64)
                                for reduce in (np.min, np.max))
    x_train, x_val, x_test = (_scale_raw(x, raw_divisor) for x in (x_train, x_val, x_test))
    mean = std = None
    if standardize:
        x_train, (x_val, x_test), mean, std = _standardize_inputs(x_train, [x_val, x_test],
                                                                   is_image)
    y_mean = y_std = None
    if classification:
        y_train, y_val, y_test = (y.astype(np.int32) for y in (y_train, y_val, y_test))
    else:
        y_train, y_val, y_test = (y.astype(np.float32).reshape(-1, 1)
                                  for y in (y_train, y_val, y_test))
        if standardize_targets:
            y_train, (y_val, y_test), y_mean, y_std = _standardize_inputs(
                y_train, [y_val, y_test], is_image=False)
    return Dataset(name=name, task=task, x_train=x_train, y_train=y_train, x_val=x_val,
                   y_val=y_val, x_test=x_test, y_test=y_test, num_classes=num_classes,
                   input_shape=tuple(int(d) for d in x_train.shape[1:]), flip_augment=flip,
                   raw_divisor=float(raw_divisor), mean=mean, std=std, y_mean=y_mean, y_std=y_std,
                   input_min=input_min, input_max=input_max, source=source, info=info or {})


# ----------------------------------------------------------------------------------------------
# Augmentation (JAX, jit-friendly)
# ----------------------------------------------------------------------------------------------


def flip_augment(key: jax.Array, x_batch: jax.Array) -> jax.Array:
    """Flip each NHWC image left-right with probability 1/2; identity for non-image data.

    Pure and shape-static, so it runs inside a jitted ``lax.scan``. Which images are flipped
    is ``jax.random.bernoulli(key, 0.5, (batch,))``. Each image gathers its columns in its own
    order (reversed or not): inside XLA:CPU's training step that costs half of selecting
    between the batch and its reverse (``jnp.where(flip, x[:, :, ::-1], x)``, the same values):
    0.33 against 0.75 ms per step of 1024 Fashion-MNIST images, a sixth of the SS-GHS step of a
    16-64 unit MLP.

    Args:
      key: PRNG key.
      x_batch: ``[B, H, W, C]`` images (anything of another rank is returned unchanged).
    """
    if x_batch.ndim != 4:
        return x_batch
    batch, _, width, _ = x_batch.shape
    flip = jax.random.bernoulli(key, 0.5, (batch,))
    columns = jnp.arange(width)
    order = jnp.where(flip[:, None], width - 1 - columns, columns)  # [B, W]
    return jnp.take_along_axis(x_batch, order[:, None, :, None], axis=2)

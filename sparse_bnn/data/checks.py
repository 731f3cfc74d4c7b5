"""Checks of a loaded data set before training (:func:`check_dataset`), of a stored
preprocessing recipe (:func:`check_preprocessing`) and of new inputs against the range of the
training inputs (:func:`check_input_range`).

Errors are :class:`~sparse_bnn.errors.InputError` naming the data set's source (or the file
holding the recipe); doubtful but usable input gets an :class:`~sparse_bnn.errors.InputWarning`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from sparse_bnn.errors import InputError, warn

__all__ = ["check_dataset", "check_input_range", "check_preprocessing"]

TASKS = ("classification", "regression")
MAX_INPUT_VALUES = 1 << 26  # values per example a recipe may declare


# ----------------------------------------------------------------------------- the data set

def check_dataset(dataset: Any) -> Any:
    """Refuse a :class:`~sparse_bnn.data.preprocess.Dataset` that training would only fail on later;
    warn for classes that only the test split holds. Returns ``dataset``.

    Raises:
      InputError: no training or no test examples; training, validation and test examples of
        different shapes; labels outside ``0..num_classes - 1``; regression targets of
        different widths.
    """
    source = dataset.source or dataset.name
    splits = {"training": (dataset.x_train, dataset.y_train), "validation": (dataset.x_val, dataset.y_val),
              "test": (dataset.x_test, dataset.y_test)}
    if len(dataset.x_train) == 0:
        raise InputError(f"{source}: the training split is empty; give more examples (or a smaller "
                         "--validation-fraction, a larger --n-train)")
    if len(dataset.x_test) == 0:
        raise InputError(f"{source}: the test split is empty, so the run could not be evaluated; give more "
                         "examples (a file without a test split keeps a fifth of them for testing), or "
                         "x_test/y_test in the .npz, or a larger --n-test")
    shape = dataset.x_train.shape[1:]
    for split, (x, y) in splits.items():
        if len(x) and x.shape[1:] != shape:
            raise InputError(f"{source}: the {split} examples have shape {x.shape[1:]} but the training "
                             f"examples {shape}; every split must hold examples of one shape")
        if len(x) != len(y):
            raise InputError(f"{source}: the {split} split has {len(x)} examples but {len(y)} targets")
        if dataset.task == "regression" and len(y) and y.shape[1:] != dataset.y_train.shape[1:]:
            raise InputError(f"{source}: the {split} targets have shape {y.shape[1:]}, the training targets "
                             f"{dataset.y_train.shape[1:]}")
    if dataset.task == "classification":
        _check_classes(dataset, source, splits)
    return dataset


def _check_classes(dataset: Any, source: str, splits: Mapping[str, tuple]) -> None:
    classes = dataset.num_classes
    for split, (_, y) in splits.items():
        if len(y) and (y.min() < 0 or classes is None or y.max() >= classes):
            raise InputError(f"{source}: {split} label {int(y.max())} outside 0..{(classes or 0) - 1}; "
                             "relabel the classes 0..K-1")
    trained = set(np.unique(dataset.y_train).tolist())
    unseen = sorted(set(np.unique(dataset.y_test).tolist()) - trained)
    if unseen:
        count = int(np.isin(dataset.y_test, unseen).sum())
        warn(f"{source}: classes {', '.join(map(str, unseen))} appear in the test split ({count} of "
             f"{len(dataset.y_test)} examples) but never in the training split, so the model cannot learn "
             "them and the test accuracy counts them as errors; give training examples of them (a larger "
             "--n-train) or drop them from the test split")


# ----------------------------------------------------------------------------- a stored recipe

def _array(value: Any, key: str, source: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{source}: preprocessing {key} is not a number or a list of numbers; "
                         "the saved model is corrupt: save it again") from None
    if not np.all(np.isfinite(array)):
        raise InputError(f"{source}: preprocessing {key} holds NaN/inf; the saved model is corrupt: save it again")
    return array


INPUT_KEYS = ("input_shape", "raw_divisor", "mean", "std")  # what prepare_inputs needs


def check_preprocessing(preprocessing: Any, source: str = "preprocessing",
                        required: tuple[str, ...] = INPUT_KEYS) -> Mapping[str, Any]:
    """Check a recipe of :meth:`~sparse_bnn.data.preprocess.Dataset.preprocessing` (as stored with a
    compact model) before it is applied: known task, positive input shape, positive divisor,
    ``mean``/``std`` (and ``input_min``/``input_max``) one scalar or one value per input,
    positive ``std``; the keys ``required`` must be there. Returns ``preprocessing``;
    :class:`InputError` naming ``source`` otherwise."""
    def bad(what: str) -> InputError:
        return InputError(f"{source}: preprocessing {what}; the saved model is corrupt: save it again "
                          "(or fit the run again)")

    if not isinstance(preprocessing, Mapping):
        raise bad(f"is {type(preprocessing).__name__}, not a mapping")
    missing = [k for k in (*INPUT_KEYS, *required) if k not in preprocessing]
    if missing:
        raise bad(f"lacks {', '.join(dict.fromkeys(missing))}")
    if "task" in preprocessing and preprocessing["task"] not in TASKS:
        raise bad(f"task {preprocessing['task']!r} is neither {' nor '.join(TASKS)}")
    shape = preprocessing["input_shape"]
    if not (isinstance(shape, list) and shape and all(type(d) is int and d > 0 for d in shape)
            and math.prod(shape) <= MAX_INPUT_VALUES):
        raise bad(f"input_shape {shape!r} is not a list of positive sizes (at most {MAX_INPUT_VALUES} values)")
    divisor = preprocessing["raw_divisor"]
    if type(divisor) not in (int, float) or not (math.isfinite(divisor) and divisor > 0):
        raise bad(f"raw_divisor {divisor!r} is not a positive number")
    image = len(shape) == 3
    for pair in (("mean", "std"), ("input_min", "input_max")):
        values = [preprocessing.get(k) for k in pair]
        if all(v is None for v in values):
            continue
        if any(v is None for v in values):
            raise bad(f"gives {pair[0]} or {pair[1]} without the other")
        for key, value in zip(pair, values):
            array = _array(value, key, source)
            wanted = [()] if image else [(), tuple(shape)]
            if array.shape not in wanted:
                raise bad(f"{key} has shape {list(array.shape)}, but the model takes inputs of shape {shape} "
                          f"(expected {' or '.join(str(list(w)) for w in wanted)})")
            if key == "std" and not np.all(array > 0):
                raise bad("std holds values <= 0")
    for key in ("y_mean", "y_std"):
        if preprocessing.get(key) is not None:
            array = _array(preprocessing[key], key, source)
            if array.ndim > 1 or (key == "y_std" and not np.all(array > 0)):
                raise bad(f"{key} {preprocessing[key]!r} is not a list of (positive) numbers")
    return preprocessing


# ----------------------------------------------------------------------------- new inputs

def check_input_range(x: np.ndarray, preprocessing: Mapping[str, Any], source: str = "inputs") -> None:
    """Warn when inputs ``x [N, *input_shape]`` (in the source's units) lie far outside the range
    of the training inputs: below its minimum or above its maximum by more than its width. The
    likely cause is other units (pixel values 0-255 for a model trained on 0-1, or the reverse
    of a standardisation). Recipes without a recorded range are not checked."""
    low, high = preprocessing.get("input_min"), preprocessing.get("input_max")
    if low is None or high is None or x.size == 0:
        return
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    width = high - low
    margin = np.where(width > 0, width, np.maximum(np.abs(high), 1.0))
    values = np.asarray(x, np.float64)
    outside = (values < low - margin) | (values > high + margin)
    if not outside.any():
        return
    examples = int(outside.reshape(len(x), -1).any(axis=1).sum())
    if np.ndim(low):
        feature = np.unravel_index(int(np.argmax(outside.reshape(len(x), -1).sum(axis=0))), np.shape(low))
        column = values[(slice(None), *feature)]
        where = (f"input {feature[0] if len(feature) == 1 else list(feature)}: the training inputs lie in "
                 f"[{low[feature]:.4g}, {high[feature]:.4g}], these go from {column.min():.4g} to {column.max():.4g}")
    else:
        where = (f"the training inputs lie in [{float(low):.4g}, {float(high):.4g}], these go from "
                 f"{float(values.min()):.4g} to {float(values.max()):.4g}")
    warn(f"{source}: {examples} of {len(x)} examples hold values far outside the training range ({where}); "
         "the predictions there are guesses: give the inputs in the units of the training data (pixel values "
         "0-255 if the model was trained on 0-255, 0-1 if on 0-1; raw features, not standardised ones)")

"""Checks of an untrusted ``architecture.json`` before anything is built from it.

:func:`check_architecture` checks types and bounds: a ``config`` of JSON scalars and short lists
with sizes in ``0..MAX_SIZE``, parameter and state shapes of bounded sizes, a sample count, and
the memory the arrays need (with the samples) against a stated bound (:data:`MAX_MODEL_BYTES`,
or the caller's). :func:`abstract_shapes` then builds the network of ``config`` abstractly
(``nnx.eval_shape``: shapes only, no arrays), stopping when it creates more variables than the
files hold, so that the config can be compared with the stored shapes before the real network
is allocated. Every failure is an :class:`~sparse_bnn.errors.InputError` naming the file.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from flax import nnx

from sparse_bnn.errors import InputError

MAX_MODEL_BYTES = 4 << 30  # parameters, state and samples together
MAX_SIZE = 1 << 24  # any one size in a config or a shape
MAX_LIST = 4096  # entries of one list in a config
MAX_SAMPLES = 100_000
KNOWN_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                "uint16", "uint32", "uint64", "bool")


def _corrupt(file: Path, what: str) -> InputError:
    return InputError(f"{file}: {what}; the saved model is corrupt or was altered: save it again")


def _check_value(file: Path, key: str, value: Any, depth: int = 0) -> None:
    """A config value: a string, bool, finite number, size in ``0..MAX_SIZE``, null, or a short
    list / small mapping of such values."""
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not 0 <= value <= MAX_SIZE:
            raise _corrupt(file, f"config {key} = {value} is outside 0..{MAX_SIZE}")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _corrupt(file, f"config {key} = {value} is not finite")
        return
    if depth >= 3 or not isinstance(value, (list, dict)):
        raise _corrupt(file, f"config {key} is a {type(value).__name__} nested too deep")
    if len(value) > MAX_LIST:
        raise _corrupt(file, f"config {key} has {len(value)} entries (at most {MAX_LIST})")
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for inner, entry in items:
        _check_value(file, f"{key}[{inner!r}]", entry, depth + 1)


def _check_shapes(file: Path, key: str, shapes: Any) -> int:
    """``{name: [sizes]}`` with sizes in ``0..MAX_SIZE``; returns the total number of values."""
    if not isinstance(shapes, dict):
        raise _corrupt(file, f"{key} is a {type(shapes).__name__}, not a mapping of array names to shapes")
    total = 0
    for name, shape in shapes.items():
        if not (isinstance(shape, list) and len(shape) <= 8
                and all(type(d) is int and 0 <= d <= MAX_SIZE for d in shape)):
            raise _corrupt(file, f"{key} {name}: {shape!r} is not a shape (at most 8 sizes in 0..{MAX_SIZE})")
        total += math.prod(shape)
    return total


def check_architecture(architecture: Mapping[str, Any], file: Path, max_bytes: int = MAX_MODEL_BYTES) -> None:
    """Types and bounds of a parsed ``architecture.json`` (see the module docstring).

    Raises:
      InputError: naming ``file`` and the first bad entry, or the memory the model would need.
    """
    config = architecture["config"]
    if not isinstance(config, dict) or not isinstance(config.get("net"), str):
        raise _corrupt(file, "config must be a mapping whose \"net\" names the architecture")
    for key, value in config.items():
        _check_value(file, key, value)
    values = _check_shapes(file, "param_shapes", architecture["param_shapes"])
    state = architecture.get("state_shapes") or {}
    values_state = _check_shapes(file, "state_shapes", state)
    for key in ("param_dtypes", "state_dtypes"):
        dtypes = architecture.get(key) or {}
        if not isinstance(dtypes, dict) or any(d not in KNOWN_DTYPES for d in dtypes.values()):
            raise _corrupt(file, f"{key} must map array names to numeric dtypes ({', '.join(KNOWN_DTYPES)})")
    samples = architecture.get("num_samples")
    if samples is not None and not (type(samples) is int and 1 <= samples <= MAX_SAMPLES):
        raise _corrupt(file, f"num_samples {samples!r} is not null or a count in 1..{MAX_SAMPLES}")
    if not isinstance(architecture.get("metadata", {}), dict):
        raise _corrupt(file, "metadata must be a mapping")
    needed = 8 * (values * (1 + (samples or 0)) + values_state)  # at most 8 bytes a value
    if needed > max_bytes:
        raise InputError(f"{file}: the model would need {needed / 2**30:.3g} GiB for its arrays (at 8 bytes a "
                         f"value), more than the bound of {max_bytes / 2**30:.3g} GiB; if the file is trusted, "
                         "pass a larger max_bytes")


class _TooManyVariables(Exception):
    pass


def abstract_shapes(build: Callable[[], nnx.Module], limit: int, file: Path
                    ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """``({param name: shape}, {other state name: shape})`` of the network ``build()`` makes,
    built abstractly (no arrays are allocated); stops with :class:`InputError` once it creates
    more than ``limit`` variables (a config asking for a network far larger than the files)."""
    from sparse_bnn.nets.base import flatten_paths, path_name

    variable_init, count = nnx.Variable.__init__.__code__, 0

    def count_variables(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code is variable_init:
            count += 1
            if count > limit:
                raise _TooManyVariables

    previous = sys.getprofile()
    sys.setprofile(count_variables)
    try:
        net = nnx.eval_shape(build)
    except _TooManyVariables:
        raise _corrupt(file, f"its config makes a network of more than {limit} arrays, far more than the files "
                             "hold") from None
    except Exception as error:  # noqa: BLE001 - an untrusted config can break a constructor in any way
        raise _corrupt(file, f"its config does not build a network ({type(error).__name__}: {error})") from None
    finally:
        sys.setprofile(previous)
    _, params, _, other = nnx.split(net, nnx.Param, nnx.RngState, ...)

    def shapes(state) -> dict[str, tuple[int, ...]]:
        return {path_name(path): tuple(getattr(value, "shape", ()))
                for path, value in flatten_paths(nnx.to_pure_dict(state)).items()}
    return shapes(params), shapes(other)


def compare_shapes(file: Path, kind: str, built: Mapping[str, tuple[int, ...]], stored: Mapping[str, list[int]]
                   ) -> None:
    """The abstract network's ``kind`` arrays must be the stored ones, name for name and shape for shape."""
    if set(built) != set(stored):
        missing, extra = sorted(set(built) - set(stored)), sorted(set(stored) - set(built))
        raise _corrupt(file, f"its config builds a network whose {kind} differ from {kind}_shapes "
                             f"(not stored: {missing[:5]}, not built: {extra[:5]})")
    for name, shape in built.items():
        if tuple(shape) != tuple(stored[name]):
            raise _corrupt(file, f"its config gives {name} the shape {list(shape)}, {kind}_shapes says "
                                 f"{stored[name]}")

"""Save and load compact networks without pickle.

Format (version 1): a directory holding

* ``architecture.json``::

      {"format": "sparse_bnn.compact", "format_version": 1,
       "config": {"net": "mlp", "in_features": 784, "widths": [37, 12], ...},
       "param_shapes": {"layers.0.kernel": [784, 37], ...},
       "param_dtypes": {"layers.0.kernel": "float32", ...},
       "state_shapes": {...}, "state_dtypes": {...},   # non-parameter state (batch statistics)
       "num_samples": 10,                               # or null without samples.msgpack
       "metadata": {...}}                               # anything JSON the caller passed

  ``config`` is the network's own ``config`` (``"net"`` names the registered architecture):
  ``sparse_bnn.nets.net_from_config(config)`` rebuilds the module with the compact widths.
* ``params.msgpack``: ``flax.serialization.msgpack_serialize`` of ``{"layers.0.kernel": array, ...}``,
  the ``nnx.Param`` values keyed by their dotted path.
* ``state.msgpack`` (only when the network has such state): the other variables
  (``nnx.BatchStat`` ...) in the same form. RNG state is not saved; a loaded network gets a
  fresh one.
* ``samples.msgpack`` (optional): posterior samples, ``{"layers.0.kernel": [S, 784, 37], ...}``.

A directory is written to a temporary sibling and renamed into place, so a reader never sees a
half-written model. Loading treats the files as untrusted: ``architecture.json`` is checked
against a schema (types, bounded sizes, a memory bound: :mod:`sparse_bnn.compact.schema`), its
config is built abstractly and compared with the stored shapes, and every array is checked
against those shapes (and for NaN/inf), all before the network is allocated. Every failure is an
:class:`~sparse_bnn.errors.InputError` naming the file.

Example::

    save_compact("model_dir", compact_net, params_samples=samples, metadata={"accuracy": 0.98})
    net = load_compact("model_dir")                  # an ordinary nnx.Module
    net, samples = load_compact_samples("model_dir") # samples: {path: [S, ...]}
    logits = compact_outputs(net, x)                 # [N, out]

The outputs of a loaded network (:func:`compact_outputs`, :func:`sampled_outputs`, :func:`batched`)
need nothing of the training stack (no NumPyro), so that prediction from a saved model stays light.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path as FilePath
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization

from sparse_bnn.compact import schema
from sparse_bnn.compact.schema import MAX_MODEL_BYTES
from sparse_bnn.atomic import umask_mode
from sparse_bnn.errors import InputError, MissingInputError
from sparse_bnn.nets import NETS, net_from_config
from sparse_bnn.nets.declaration import import_class
from sparse_bnn.nets.base import Path, flatten_paths, path_name, unflatten_paths

FORMAT = "sparse_bnn.compact"
FORMAT_VERSION = 1
ARCHITECTURE = "architecture.json"
PARAMS = "params.msgpack"
STATE = "state.msgpack"
SAMPLES = "samples.msgpack"

__all__ = ["FORMAT_VERSION", "batched", "compact_outputs", "load_compact", "load_compact_samples", "read_architecture",
           "sampled_outputs", "save_compact"]


def _split_state(net: nnx.Module) -> tuple[dict[Path, Any], dict[Path, Any]]:
    """``({path: Param value}, {path: other non-RNG state value})``."""
    _, params, _, other = nnx.split(net, nnx.Param, nnx.RngState, ...)
    return (flatten_paths(nnx.to_pure_dict(params)), flatten_paths(nnx.to_pure_dict(other)))


def _named(flat: Mapping[Path, Any]) -> dict[str, np.ndarray]:
    return {path_name(path): np.asarray(value) for path, value in flat.items()}


def save_compact(path: str | os.PathLike, net: nnx.Module,
                 params_samples: Mapping[Path, Any] | None = None,
                 metadata: Mapping[str, Any] | None = None, *, overwrite: bool = True) -> None:
    """Write ``net`` (and optionally posterior samples ``{path: [S, ...]}``) to directory ``path``.

    Args:
      path: target directory (replaced atomically when it exists and ``overwrite``).
      net: a network with a ``config`` (``"net"`` registered in ``sparse_bnn.nets.NETS``).
      params_samples: ``{param path: [S, *shape]}`` for every parameter of ``net``.
      metadata: JSON-serialisable extras stored in ``architecture.json``.
    """
    target = FilePath(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    params, state = _split_state(net)
    architecture = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": net.config,
        "param_shapes": {path_name(p): list(np.shape(v)) for p, v in params.items()},
        "param_dtypes": {path_name(p): str(np.asarray(v).dtype) for p, v in params.items()},
        "state_shapes": {path_name(p): list(np.shape(v)) for p, v in state.items()},
        "state_dtypes": {path_name(p): str(np.asarray(v).dtype) for p, v in state.items()},
        "num_samples": None, "metadata": dict(metadata or {})}
    samples = None
    if params_samples is not None:
        samples = _named(params_samples)
        expected = architecture["param_shapes"]
        if set(samples) != set(expected):
            raise InputError(f"params_samples paths {sorted(samples)} differ from the network's "
                             f"parameters {sorted(expected)}")
        sizes = {value.shape[0] if value.ndim else None for value in samples.values()}
        for name, value in samples.items():
            if list(value.shape[1:]) != expected[name] or len(sizes) != 1:
                raise InputError(f"sample array {name} has shape {value.shape}; expected "
                                 f"[S, {', '.join(map(str, expected[name]))}] with one S for all")
        architecture["num_samples"] = int(sizes.pop())
    try:
        architecture_text = json.dumps(architecture, indent=2)
    except TypeError as error:
        raise InputError(f"net.config and metadata must be JSON-serialisable: {error}") from error

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = FilePath(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(staging, umask_mode(0o777))
    try:
        (staging / ARCHITECTURE).write_text(architecture_text)
        (staging / PARAMS).write_bytes(serialization.msgpack_serialize(_named(params)))
        if state:
            (staging / STATE).write_bytes(serialization.msgpack_serialize(_named(state)))
        if samples is not None:
            (staging / SAMPLES).write_bytes(serialization.msgpack_serialize(samples))
        if target.exists():
            retired = FilePath(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old",
                                                dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_architecture(directory: str | os.PathLike, max_bytes: int = MAX_MODEL_BYTES) -> dict:
    """``architecture.json`` of a saved compact model, checked: format, version, required keys,
    and the schema of :func:`sparse_bnn.compact.schema.check_architecture` (types, bounded sizes,
    at most ``max_bytes`` of arrays)."""
    directory = FilePath(directory)
    file = directory / ARCHITECTURE
    if not directory.is_dir():
        raise MissingInputError(f"{directory} is not a saved compact model (no such directory)")
    if not file.is_file():
        raise MissingInputError(f"{file} is missing; {directory} is not a saved compact model")
    try:
        architecture = json.loads(file.read_bytes())
    except (ValueError, RecursionError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{file} is not valid JSON ({error}); the saved model is corrupt") from None
    if not isinstance(architecture, dict) or architecture.get("format") != FORMAT:
        raise InputError(f"{file} does not describe a {FORMAT} model")
    version = architecture.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{file} has format_version {version!r}; this sparse_bnn reads version "
                         f"{FORMAT_VERSION}")
    for key in ("config", "param_shapes"):
        if key not in architecture:
            raise InputError(f"{file} lacks {key!r}; the saved model is corrupt")
    schema.check_architecture(architecture, file, max_bytes)
    return architecture


def _read_arrays(file: FilePath, shapes: Mapping[str, list[int]], leading: int | None = None,
                 max_bytes: int = MAX_MODEL_BYTES) -> dict[str, np.ndarray]:
    if not file.is_file():
        raise MissingInputError(f"{file} is missing; the saved model is incomplete")
    if file.stat().st_size > max_bytes:
        raise InputError(f"{file} holds {file.stat().st_size} bytes, more than the bound of {max_bytes}; "
                         "if the file is trusted, pass a larger max_bytes")
    try:
        arrays = serialization.msgpack_restore(file.read_bytes())
    except Exception as error:  # noqa: BLE001 - msgpack raises several unrelated exception types
        raise InputError(f"{file} cannot be decoded as msgpack ({type(error).__name__}: {error}); "
                         "the saved model is corrupt") from None
    if not isinstance(arrays, dict) or set(arrays) != set(shapes):
        found = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
        raise InputError(f"{file} holds {found}, but {ARCHITECTURE} lists {sorted(shapes)}")
    for name, shape in shapes.items():
        expected = ([leading] if leading is not None else []) + list(shape)
        value = arrays[name]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub" and value.dtype.name != "bfloat16":
            raise InputError(f"{file}: {name} is not an array of numbers; the saved model is corrupt")
        if list(value.shape) != expected:
            raise InputError(f"{file}: array {name} has shape {list(value.shape)}; {ARCHITECTURE} says {expected}")
        floats = value if value.dtype.kind == "f" else value.astype(np.float32) if value.dtype.kind not in "iub" else None
        if floats is not None and not np.all(np.isfinite(floats)):
            raise InputError(f"{file}: array {name} holds NaN/inf; the saved model is corrupt: save it again")
    return arrays


def _fill(net: nnx.Module, variable_type, arrays: Mapping[str, np.ndarray], directory: FilePath):
    state = nnx.state(net, variable_type)
    flat = flatten_paths(nnx.to_pure_dict(state))
    by_name = {path_name(path): path for path in flat}
    if set(by_name) != set(arrays):
        raise InputError(f"the network rebuilt from {directory / ARCHITECTURE} has variables "
                         f"{sorted(by_name)}, the files hold {sorted(arrays)}")
    for name, value in arrays.items():
        if tuple(np.shape(flat[by_name[name]])) != tuple(np.shape(value)):
            raise InputError(f"the rebuilt network's {name} has shape {np.shape(flat[by_name[name]])}, "
                             f"the file holds {np.shape(value)}")
    nnx.replace_by_pure_dict(state, unflatten_paths({by_name[n]: jax.numpy.asarray(v)
                                                     for n, v in arrays.items()}))
    nnx.update(net, state)


def _checked_config(architecture: Mapping[str, Any], file: FilePath) -> dict:
    """The config of ``architecture``, once its network, built abstractly, has the stored shapes."""
    config = architecture["config"]
    if isinstance(config["net"], str) and ":" in config["net"]:  # a declared module's class, imported
        try:
            import_class(config["net"])
        except ValueError as error:
            raise InputError(f"{file}: {error}") from None
    elif config["net"] not in NETS:  # the registered net class is looked up here
        raise InputError(f"{file}: unknown net {config['net']!r}; this sparse_bnn knows {', '.join(sorted(NETS))} "
                         "(register a custom net with sparse_bnn.nets.register_net before loading)")
    param_shapes, state_shapes = architecture["param_shapes"], architecture.get("state_shapes") or {}
    limit = 4 * (len(param_shapes) + len(state_shapes)) + 64
    params, state = schema.abstract_shapes(lambda: net_from_config(config), limit, file)
    schema.compare_shapes(file, "param", params, param_shapes)
    schema.compare_shapes(file, "state", state, state_shapes)
    return config


def load_compact(path: str | os.PathLike, *, max_bytes: int = MAX_MODEL_BYTES) -> nnx.Module:
    """The network saved at ``path`` (an ordinary ``nnx.Module`` of the registered class).

    Nothing is allocated before ``architecture.json`` passed its schema (at most ``max_bytes`` of
    arrays) and its config, built abstractly, matched the stored shapes.

    Raises:
      InputError: naming the file that is missing, corrupt or inconsistent.
    """
    directory = FilePath(path)
    architecture = read_architecture(directory, max_bytes)
    config = _checked_config(architecture, directory / ARCHITECTURE)
    params = _read_arrays(directory / PARAMS, architecture["param_shapes"], max_bytes=max_bytes)
    state_shapes = architecture.get("state_shapes") or {}
    state = _read_arrays(directory / STATE, state_shapes, max_bytes=max_bytes) if state_shapes else {}
    net = net_from_config(config)
    _fill(net, nnx.Param, params, directory)
    if state_shapes:
        _fill(net, nnx.Not(nnx.Any(nnx.Param, nnx.RngState)), state, directory)
    return net


def load_compact_samples(path: str | os.PathLike, *, max_bytes: int = MAX_MODEL_BYTES
                         ) -> tuple[nnx.Module, dict[Path, np.ndarray]]:
    """``(network, {param path: [S, ...]})`` from a directory saved with ``params_samples``.

    Use the samples with ``jax.vmap(FunctionalNet(net).apply, in_axes=(0, None))``.
    """
    directory = FilePath(path)
    architecture = read_architecture(directory, max_bytes)
    if architecture.get("num_samples") is None:
        raise InputError(f"{directory} was saved without posterior samples; use load_compact")
    net = load_compact(directory, max_bytes=max_bytes)
    arrays = _read_arrays(directory / SAMPLES, architecture["param_shapes"],
                          leading=int(architecture["num_samples"]), max_bytes=max_bytes)
    paths = {path_name(p): p for p in flatten_paths(nnx.to_pure_dict(nnx.state(net, nnx.Param)))}
    return net, {paths[name]: jax.numpy.asarray(value) for name, value in arrays.items()}


# -- outputs of a loaded network ------------------------------------------------------------


def batched(fn: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` over ``x`` in batches of ``batch_size``, joined along the examples' axis (the
    second of ``[S, B, out]`` outputs, else the first)."""
    outs = [np.asarray(fn(jnp.asarray(x[i:i + batch_size]))) for i in range(0, x.shape[0], batch_size)]
    return np.concatenate(outs, axis=-2 if outs[0].ndim == 3 else 0)


def sampled_outputs(apply: Callable, samples: Mapping[Path, jax.Array], x: jax.Array) -> jax.Array:
    """Outputs ``[S, B, out]`` of ``apply(params, x)`` for ``S`` parameter samples
    ``{path: [S, ...]}`` on a batch ``x [B, ...]``."""
    outputs = jax.vmap(apply, in_axes=(0, None))(samples, x)
    return outputs.reshape(outputs.shape[0], x.shape[0], -1)


def compact_outputs(net: nnx.Module, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Outputs ``[N, out]`` (logits or means) of a (compact) network on examples ``x [N, ...]``."""
    graphdef, state = nnx.split(net)
    forward = jax.jit(lambda s, xb: nnx.merge(graphdef, s)(xb))  # weights as arguments, not constants
    return batched(lambda xb: forward(state, xb), np.asarray(x, np.float32), batch_size)

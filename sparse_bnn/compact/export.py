"""A compact model as one self-contained ``jax.export`` artifact (``sparse-bnn export RUN --out FILE``).

:func:`export` writes a serialized :class:`jax.export.Exported`: StableHLO with the weights as
constants, the run's input preprocessing folded in and a symbolic batch dimension, so that the
model runs with plain JAX, at any batch size, without ``sparse_bnn`` installed::

    from jax import export
    model = export.deserialize(bytearray(open("model.jax", "rb").read()))
    probs = model.call(x.astype("float32"))       # x [N, *input_shape] in the data set's units

What the function computes, for ``x [N, *input_shape]`` float32 in the data set's own units (pixel
values 0-255, raw features), is what ``sparse-bnn predict`` computes:

* classification: class probabilities ``[N, C]``;
* regression: ``(mean [N, out], std [N, out])`` in the targets' units (``std``: the noise plus,
  with ``samples=True``, the spread of the sampled means).

By default it is the median-probability network with posterior-mean weights (``predict --median``,
the run's ``compact`` metrics): one forward pass, the smallest artifact. ``samples=True``
averages over the compact model's saved posterior samples instead (``predict`` without
``--median``, the run's ``compact_bma`` metrics), at ``S`` times the constants and the work.
A network given as a module, without a run's metadata, exports its raw outputs ``[N, out]``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_bnn.compact import io as compact_io
from sparse_bnn.errors import InputError
from sparse_bnn.nets import FunctionalNet

DEFAULT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
EXPORT_FORMATS = ("stablehlo",)

__all__ = ["DEFAULT_PLATFORMS", "EXPORT_FORMATS", "ExportedModel", "export", "exported_function", "load_exported"]


class ExportedModel(NamedTuple):
    """What :func:`export` wrote: the file, the ``jax.export.Exported`` and what it takes and gives."""

    path: Path
    exported: Any            # jax.export.Exported
    input_shape: tuple[int, ...]
    outputs: str             # "probs", "mean_std" or "outputs"
    samples: int | None      # posterior samples averaged over (None: the posterior-mean network)


def _preprocess(x: jax.Array, preprocessing: Mapping[str, Any] | None) -> jax.Array:
    """:func:`sparse_bnn.data.preprocess.prepare_inputs`'s arithmetic, traced (no checks)."""
    if preprocessing is None:
        return x
    x = x / jnp.float32(preprocessing["raw_divisor"]) if preprocessing["raw_divisor"] != 1 else x
    if preprocessing.get("mean") is not None:
        x = (x - jnp.asarray(preprocessing["mean"], jnp.float32)) / jnp.asarray(preprocessing["std"], jnp.float32)
    return x


def exported_function(net: nnx.Module, *, samples: Mapping | None = None, task: str | None = None,
                      preprocessing: Mapping[str, Any] | None = None, noise_std: float | None = None):
    """The function :func:`export` lowers: ``x [N, *input_shape] -> outputs`` with the weights (and
    ``samples {path: [S, ...]}``) closed over as constants. ``task`` ``None`` gives raw outputs."""
    graphdef, state = nnx.split(net)
    apply = FunctionalNet(net).apply
    y_mean = y_std = None
    if preprocessing is not None and preprocessing.get("y_std") is not None:
        y_mean, y_std = (jnp.asarray(preprocessing[k], jnp.float32) for k in ("y_mean", "y_std"))
    noise = jnp.float32(noise_std or 0.0)

    def sampled(x):  # [S, N, out]
        outputs = jax.vmap(apply, in_axes=(0, None))(samples, x)
        return outputs.reshape(outputs.shape[0], x.shape[0], -1)

    def function(x):
        x = _preprocess(x, preprocessing)
        outputs = sampled(x) if samples is not None else nnx.merge(graphdef, state)(x).reshape(1, x.shape[0], -1)
        if task == "classification":
            return jnp.mean(jax.nn.softmax(outputs, -1), axis=0)
        if task == "regression":
            mean, std = outputs.mean(0), jnp.sqrt(outputs.var(0) + noise ** 2)
            if y_std is not None:
                mean, std = mean * y_std + y_mean, std * y_std
            return mean, std
        return outputs[0]
    return function


def _from_directory(directory: Path, samples: bool) -> dict[str, Any]:
    """Network, samples, task, preprocessing and noise of a run directory or a compact model directory."""
    from sparse_bnn.compact.deploy import run_preprocessing
    from sparse_bnn.experiment.run_files import COMPACT_DIR
    if (directory / compact_io.ARCHITECTURE).is_file():  # a compact model directory
        model_dir, preprocessing = directory, None
    else:
        preprocessing = run_preprocessing(directory)  # says what is wrong with a directory that is no run
        model_dir = directory / COMPACT_DIR
    architecture = compact_io.read_architecture(model_dir)
    metadata = architecture.get("metadata", {})
    preprocessing = preprocessing if preprocessing is not None else metadata.get("preprocessing")
    if samples and not architecture.get("num_samples"):
        raise InputError(f"{model_dir} was saved without posterior samples; export the posterior-mean network "
                         "(leave out --samples)")
    net, draws = compact_io.load_compact_samples(model_dir) if samples else (compact_io.load_compact(model_dir), None)
    return dict(net=net, samples=draws, task=metadata.get("task"), preprocessing=preprocessing, noise_std=metadata.get("noise_std"))


def export(model: nnx.Module | str | os.PathLike, path: str | os.PathLike, *, samples: bool = False,
           input_shape: Sequence[int] | None = None, preprocessing: Mapping[str, Any] | None = None,
           task: str | None = None, platforms: Sequence[str] = DEFAULT_PLATFORMS,
           format: str = "stablehlo") -> ExportedModel:
    """Write ``model`` to ``path`` as a serialized ``jax.export`` artifact (see the module docstring).

    Args:
      model: a run directory (``sparse-bnn fit --out``), a compact model directory
        (:func:`sparse_bnn.compact.io.save_compact`) or a compact network (``nnx.Module``).
      path: the file to write (its folder must exist).
      samples: average over the saved posterior samples (a directory saved with samples only)
        instead of the posterior-mean network.
      input_shape: one example's shape; by default the run's (``preprocessing["input_shape"]``).
        Needed for a module exported without ``preprocessing``.
      preprocessing: for a module: :meth:`sparse_bnn.data.preprocess.Dataset.preprocessing` of its
        training data, folded into the function.
      task: for a module: ``"classification"`` (probabilities) or ``"regression"`` (mean and
        std); ``None`` exports the raw outputs.
      platforms: what the artifact is lowered for (``jax.export`` platform names).
      format: ``"stablehlo"`` (the only one).

    Returns:
      :class:`ExportedModel`. Raises :class:`~sparse_bnn.errors.InputError` for a model that cannot be
      read, a missing input shape, an unknown format or a folder of ``path`` that does not exist.
    """
    if format not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    if path.is_dir() or not path.parent.is_dir():
        raise InputError(f"--out {path}: give a file name in an existing folder")
    if isinstance(model, nnx.Module):
        parts = dict(net=model, samples=None, task=task, preprocessing=preprocessing, noise_std=None)
        if samples:
            raise InputError("samples=True needs a run or compact model directory saved with posterior samples")
    else:
        parts = _from_directory(Path(model), samples)
    shape = input_shape if input_shape is not None else (parts["preprocessing"] or {}).get("input_shape")
    if shape is None:
        raise InputError("the model's input shape is unknown: pass input_shape (one example's shape)")
    function = exported_function(parts["net"], samples=parts["samples"], task=parts["task"],
                                 preprocessing=parts["preprocessing"], noise_std=parts["noise_std"])
    batch, = jax.export.symbolic_shape("batch")
    exported = jax.export.export(jax.jit(function), platforms=tuple(platforms))(
        jax.ShapeDtypeStruct((batch, *map(int, shape)), jnp.float32))
    from sparse_bnn import atomic
    atomic.write_bytes(path, bytes(exported.serialize()))
    outputs = {"classification": "probs", "regression": "mean_std"}.get(parts["task"], "outputs")
    count = None if parts["samples"] is None else int(np.shape(next(iter(parts["samples"].values())))[0])
    return ExportedModel(path, exported, tuple(map(int, shape)), outputs, count)


def load_exported(path: str | os.PathLike):
    """The ``jax.export.Exported`` in ``path`` (what the artifact's users do with plain JAX)."""
    return jax.export.deserialize(bytearray(Path(path).read_bytes()))

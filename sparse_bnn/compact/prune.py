"""Node pruning: keep masks -> masked dense parameters, or a physically smaller network.

Given a network that follows the :class:`~sparse_bnn.nets.base.SparseNet` protocol, its
*effective* parameters ``{path: array}`` (posterior means with scales folded in) and a keep mask
per unit layer, this module builds

* :func:`mask_params`: the dense network with the removed units' own parameters set to 0
  (the reference the compact network must reproduce);
* :func:`compact`: the same Flax NNX class built with the kept widths, holding the kept slices:
  every member array is sliced along its unit axis, every consumer array along its input axis;
* :func:`compact_samples`: the same for a stack of posterior samples ``{path: [S, ...]}``, ready
  for ``jax.vmap`` over the sample axis (Bayesian model averaging with the compact network).

A removed unit still sends ``inactive_output = activation(0)`` downstream in the masked network
(0.5 for a sigmoid). For dense consumers that constant is folded into the consumer's bias:
``bias += inactive_output * sum(removed input rows)``. A convolution consumer cannot take the
fold: with zero padding the constant input only reaches the kernel taps that fall inside the
image, so its contribution differs near the border; :func:`compact` raises
``NotImplementedError`` there.

**A layer with every unit removed.** Flax cannot build a layer with zero features (the fan-in
initialisers divide by the width, and the nets check widths > 0), so such a layer keeps one
*placeholder* unit: its own parameters are those of the masked network (zeros) and its outgoing
consumer rows are set to 0; its constant output, like every removed unit's, is folded into the
consumers' biases. The compact network then gives exactly the masked network's output,
downstream biases included, at the cost of one unit. :func:`kept_units` reports the true count.

Example::

    keep = threshold_keep(inclusion_probs, threshold=0.5)
    small_net, small_params = compact(net, params, keep)
    logits = FunctionalNet(small_net)(small_params, x)
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_bnn.compact.keep import KeepMasks, Params, _axis_indices, _broadcast, check_keep, check_params, mask_params
from sparse_bnn.nets import net_from_config
from sparse_bnn.nets.base import ParamAxis, Path, UnitLayer, flatten_paths, path_name, unflatten_paths
from sparse_bnn.nets.declaration import declaration_of
from sparse_bnn.nets.resize import resize

__all__ = ["compact", "compact_params", "compact_samples"]


# ----------------------------------------------------------------------------- compact


def _slice_masks(masks: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], set[str]]:
    """Masks of the units the compact net holds: a fully pruned layer keeps unit 0 as placeholder."""
    slice_masks, placeholders = {}, set()
    for name, mask in masks.items():
        if not mask.any():
            mask = np.zeros_like(mask)
            mask[0] = True
            placeholders.add(name)
        slice_masks[name] = mask
    return slice_masks, placeholders


def _module_at(net: nnx.Module, path: Path):
    node = net
    for key in path:
        try:
            node = node[key] if isinstance(key, int) else getattr(node, key)
        except (AttributeError, IndexError, KeyError, TypeError):
            return None
    return node


def _bias_path(path: Path) -> Path:
    return path[:-1] + ("bias",)


def compact_params(net: nnx.Module, params: Mapping[Path, jax.Array],
                   keep: KeepMasks) -> Params:
    """The compact network's parameters ``{path: array}`` (no module built).

    Args and result as :func:`compact`; the computation is jit-compiled once per call.
    """
    layers = net.unit_layers()
    masks = check_keep(layers, keep)
    check_params(net, params)
    return jax.jit(lambda p: _compact_flat(net, layers, p, masks))(dict(params))


def _compact_flat(net: nnx.Module, layers: Sequence[UnitLayer], params: Mapping[Path, jax.Array],
                  masks: dict[str, np.ndarray]) -> Params:
    """Traceable core of :func:`compact_params` (``layers`` and ``masks`` computed outside)."""
    slice_masks, placeholders = _slice_masks(masks)
    out = {path: jnp.asarray(value) for path, value in mask_params(layers, params, masks).items()}

    # Fold what removed (and placeholder) units still send downstream into the consumers' biases,
    # then zero the placeholder's outgoing rows: the compact net reproduces the masked one.
    for layer in layers:
        removed = ~masks[layer.name]  # all True for a placeholder layer
        if not removed.any():
            continue
        for ref in layer.consumers:
            if ref.path not in out:
                continue
            kernel = out[ref.path]
            if layer.inactive_output != 0.0:
                out = _fold_inactive(net, out, layer, ref, removed)
            if layer.name in placeholders:
                placeholder_rows = _axis_indices(slice_masks[layer.name], ref.interleave)
                row_factor = np.ones(kernel.shape[ref.axis], dtype=kernel.dtype)
                row_factor[placeholder_rows] = 0
                out[ref.path] = out[ref.path] * _broadcast(row_factor, kernel.ndim,
                                                           ParamAxis(ref.path, ref.axis))
    return _slice(layers, out, slice_masks)


def _fold_inactive(net: nnx.Module, params: Params, layer: UnitLayer, ref: ParamAxis,
                   removed: np.ndarray) -> Params:
    module = _module_at(net, ref.path[:-1])
    if isinstance(module, (nnx.Conv, nnx.ConvTranspose)):
        raise NotImplementedError(
            f"layer {layer.name!r} has inactive_output={layer.inactive_output} and feeds the "
            f"convolution {path_name(ref.path[:-1])}: with zero padding a constant input reaches "
            "only the kernel taps inside the image, so its contribution depends on the position "
            "and cannot be folded into a bias. Use an activation with activation(0) = 0 "
            "(ReLU, SiLU, tanh, GELU) before convolutions, or keep those units.")
    bias_path = _bias_path(ref.path)
    if bias_path not in params:
        raise NotImplementedError(
            f"layer {layer.name!r} has inactive_output={layer.inactive_output}, so removing its "
            f"units needs a bias in its consumer {path_name(ref.path[:-1])}, which has none")
    kernel = params[ref.path]
    rows = _axis_indices(removed, ref.interleave)
    folded = layer.inactive_output * jnp.take(kernel, rows, axis=ref.axis).sum(axis=ref.axis)
    bias = params[bias_path]
    if folded.shape != bias.shape:
        raise NotImplementedError(
            f"cannot fold the inactive output of layer {layer.name!r} into "
            f"{path_name(bias_path)}: the removed rows of {path_name(ref.path)} sum to shape "
            f"{folded.shape}, the bias has shape {bias.shape}")
    return {**params, bias_path: bias + folded}


def _slice(layers: Sequence[UnitLayer], flat: Mapping[Path, Any],
           slice_masks: dict[str, np.ndarray]) -> dict[Path, Any]:
    """Slice members along their unit axes and consumers along their input axes."""
    out = dict(flat)
    for layer in layers:
        mask = slice_masks[layer.name]
        if mask.all():
            continue
        for ref in (*layer.members, *layer.consumers):
            if ref.path not in out:
                continue
            value = out[ref.path]
            indices = _axis_indices(mask, ref.interleave)
            take = jnp.take if isinstance(value, jax.Array) else np.take
            out[ref.path] = take(value, indices, axis=ref.axis)
    return out


def _compact_module(net: nnx.Module, masks: dict[str, np.ndarray],
                    compact_flat_params: Mapping[Path, jax.Array]) -> nnx.Module:
    """Build the compact NNX module and fill it: params given, other state sliced from ``net``."""
    layers = net.unit_layers()
    slice_masks, _ = _slice_masks(masks)
    units = {name: int(mask.sum()) for name, mask in slice_masks.items()}
    if declaration_of(net) is not None:  # a module declared with declare_units: cut a copy
        template = resize(net, units)
    else:
        config = type(net).config_with_units(net.config, units)
        try:
            template = nnx.eval_shape(lambda: net_from_config(config))
        except jax.errors.JAXTypeError:
            # A constructor that checks values (``float(activation(0))``, ...) cannot be traced;
            # build it for real (the compact network is small) and overwrite every value below.
            template = net_from_config(config)
    graphdef, template_params, template_rest = nnx.split(template, nnx.Param, ...)

    _, _, rest = nnx.split(net, nnx.Param, ...)
    rest_flat = _slice(layers, flatten_paths(nnx.to_pure_dict(rest)), slice_masks)

    for what, template_state, flat in (("parameter", template_params, compact_flat_params),
                                       ("state", template_rest, rest_flat)):
        expected = flatten_paths(nnx.to_pure_dict(template_state))
        if set(expected) != set(flat):
            raise ValueError(f"{type(net).__name__}.config_with_units built a network whose {what} "
                             f"paths {sorted(map(path_name, expected))} differ from the sliced ones "
                             f"{sorted(map(path_name, flat))}")
        for path, spec in expected.items():
            if tuple(np.shape(flat[path])) != tuple(spec.shape):
                raise ValueError(f"{type(net).__name__}.config_with_units built {path_name(path)} "
                                 f"with shape {tuple(spec.shape)}, but the kept slice has shape "
                                 f"{tuple(np.shape(flat[path]))}; the unit layers and the config "
                                 "disagree")
        nnx.replace_by_pure_dict(template_state, unflatten_paths(dict(flat)))
    return nnx.merge(graphdef, template_params, template_rest)


def compact(net: nnx.Module, params: Mapping[Path, jax.Array],
            keep: KeepMasks) -> tuple[nnx.Module, Params]:
    """The network with only the kept units, and its parameters.

    Args:
      net: a network following the ``SparseNet`` protocol (its non-parameter state, such as
        batch statistics, is sliced from it as it is).
      params: ``{path: array}`` effective parameters for ``net`` (every ``nnx.Param`` path).
      keep: ``{layer_name: bool [units]}``; absent layers keep every unit.

    Returns:
      ``(compact_net, compact_params)``: the same class built with the kept widths and holding
      ``compact_params`` (``{path: array}``, also usable with ``FunctionalNet(compact_net)``).
      ``compact_net(x)`` equals the masked dense network ``mask_params`` describes.
    """
    masks = check_keep(net.unit_layers(), keep)
    small = compact_params(net, params, masks)
    return _compact_module(net, masks, small), small


def compact_samples(net: nnx.Module, param_samples: Mapping[Path, jax.Array],
                    keep: KeepMasks) -> tuple[nnx.Module, Params]:
    """:func:`compact` for ``S`` posterior samples ``{path: [S, ...]}``.

    Returns ``(compact_net, {path: [S, ...]})``; the module holds the first sample. Average
    predictions with ``jax.vmap(FunctionalNet(compact_net).apply, in_axes=(0, None))``.
    """
    masks = check_keep(net.unit_layers(), keep)
    check_params(net, param_samples, leading=1)
    sizes = {np.shape(v)[0] for v in param_samples.values()}
    if len(sizes) != 1:
        raise ValueError(f"every parameter needs the same number of samples on axis 0, got {sorted(sizes)}")
    layers = net.unit_layers()
    small = jax.jit(jax.vmap(lambda p: _compact_flat(net, layers, p, masks)))(
        dict(param_samples))
    first = {path: value[0] for path, value in small.items()}
    return _compact_module(net, masks, first), small

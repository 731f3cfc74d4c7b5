"""The compaction check: does removing units of a declared network commute with compacting it?

:func:`check_compaction` removes a random half of the units of every prunable layer, builds the
masked dense network (:func:`sparse_bnn.compact.keep.mask_params`) and the compact one
(:func:`sparse_bnn.compact.prune.compact`), and compares their outputs on the example input and
on a random input of its shape, with randomly perturbed parameters (so that zero biases and unit
norm scales hide nothing). When they differ it repeats the test one layer at a time and raises a
``ValueError`` naming the first layer whose pruning does not commute.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_bnn.nets.base import FunctionalNet

__all__ = ["check_compaction"]

TOLERANCE = 1e-4


def _perturbed(params: dict, rng: np.random.Generator) -> dict:
    out = {}
    for path, value in params.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            noise = rng.normal(size=value.shape) * 0.1 * (float(np.std(value)) + 0.1)
            value = (value + noise).astype(value.dtype)
        out[path] = jnp.asarray(value)
    return out


def _inputs(example_input: Any, rng: np.random.Generator) -> list:
    x = jnp.asarray(example_input)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return [x, jnp.asarray(rng.normal(size=x.shape), x.dtype)]
    return [x]


def _difference(net: nnx.Module, params: dict, keep: dict, inputs: list) -> str | None:
    """Why the compact network differs from the masked one, or ``None`` when it does not."""
    from sparse_bnn.compact.keep import mask_params
    from sparse_bnn.compact.prune import compact
    try:
        layers = net.unit_layers()
        small, small_params = compact(net, params, keep)
        masked_apply, compact_apply = jax.jit(FunctionalNet(net).apply), jax.jit(FunctionalNet(small).apply)
        worst, scale = 0.0, 0.0
        for x in inputs:
            masked = np.asarray(masked_apply(mask_params(layers, params, keep), x), np.float64)
            result = np.asarray(compact_apply(small_params, x), np.float64)
            if masked.shape != result.shape:
                return f"the compact network gives outputs of shape {result.shape}, not {masked.shape}"
            worst = max(worst, float(np.max(np.abs(masked - result), initial=0.0)))
            scale = max(scale, float(np.max(np.abs(masked), initial=0.0)))
    except Exception as error:  # a declaration that does not fit the network fails in many ways
        return f"compacting it fails ({type(error).__name__}: {str(error).splitlines()[0]})"
    if not worst <= TOLERANCE * (1.0 + scale):
        return (f"the compact network's outputs differ from the masked network's by up to "
                f"{worst:.3g} (outputs up to {scale:.3g})")
    return None


def check_compaction(net: nnx.Module, example_input: Any, *, seed: int = 0) -> None:
    """Raise ``ValueError`` unless compacting ``net`` (its ``unit_layers()``) reproduces the
    masked network, for random keep masks, on ``example_input`` ``[B, ...]`` and a random
    input of the same shape. The network is compared in evaluation mode."""
    net = nnx.clone(net)
    net.eval()
    rng = np.random.default_rng(seed)
    params = _perturbed(FunctionalNet(net).initial, rng)
    inputs = _inputs(example_input, rng)
    keep = {}
    for layer in net.unit_layers():
        if layer.prunable and layer.units > 1:
            mask = np.ones(layer.units, dtype=bool)
            mask[rng.permutation(layer.units)[:max(1, layer.units // 2)]] = False
            keep[layer.name] = mask
    if not keep:
        return
    failure = _difference(net, params, keep, inputs)
    if failure is None:
        return
    for name, mask in keep.items():
        single = _difference(net, params, {name: mask}, inputs)
        if single is not None:
            raise ValueError(f"unit layer {name!r} of {type(net).__name__} does not commute with "
                             f"pruning: with some of its units removed, {single}. Fix its "
                             "declaration (members, consumers, inactive_output), keep it whole "
                             "(prunable=False or not_prunable), or change the architecture")
    raise ValueError(f"the unit layers of {type(net).__name__} do not commute with pruning together: "
                     f"{failure}")

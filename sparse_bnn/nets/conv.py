"""2-D convolutions whose gradients stay fast inside XLA:CPU loops.

``jax.grad`` of ``lax.conv_general_dilated`` gives two convolutions: one for the input, with
the kernel's feature dimensions swapped in its dimension numbers, and one for the kernel, which
contracts the batch. Outside loops XLA:CPU runs both with its fast convolution code; inside the
body of a ``lax.scan`` or ``while_loop`` (where every training epoch of this library runs) it
falls back to a generic loop for them, about ten times slower for the input's gradient and
over a hundred times for the kernel's on LeNet-5-Caffe's second convolution.

:func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature and forward pass and,
on CPU, this custom gradient: the input's as a convolution of the output gradient with the
flipped kernel, transposed in memory to ``HWIO`` (the canonical layout); the kernel's as one
matrix product of the input's patches (im2col, ``kh * kw`` strided slices) with the output
gradient. Other backends, and arguments it does not cover (dilations, feature groups,
layouts other than ``NHWC``/``HWIO``, padding wider than the kernel), get ``lax``'s own.

``CONV_GRADIENT`` picks the gradient when a function is traced: ``"auto"`` (the custom one
on CPU), ``"explicit"`` (the custom one everywhere) or ``"lax"``; :func:`conv_gradient` sets it
for a block (``with conv_gradient("lax"): ...``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

__all__ = ["CONV_GRADIENT", "CONV_GRADIENTS", "Conv", "conv_general_dilated", "conv_gradient",
           "uses_explicit_gradient"]

CONV_GRADIENT = "auto"
CONV_GRADIENTS = ("auto", "explicit", "lax")

_NHWC_HWIO = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def _checked(mode: str) -> str:
    if mode not in CONV_GRADIENTS:
        raise ValueError(f"the conv gradient must be one of {CONV_GRADIENTS}, got {mode!r}")
    return mode


@contextmanager
def conv_gradient(mode: str) -> Iterator[None]:
    """Trace the convolutions inside the block with gradient ``mode`` (see the module doc)."""
    global CONV_GRADIENT
    saved, CONV_GRADIENT = CONV_GRADIENT, _checked(mode)
    try:
        yield
    finally:
        CONV_GRADIENT = saved


def _explicit_pads(lhs_shape, rhs_shape, window_strides, padding) -> tuple | None:
    """``((lo, hi), (lo, hi))`` for the two spatial axes, or None if ``padding`` is not 2-D."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], window_strides, padding))
    pads = tuple(tuple(int(p) for p in pair) for pair in padding)
    return pads if len(pads) == 2 and all(len(p) == 2 for p in pads) else None


def _covered_pads(lhs_shape, rhs_shape, window_strides, padding, lhs_dilation=None,
                  rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                  batch_group_count=1) -> tuple | None:
    """The explicit pads if :func:`conv_general_dilated` uses its own gradient, else None."""
    mode = _checked(CONV_GRADIENT)
    if mode == "lax" or (mode == "auto" and jax.default_backend() != "cpu"):
        return None
    if len(lhs_shape) != 4 or len(rhs_shape) != 4 or feature_group_count != 1 \
            or batch_group_count != 1:
        return None
    if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
        return None
    if dimension_numbers is None or \
            lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) != _NHWC_HWIO:
        return None
    pads = _explicit_pads(lhs_shape, rhs_shape, tuple(window_strides), padding)
    if pads is None or not all(0 <= lo < k and 0 <= hi < k
                               for (lo, hi), k in zip(pads, rhs_shape[:2])):
        return None
    return pads


def uses_explicit_gradient(lhs_shape, rhs_shape, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1) -> bool:
    """Whether :func:`conv_general_dilated` would use its own gradient for these arguments."""
    return _covered_pads(lhs_shape, rhs_shape, window_strides, padding, lhs_dilation,
                         rhs_dilation, dimension_numbers, feature_group_count,
                         batch_group_count) is not None


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None, out_sharding=None):
    """``lax.conv_general_dilated`` with the loop-friendly CPU gradient described above.

    For the covered case ``lhs [B, H, W, C_in]``, ``rhs [kh, kw, C_in, C_out]`` ->
    ``[B, H_out, W_out, C_out]``.
    """
    strides = tuple(int(s) for s in window_strides)
    pads = None if out_sharding is not None else _covered_pads(
        lhs.shape, rhs.shape, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count)
    if pads is not None:
        return _conv(strides, pads, precision, preferred_element_type, lhs, rhs)
    sharding = {} if out_sharding is None else {"out_sharding": out_sharding}
    return lax.conv_general_dilated(
        lhs, rhs, strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type, **sharding)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _conv(strides, pads, precision, preferred_element_type, lhs, rhs):
    return lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=_NHWC_HWIO,
                                    precision=precision,
                                    preferred_element_type=preferred_element_type)


def _conv_fwd(strides, pads, precision, preferred_element_type, lhs, rhs):
    return _conv(strides, pads, precision, preferred_element_type, lhs, rhs), (lhs, rhs)


def _conv_bwd(strides, pads, precision, preferred_element_type, residuals, grad_out):
    lhs, rhs = residuals
    return (_input_gradient(grad_out, rhs, lhs.shape, strides, pads, precision).astype(lhs.dtype),
            _kernel_gradient(grad_out, lhs, rhs.shape, strides, pads, precision).astype(rhs.dtype))


_conv.defvjp(_conv_fwd, _conv_bwd)


def _input_gradient(grad_out, rhs, lhs_shape, strides, pads, precision):
    """``[B, H_out, W_out, C_out] -> [B, H, W, C_in]``: a stride-1 conv of the (stride-dilated)
    output gradient with the flipped kernel, transposed to ``[kh, kw, C_out, C_in]``."""
    flipped = jnp.flip(rhs, (0, 1)).transpose(0, 1, 3, 2)
    out_sizes = grad_out.shape[1:3]
    grad_pads = []
    for size, out_size, k, s, (lo, _) in zip(lhs_shape[1:3], out_sizes, rhs.shape[:2], strides,
                                              pads):
        before = k - 1 - lo
        after = size + k - 1 - ((out_size - 1) * s + 1) - before
        grad_pads.append((before, after))
    return lax.conv_general_dilated(grad_out, flipped, (1, 1), grad_pads, lhs_dilation=strides,
                                    dimension_numbers=_NHWC_HWIO, precision=precision)


def _kernel_gradient(grad_out, lhs, rhs_shape, strides, pads, precision):
    """``[kh, kw, C_in, C_out]``: the input's patches ``[B * H_out * W_out, kh * kw * C_in]``
    (im2col) contracted with the output gradient ``[B * H_out * W_out, C_out]``."""
    kh, kw, c_in, c_out = rhs_shape
    padded = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    batch, h_out, w_out, _ = grad_out.shape
    sh, sw = strides
    patches = jnp.concatenate([
        lax.slice(padded, (0, i, j, 0),
                  (batch, i + (h_out - 1) * sh + 1, j + (w_out - 1) * sw + 1, c_in),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)], axis=-1)
    patches = patches.reshape(-1, kh * kw * c_in)
    grad = lax.dot_general(patches, grad_out.reshape(-1, c_out), (((0,), (0,)), ((), ())),
                           precision=precision)
    return grad.reshape(kh, kw, c_in, c_out)


def Conv(in_features: int, out_features: int, kernel_size: Sequence[int], **kwargs) -> nnx.Conv:
    """``nnx.Conv`` whose convolution is :func:`conv_general_dilated` (same parameters)."""
    return nnx.Conv(in_features, out_features, kernel_size,
                    conv_general_dilated=conv_general_dilated, **kwargs)

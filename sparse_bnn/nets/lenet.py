"""LeNet-style convolutional networks: LeNet-5-Caffe and the classic LeNet-5.

Both are ``convs (+ max-pool) -> flatten -> dense layers -> classifier``. Every conv output
channel (its whole ``kh x kw x C_in`` filter and its bias) is a unit; every hidden dense node
is a unit. The dense layer after the flattened ``[B, H, W, C]`` feature map consumes channel
``c`` through rows ``p * C + c`` (``ParamAxis(..., interleave=H*W)``).

* :class:`LeNet5Caffe` (``"lenet5-caffe"``): conv 20 (5x5, VALID) + pool 2, conv 50 (5x5,
  VALID) + pool 2, as in the Caffe example used by the sparse-BNN literature; for ``28x28x1``
  inputs the flattened map has 800 entries and the dense layers are ``800 -> 800 -> 500 -> 10``
  (1,071,880 parameters).
* :class:`LeNet5` (``"lenet5"``): conv 6 (5x5) + pool 2, conv 16 (5x5, VALID) + pool 2,
  conv 120 (5x5, VALID) -> dense 84 -> classes. The first conv pads ``SAME`` for ``28x28``
  inputs and ``VALID`` for ``32x32`` inputs (``first_padding="auto"``), so that in both cases
  the third conv sees a ``5x5`` map and outputs a ``1x1x120`` map, as in LeCun et al. (1998),
  whose ``32x32`` input is MNIST padded by 2 pixels.

Activations must satisfy ``act(0) = 0`` so that a removed channel sends exactly zero through
max-pooling and padding. SiLU by default, as in the spike-and-slab reference code's
LeNet-5-Caffe and in this library's MLP and ResNets: under spike-and-slab SVI a ReLU LeNet can
die (no pre-activation of its second conv stays positive, and the likelihood stays at
``nll = log 10``); SiLU has a gradient everywhere (docs/tuning.md, "LeNet activation").
"""
from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from sparse_bnn.nets.base import ImageNet, ParamAxis, UnitLayer, check_widths, with_group_sizes
from sparse_bnn.nets.conv import Conv
from sparse_bnn.nets.mlp import get_activation

KERNEL_SIZE = 5
POOL = 2
DEFAULT_ACTIVATION = "silu"


def zero_preserving_activation(name: str):
    """The activation called ``name``; raises unless ``act(0) == 0``."""
    act = get_activation(name)
    with jax.ensure_compile_time_eval():  # concrete even while tracing (nnx.eval_shape)
        at_zero = float(act(0.0))
    if at_zero != 0.0:
        raise ValueError(f"activation {name!r} has act(0) = {at_zero}; convolutional nets "
                         "need act(0) = 0 so that removed channels send exactly zero "
                         "(use relu, silu, gelu, tanh, elu or leaky_relu)")
    return act


def max_pool(x: jax.Array) -> jax.Array:
    """``POOL x POOL`` max-pooling with stride ``POOL``, ``VALID`` (a trailing odd row or column
    is dropped): ``[B, H, W, C] -> [B, H // POOL, W // POOL, C]``.

    Written as a reshape and a max rather than ``nnx.max_pool``: same values, and a faster
    LeNet-5-Caffe step on CPU. Tied maxima (a switched-off
    channel's zeros, a ReLU's zeros) share the gradient instead of the first taking it all; the
    window's total gradient is the same.
    """
    batch, height, width, channels = x.shape
    h, w = height // POOL, width // POOL
    x = x[:, :h * POOL, :w * POOL, :].reshape(batch, h, POOL, w, POOL, channels)
    return x.max(axis=(2, 4))


def _conv_out(size: int, padding: str) -> int:
    return size if padding == "SAME" else size - KERNEL_SIZE + 1


class ConvNet(ImageNet, nnx.Module):
    """``convs (5x5, optional 2x2 max-pool each) -> flatten -> dense -> classifier``.

    Args:
      image_size: input height = width.
      in_channels: input channels.
      conv_channels: output channels of each conv.
      conv_paddings: ``"SAME"`` or ``"VALID"`` per conv.
      conv_pools: whether a 2x2 max-pool follows each conv.
      dense_widths: hidden dense widths after flattening.
      num_classes: outputs.
      activation: name from ``nets.mlp.ACTIVATIONS`` with ``act(0) = 0``.

    Shapes: ``x [B, image_size, image_size, in_channels] -> [B, num_classes]``.
    """

    name = "convnet"

    def __init__(self, image_size: int, in_channels: int, conv_channels: Sequence[int],
                 conv_paddings: Sequence[str], conv_pools: Sequence[bool],
                 dense_widths: Sequence[int], num_classes: int,
                 activation: str = DEFAULT_ACTIVATION, *, rngs: nnx.Rngs):
        self.image_size, self.in_channels, self.num_classes = check_widths(
            (image_size, in_channels, num_classes), "image_size/in_channels/num_classes")
        self.conv_channels = check_widths(conv_channels, "conv_channels")
        self.dense_widths = check_widths(dense_widths, "dense_widths")
        self.conv_paddings = tuple(str(p).upper() for p in conv_paddings)
        self.conv_pools = tuple(bool(p) for p in conv_pools)
        n = len(self.conv_channels)
        if len(self.conv_paddings) != n or len(self.conv_pools) != n:
            raise ValueError(f"conv_paddings and conv_pools need one entry per conv ({n}), got "
                             f"{list(self.conv_paddings)} and {list(self.conv_pools)}")
        if any(p not in ("SAME", "VALID") for p in self.conv_paddings):
            raise ValueError(f"conv_paddings must be 'SAME' or 'VALID', got {list(self.conv_paddings)}")
        self.activation = activation
        self.act = zero_preserving_activation(activation)

        size = self.image_size
        feature_sizes = []  # spatial size after each conv (+ pool)
        for padding, pool in zip(self.conv_paddings, self.conv_pools):
            size = _conv_out(size, padding)
            size = size // POOL if pool else size
            if size < 1:
                raise ValueError(f"image_size {self.image_size} is too small for this network: the "
                                 "feature map vanishes; use a larger input")
            feature_sizes.append(size)
        self.feature_sizes = tuple(feature_sizes)
        self.flat_positions = size * size

        channels = (self.in_channels, *self.conv_channels)
        self.convs = nnx.List([
            Conv(a, b, (KERNEL_SIZE, KERNEL_SIZE), padding=p, rngs=rngs)
            for a, b, p in zip(channels[:-1], channels[1:], self.conv_paddings)])
        sizes = (self.flat_positions * channels[-1], *self.dense_widths, self.num_classes)
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (self.image_size, self.image_size, self.in_channels):
            raise ValueError(f"{type(self).__name__} expects inputs [B, {self.image_size}, "
                             f"{self.image_size}, {self.in_channels}] (NHWC), got {x.shape}")
        for conv, pool in zip(self.convs, self.conv_pools):
            x = self.act(conv(x))
            if pool:
                x = max_pool(x)
        x = x.reshape(x.shape[0], -1)
        for layer in self.dense[:-1]:
            x = self.act(layer(x))
        return self.dense[-1](x)

    def unit_layers(self) -> tuple[UnitLayer, ...]:
        channels = (self.in_channels, *self.conv_channels)
        n_conv, n_dense = len(self.convs), len(self.dense)
        out = []
        for i in range(n_conv):
            if i + 1 < n_conv:
                consumers = (ParamAxis(("convs", i + 1, "kernel"), 2),)
            else:
                consumers = (ParamAxis(("dense", 0, "kernel"), 0, interleave=self.flat_positions),)
            out.append(UnitLayer(
                name=f"conv{i}", units=channels[i + 1], fan_in=channels[i] * KERNEL_SIZE ** 2,
                members=(ParamAxis(("convs", i, "kernel"), 3), ParamAxis(("convs", i, "bias"), 0)),
                consumers=consumers))
        sizes = (self.flat_positions * channels[-1], *self.dense_widths, self.num_classes)
        for i in range(n_dense):
            last = i + 1 == n_dense
            out.append(UnitLayer(
                name=f"dense{i}", units=sizes[i + 1], fan_in=sizes[i],
                members=(ParamAxis(("dense", i, "kernel"), 1), ParamAxis(("dense", i, "bias"), 0)),
                consumers=() if last else (ParamAxis(("dense", i + 1, "kernel"), 0),),
                prunable=not last))
        return with_group_sizes(self, out)

    @property
    def config(self) -> dict:
        return {"net": self.name, "image_size": self.image_size, "in_channels": self.in_channels,
                "conv_channels": list(self.conv_channels),
                "conv_paddings": list(self.conv_paddings), "conv_pools": list(self.conv_pools),
                "dense_widths": list(self.dense_widths), "num_classes": self.num_classes,
                "activation": self.activation}

    @classmethod
    def from_config(cls, config: dict, rngs: nnx.Rngs) -> "ConvNet":
        return cls(config["image_size"], config["in_channels"], config["conv_channels"],
                   config["conv_paddings"], config["conv_pools"], config["dense_widths"],
                   config["num_classes"], config.get("activation", DEFAULT_ACTIVATION), rngs=rngs)

    @classmethod
    def config_with_units(cls, config: dict, units: dict[str, int]) -> dict:
        conv = [units.get(f"conv{i}", c) for i, c in enumerate(config["conv_channels"])]
        dense = [units.get(f"dense{i}", w) for i, w in enumerate(config["dense_widths"])]
        return {**config, "conv_channels": conv, "dense_widths": dense}


class LeNet5Caffe(ConvNet):
    """LeNet-5-Caffe: conv 20 + pool, conv 50 + pool, dense 800 -> 500 -> classes.

    Shapes: ``x [B, image_size, image_size, in_channels] -> [B, num_classes]``; ``28x28x1``
    inputs give a ``4x4x50`` map (800 features); ``32x32x3`` inputs a ``5x5x50`` map (1250).
    """

    name = "lenet5-caffe"

    def __init__(self, image_size: int = 28, in_channels: int = 1, num_classes: int = 10,
                 conv_channels: Sequence[int] = (20, 50), dense_widths: Sequence[int] = (800, 500),
                 activation: str = DEFAULT_ACTIVATION, *, rngs: nnx.Rngs):
        if len(conv_channels) != 2:
            raise ValueError(f"LeNet-5-Caffe has 2 convs, got conv_channels={list(conv_channels)}")
        super().__init__(image_size, in_channels, conv_channels, ("VALID", "VALID"), (True, True),
                         dense_widths, num_classes, activation, rngs=rngs)

    @classmethod
    def from_config(cls, config: dict, rngs: nnx.Rngs) -> "LeNet5Caffe":
        if list(config.get("conv_paddings", ["VALID"] * 2)) != ["VALID", "VALID"]:
            raise ValueError(f"LeNet-5-Caffe convs pad VALID, got {config['conv_paddings']}")
        return cls(config["image_size"], config["in_channels"], config["num_classes"],
                   config["conv_channels"], config["dense_widths"],
                   config.get("activation", DEFAULT_ACTIVATION), rngs=rngs)

    @classmethod
    def example_config(cls) -> dict:
        """A tiny instance for fast tests: ``16x16x1`` inputs, 3 and 4 channels, dense 6, 5."""
        return {"net": cls.name, "image_size": 16, "in_channels": 1, "conv_channels": [3, 4],
                "conv_paddings": ["VALID", "VALID"], "conv_pools": [True, True],
                "dense_widths": [6, 5], "num_classes": 3, "activation": "relu"}


class LeNet5(ConvNet):
    """LeNet-5: conv 6 + pool, conv 16 + pool, conv 120 (1x1 map), dense 84 -> classes.

    ``first_padding="auto"`` pads the first conv ``SAME`` for 28x28 inputs and ``VALID``
    otherwise (32x32 inputs), so the third conv outputs a ``1x1x120`` map in both cases.

    Shapes: ``x [B, image_size, image_size, in_channels] -> [B, num_classes]``.
    """

    name = "lenet5"

    def __init__(self, image_size: int = 28, in_channels: int = 1, num_classes: int = 10,
                 conv_channels: Sequence[int] = (6, 16, 120), dense_widths: Sequence[int] = (84,),
                 activation: str = DEFAULT_ACTIVATION, first_padding: str = "auto", *,
                 rngs: nnx.Rngs):
        if len(conv_channels) != 3:
            raise ValueError(f"LeNet-5 has 3 convs, got conv_channels={list(conv_channels)}")
        if first_padding == "auto":
            first_padding = "SAME" if image_size == 28 else "VALID"
        super().__init__(image_size, in_channels, conv_channels, (first_padding, "VALID", "VALID"),
                         (True, True, False), dense_widths, num_classes, activation, rngs=rngs)

    @classmethod
    def from_config(cls, config: dict, rngs: nnx.Rngs) -> "LeNet5":
        first_padding = config.get("conv_paddings", ["auto"])[0]
        return cls(config["image_size"], config["in_channels"], config["num_classes"],
                   config["conv_channels"], config["dense_widths"],
                   config.get("activation", DEFAULT_ACTIVATION), first_padding, rngs=rngs)

    @classmethod
    def example_config(cls) -> dict:
        """A tiny instance: ``32x32x1`` inputs with a SAME first conv, so the last conv outputs a
        ``2x2`` map (exercising the interleaved flatten)."""
        return {"net": cls.name, "image_size": 32, "in_channels": 1, "conv_channels": [3, 4, 5],
                "conv_paddings": ["SAME", "VALID", "VALID"], "conv_pools": [True, True, False],
                "dense_widths": [6], "num_classes": 3, "activation": "relu"}

"""CIFAR ResNets (He et al. 2016, §4.2): ResNet-20, ResNet-32, ... with prunable channels.

``stem conv 3x3 -> 3 stages of (depth - 2) / 6 basic blocks -> global average pool -> dense``.
A basic block is ``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))``; the first block of
stages 2 and 3 halves the resolution (stride 2) and its shortcut is a 1x1 conv + BN, every
other shortcut is the identity. Convs have no bias (a BN follows each); SiLU by default.

Unit layers (the pruning rule for the residual stream):

* ``block{i}``: the output channels of the *first* conv of block ``i`` (counted over the whole
  network). Members: that conv's filters and its BN's scale, bias, running mean and variance;
  consumers: the input channels of the block's second conv.
* ``stream{s}``: the channels of the residual stream of stage ``s``. Every conv that writes
  into the stream (the stem conv for stage 0, the 1x1 shortcut conv of stage ``s > 0``, and
  the second conv of every block of the stage) adds into the same channels, so channel ``c``
  of the stream is ONE unit shared by all of them: its members are channel ``c`` of all those
  convs and their BNs; its consumers are everything that reads the stream (the first convs of
  the stage's blocks, the first conv and the shortcut conv of the next stage's first block,
  or the classifier). ``fan_in`` is the number of kernel entries one stream unit owns (the
  sum of its writers' ``C_in * kh * kw``); its ``group_size`` adds each writer's BN scale
  and offset (running statistics are not random weights).
* ``head``: the classifier (not prunable).

Removing a stream channel zeroes it in every writer, so the sum stays exactly zero
(``act(0) = 0``) and the channel can be sliced away everywhere. Batch-norm running
statistics are members too: they live in ``nnx.BatchStat`` state, not in ``nnx.Param``.

Batch norm: a new network is in training mode (batch statistics); ``net.eval()`` switches to
the running statistics, ``net.train()`` back. :func:`recompute_batch_stats` sets the running
statistics by passes over data ("precise BN") before evaluation.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_bnn.nets.base import ImageNet, image_net_config, ParamAxis, UnitLayer, check_widths, with_group_sizes
from sparse_bnn.nets.conv import Conv
from sparse_bnn.nets.lenet import zero_preserving_activation

BN_MOMENTUM = 0.9
BN_FIELDS = ("scale", "bias", "mean", "var")


def _iter_modules(module: nnx.Module):
    """``(path, submodule)`` pairs: ``nnx.iter_modules`` (newer Flax; the method is deprecated there)."""
    return nnx.iter_modules(module) if hasattr(nnx, "iter_modules") else module.iter_modules()


def _batch_norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=1e-5, rngs=rngs)


def _channel_members(prefix: tuple, conv: str, bn: str) -> tuple[ParamAxis, ...]:
    """A conv's output channels and the BN entries of the same channels."""
    return (ParamAxis((*prefix, conv, "kernel"), 3),
            *(ParamAxis((*prefix, bn, field), 0) for field in BN_FIELDS))


class BasicBlock(nnx.Module):
    """Two 3x3 convs with BN and a shortcut. ``x [B, H, W, C_in] -> [B, H/stride, W/stride, C_out]``.

    ``downsample`` adds a 1x1 conv + BN shortcut (needed when the stride or width changes).
    """

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, stride: int,
                 downsample: bool, act, *, rngs: nnx.Rngs):
        if not downsample and (stride != 1 or in_channels != out_channels):
            raise ValueError("an identity shortcut needs stride 1 and in_channels == out_channels; "
                             "pass downsample=True")
        self.act = act
        self.conv1 = Conv(in_channels, inner_channels, (3, 3), strides=stride, padding="SAME",
                          use_bias=False, rngs=rngs)
        self.bn1 = _batch_norm(inner_channels, rngs)
        self.conv2 = Conv(inner_channels, out_channels, (3, 3), padding="SAME", use_bias=False,
                          rngs=rngs)
        self.bn2 = _batch_norm(out_channels, rngs)
        if downsample:
            self.shortcut_conv = Conv(in_channels, out_channels, (1, 1), strides=stride,
                                      padding="SAME", use_bias=False, rngs=rngs)
            self.shortcut_bn = _batch_norm(out_channels, rngs)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.act(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
        return self.act(h + shortcut)


class ResNet(ImageNet, nnx.Module):
    """CIFAR ResNet of depth ``6 n + 2`` (20, 32, 44, 56, 110).

    Args:
      depth: ``6 n + 2``; ``n = (depth - 2) / 6`` blocks per stage.
      widths: residual-stream channels of the three stages, ``(16, 32, 64)``.
      num_classes: outputs.
      in_channels: input channels.
      block_widths: output channels of the first conv of each block (``3 n`` entries);
        ``None`` gives the stage width (the standard network).
      activation: name from ``nets.mlp.ACTIVATIONS`` with ``act(0) = 0`` (SiLU by default).
      image_size: nominal input height = width (recorded in the config; the network is fully
        convolutional and accepts other sizes).

    Shapes: ``x [B, H, W, in_channels] -> [B, num_classes]``.
    """

    reference_sigma_0 = 0.2
    reference_inclusion = 1e-4

    def __init__(self, depth: int = 20, widths: Sequence[int] = (16, 32, 64), num_classes: int = 10,
                 in_channels: int = 3, block_widths: Sequence[int] | None = None,
                 activation: str = "silu", image_size: int = 32, *, rngs: nnx.Rngs):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6 n + 2 with n >= 1 (20, 32, ...), got {depth}")
        self.depth = int(depth)
        self.blocks_per_stage = (self.depth - 2) // 6
        self.widths = check_widths(widths, "widths")
        if len(self.widths) != 3:
            raise ValueError(f"widths needs one entry per stage (3), got {list(self.widths)}")
        n_blocks = 3 * self.blocks_per_stage
        if block_widths is None:
            block_widths = [w for w in self.widths for _ in range(self.blocks_per_stage)]
        self.block_widths = check_widths(block_widths, "block_widths")
        if len(self.block_widths) != n_blocks:
            raise ValueError(f"block_widths needs one entry per block ({n_blocks} for depth "
                             f"{self.depth}), got {len(self.block_widths)}")
        self.num_classes, self.in_channels, self.image_size = check_widths(
            (num_classes, in_channels, image_size), "num_classes/in_channels/image_size")
        self.activation = activation
        self.act = zero_preserving_activation(activation)

        self.stem_conv = Conv(self.in_channels, self.widths[0], (3, 3), padding="SAME",
                              use_bias=False, rngs=rngs)
        self.stem_bn = _batch_norm(self.widths[0], rngs)
        blocks = []
        for i in range(n_blocks):
            stage, first = self.stage_of(i), i % self.blocks_per_stage == 0
            downsample = first and stage > 0
            in_channels = self.widths[stage - 1] if downsample else self.widths[stage]
            blocks.append(BasicBlock(in_channels, self.block_widths[i], self.widths[stage],
                                     2 if downsample else 1, downsample, self.act, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(self.widths[-1], self.num_classes, rngs=rngs)

    def stage_of(self, block: int) -> int:
        return block // self.blocks_per_stage

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"ResNet expects NHWC inputs [B, H, W, {self.in_channels}], got {x.shape}")
        x = self.act(self.stem_bn(self.stem_conv(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))

    def unit_layers(self) -> tuple[UnitLayer, ...]:
        n = self.blocks_per_stage
        out = []
        for stage in range(3):
            first_block = stage * n
            if stage == 0:
                members = list(_channel_members((), "stem_conv", "stem_bn"))
                fan_in = self.in_channels * 9
            else:
                members = list(_channel_members(("blocks", first_block), "shortcut_conv", "shortcut_bn"))
                fan_in = self.widths[stage - 1]
            consumers = []
            for i in range(first_block, first_block + n):
                members += _channel_members(("blocks", i), "conv2", "bn2")
                fan_in += self.block_widths[i] * 9
                if i > first_block or stage == 0:
                    consumers.append(ParamAxis(("blocks", i, "conv1", "kernel"), 2))
            if stage < 2:
                consumers += [ParamAxis(("blocks", first_block + n, "conv1", "kernel"), 2),
                              ParamAxis(("blocks", first_block + n, "shortcut_conv", "kernel"), 2)]
            else:
                consumers.append(ParamAxis(("head", "kernel"), 0))
            # Forward order: a stream comes after the first conv of the block that opens it.
            if stage > 0:
                out.append(self._block_layer(first_block))
            out.append(UnitLayer(name=f"stream{stage}", units=self.widths[stage], fan_in=fan_in,
                                 members=tuple(members), consumers=tuple(consumers),
                                 inactive_output=0.0))
            for i in range(first_block + (stage > 0), first_block + n):
                out.append(self._block_layer(i))
        out.append(UnitLayer(
            name="head", units=self.num_classes, fan_in=self.widths[-1],
            members=(ParamAxis(("head", "kernel"), 1), ParamAxis(("head", "bias"), 0)),
            prunable=False))
        return with_group_sizes(self, out)

    def _block_layer(self, i: int) -> UnitLayer:
        stage = self.stage_of(i)
        reads = self.widths[stage - 1] if i % self.blocks_per_stage == 0 and stage > 0 else self.widths[stage]
        return UnitLayer(name=f"block{i}", units=self.block_widths[i], fan_in=reads * 9,
                         members=_channel_members(("blocks", i), "conv1", "bn1"),
                         consumers=(ParamAxis(("blocks", i, "conv2", "kernel"), 2),),
                         inactive_output=0.0, residual=True)

    @classmethod
    def default_config(cls, input_shape: Sequence[int], outputs: int, *, name: str = "resnet20",
                       activation: str | None = None, **unused) -> dict:
        """As :meth:`ImageNet.default_config`, with the depth a registry name says (``resnet32``: 32)."""
        return image_net_config(cls, input_shape, outputs, depth=int(name.removeprefix("resnet")),
                                activation=activation)

    @property
    def config(self) -> dict:
        return {"net": f"resnet{self.depth}", "depth": self.depth, "widths": list(self.widths),
                "block_widths": list(self.block_widths), "num_classes": self.num_classes,
                "in_channels": self.in_channels, "activation": self.activation,
                "image_size": self.image_size}

    @classmethod
    def from_config(cls, config: dict, rngs: nnx.Rngs) -> "ResNet":
        return cls(config["depth"], config["widths"], config["num_classes"],
                   config.get("in_channels", 3), config.get("block_widths"),
                   config.get("activation", "silu"), config.get("image_size", 32), rngs=rngs)

    @classmethod
    def config_with_units(cls, config: dict, units: dict[str, int]) -> dict:
        depth = config["depth"]
        n_blocks = 3 * ((depth - 2) // 6)
        block_widths = config.get("block_widths") or [
            config["widths"][i // (n_blocks // 3)] for i in range(n_blocks)]
        return {**config,
                "widths": [units.get(f"stream{s}", w) for s, w in enumerate(config["widths"])],
                "block_widths": [units.get(f"block{i}", w) for i, w in enumerate(block_widths)]}

    @classmethod
    def example_config(cls) -> dict:
        """ResNet-20 with 2/3/4 channels on 8x8x3 inputs, for fast tests."""
        return {"net": "resnet20", "depth": 20, "widths": [2, 3, 4],
                "block_widths": [2, 3, 2, 3, 2, 4, 2, 3, 4], "num_classes": 3, "in_channels": 3,
                "activation": "silu", "image_size": 8}


def resnet20(num_classes: int = 10, *, rngs: nnx.Rngs) -> ResNet:
    return ResNet(20, num_classes=num_classes, rngs=rngs)


def resnet32(num_classes: int = 10, *, rngs: nnx.Rngs) -> ResNet:
    return ResNet(32, num_classes=num_classes, rngs=rngs)


def recompute_batch_stats(net: nnx.Module, x_batches: Iterable[jax.Array]) -> nnx.Module:
    """Set every BatchNorm's running statistics from passes over data ("precise BN").

    Each batch runs through the network in training mode (every BN normalises with that
    batch's statistics, as during training); each BN's running mean and variance become the
    mean and variance of its inputs over all batches together (weighted by batch size). The
    network is left in evaluation mode and returned.

    Args:
      net: a network containing ``nnx.BatchNorm`` layers (changed in place).
      x_batches: input batches ``[B, H, W, C]``.
    """
    norms = [module for _, module in _iter_modules(net) if isinstance(module, nnx.BatchNorm)]
    if not norms:
        raise ValueError("recompute_batch_stats: the network has no nnx.BatchNorm layers")
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.momentum = 0.0  # running stats := this batch's stats
    net.train()
    graphdef, state = nnx.split(net)

    @jax.jit
    def batch_moments(state, x):
        model = nnx.merge(graphdef, state)
        model(x)
        bns = [m for _, m in _iter_modules(model) if isinstance(m, nnx.BatchNorm)]
        return [(bn.mean[...], bn.var[...] + bn.mean[...] ** 2) for bn in bns]

    total, sums = 0, None
    for x in x_batches:
        moments = batch_moments(state, jnp.asarray(x))
        weight = x.shape[0]
        scaled = [(weight * m1, weight * m2) for m1, m2 in moments]
        sums = scaled if sums is None else [(a + c, b + d) for (a, b), (c, d) in zip(sums, scaled)]
        total += weight
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    if total == 0:
        raise ValueError("recompute_batch_stats: x_batches was empty; pass at least one batch")
    for bn, (m1, m2) in zip(norms, sums):
        mean = m1 / total
        bn.mean[...] = mean
        bn.var[...] = jnp.maximum(m2 / total - mean ** 2, 0.0)
    net.eval()
    return net

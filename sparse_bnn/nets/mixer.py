"""MLP-Mixer (Tolstikhin et al. 2021) for small images, with prunable MLP hidden nodes.

``patches (p x p) -> dense embedding -> depth mixer blocks -> LayerNorm -> mean over tokens
-> dense classifier``. A block is ``x + token_mlp(LN(x)^T)^T`` (mixing across the ``N``
patches, per channel) then ``x + channel_mlp(LN(x))`` (mixing across the ``D`` channels, per
patch); each MLP is ``dense -> gelu -> dense``.

Unit layers, per block ``i``: ``block{i}_token`` (hidden nodes of the token-mixing MLP,
``fan_in = N``) and ``block{i}_channel`` (hidden nodes of the channel-mixing MLP,
``fan_in = D``); members are the first dense layer's columns and bias entries, consumers
the second dense layer's rows; ``gelu(0) = 0``. Then ``head`` (the classifier, not prunable).
Patch embedding and layer norms are free parameters.
"""
from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from sparse_bnn.nets.base import ImageNet, ParamAxis, UnitLayer, check_widths, with_group_sizes
from sparse_bnn.nets.vit import check_input, check_patches, patchify, per_block


class MixerBlock(nnx.Module):
    """``[B, N, D] -> [B, N, D]``."""

    def __init__(self, num_tokens: int, dim: int, token_hidden: int, channel_hidden: int,
                 *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.token_in = nnx.Linear(num_tokens, token_hidden, rngs=rngs)
        self.token_out = nnx.Linear(token_hidden, num_tokens, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.channel_in = nnx.Linear(dim, channel_hidden, rngs=rngs)
        self.channel_out = nnx.Linear(channel_hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm1(x).swapaxes(1, 2)  # [B, D, N]
        x = x + self.token_out(nnx.gelu(self.token_in(y))).swapaxes(1, 2)
        return x + self.channel_out(nnx.gelu(self.channel_in(self.norm2(x))))


class MLPMixer(ImageNet, nnx.Module):
    """MLP-Mixer.

    Args:
      image_size: input height = width.
      in_channels: input channels.
      num_classes: outputs.
      patch_size: patch height = width (divides ``image_size``).
      embed_dim: channels per token ``D``.
      depth: number of mixer blocks.
      token_hidden: token-MLP hidden width (int, or one per block).
      channel_hidden: channel-MLP hidden width (int, or one per block).

    Shapes: ``x [B, image_size, image_size, in_channels] -> [B, num_classes]``.

    Named configurations (``SIZES``; :meth:`default_config` and ``--net-size``); the patch size
    is the divisor of the image size nearest the one given here:

    ========  =====  =========  =====  ============  ==============
    size      patch  embed_dim  depth  token_hidden  channel_hidden
    ========  =====  =========  =====  ============  ==============
    ``tiny``  7      64         4      32            128
    ``small`` 4      128        6      64            256
    ``base``  4      256        6      512           512
    ========  =====  =========  =====  ============  ==============
    """

    SIZES = {"tiny": dict(patch_size=7, embed_dim=64, depth=4, token_hidden=32, channel_hidden=128),
             "small": dict(patch_size=4, embed_dim=128, depth=6, token_hidden=64, channel_hidden=256),
             "base": dict(patch_size=4, embed_dim=256, depth=6, token_hidden=512, channel_hidden=512)}
    DEFAULT_SIZE = "tiny"

    def __init__(self, image_size: int = 32, in_channels: int = 3, num_classes: int = 10,
                 patch_size: int = 4, embed_dim: int = 256, depth: int = 6,
                 token_hidden: int | Sequence[int] = 512, channel_hidden: int | Sequence[int] = 512,
                 *, rngs: nnx.Rngs):
        (self.image_size, self.in_channels, self.num_classes, self.patch_size, self.embed_dim,
         self.depth) = check_widths((image_size, in_channels, num_classes, patch_size, embed_dim,
                                     depth), "image_size/in_channels/num_classes/patch_size/"
                                             "embed_dim/depth")
        self.num_patches = check_patches(self.image_size, self.patch_size)
        self.token_hidden = per_block(token_hidden, self.depth, "token_hidden")
        self.channel_hidden = per_block(channel_hidden, self.depth, "channel_hidden")
        self.patch_embedding = nnx.Linear(self.patch_size ** 2 * self.in_channels, self.embed_dim,
                                          rngs=rngs)
        self.blocks = nnx.List([
            MixerBlock(self.num_patches, self.embed_dim, t, c, rngs=rngs)
            for t, c in zip(self.token_hidden, self.channel_hidden)])
        self.norm = nnx.LayerNorm(self.embed_dim, rngs=rngs)
        self.head = nnx.Linear(self.embed_dim, self.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(self, x)
        tokens = self.patch_embedding(patchify(x, self.patch_size))
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens).mean(axis=1))

    def unit_layers(self) -> tuple[UnitLayer, ...]:
        out = []
        for i in range(self.depth):
            for kind, units, fan_in in (("token", self.token_hidden[i], self.num_patches),
                                        ("channel", self.channel_hidden[i], self.embed_dim)):
                block = ("blocks", i)
                out.append(UnitLayer(
                    name=f"block{i}_{kind}", units=units, fan_in=fan_in,
                    members=(ParamAxis((*block, f"{kind}_in", "kernel"), 1),
                             ParamAxis((*block, f"{kind}_in", "bias"), 0)),
                    consumers=(ParamAxis((*block, f"{kind}_out", "kernel"), 0),),
                    inactive_output=0.0, residual=True))  # gelu(0) = 0
        out.append(UnitLayer(
            name="head", units=self.num_classes, fan_in=self.embed_dim,
            members=(ParamAxis(("head", "kernel"), 1), ParamAxis(("head", "bias"), 0)),
            prunable=False))
        return with_group_sizes(self, out)

    @property
    def config(self) -> dict:
        return {"net": "mixer", "image_size": self.image_size, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "patch_size": self.patch_size,
                "embed_dim": self.embed_dim, "depth": self.depth,
                "token_hidden": list(self.token_hidden),
                "channel_hidden": list(self.channel_hidden)}

    @classmethod
    def from_config(cls, config: dict, rngs: nnx.Rngs) -> "MLPMixer":
        return cls(config["image_size"], config["in_channels"], config["num_classes"],
                   config["patch_size"], config["embed_dim"], config["depth"],
                   config["token_hidden"], config["channel_hidden"], rngs=rngs)

    @classmethod
    def config_with_units(cls, config: dict, units: dict[str, int]) -> dict:
        depth = config["depth"]
        token = per_block(config["token_hidden"], depth, "token_hidden")
        channel = per_block(config["channel_hidden"], depth, "channel_hidden")
        return {**config,
                "token_hidden": [units.get(f"block{i}_token", t) for i, t in enumerate(token)],
                "channel_hidden": [units.get(f"block{i}_channel", c) for i, c in enumerate(channel)]}

    @classmethod
    def example_config(cls) -> dict:
        """Two blocks on 8x8x3 inputs in 2x2 patches (16 tokens of width 6), for fast tests."""
        return {"net": "mixer", "image_size": 8, "in_channels": 3, "num_classes": 3,
                "patch_size": 2, "embed_dim": 6, "depth": 2, "token_hidden": [5, 4],
                "channel_hidden": [4, 5]}

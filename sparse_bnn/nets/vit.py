"""Vision Transformer (Dosovitskiy et al. 2021) for small images, with prunable heads and MLP nodes.

``patches (p x p) -> dense embedding + learned positions, class token -> depth pre-norm
encoder blocks -> LayerNorm -> dense classifier on the class token``. A block is
``x + attention(LN(x))`` then ``x + mlp_out(gelu(mlp_in(LN(x))))``.

Unit layers, per block ``i``:

* ``block{i}_heads``: the attention heads. Attention is written out with query/key/value
  kernels ``[D, heads, head_dim]`` (biases ``[heads, head_dim]``) and an output kernel
  ``[heads, head_dim, D]``, so head ``h`` is index ``h`` of the heads axis: its members are
  its query, key and value weights and biases; its consumers are the output projection's rows
  for that head. A removed head has zero values, so it adds exactly zero. ``fan_in`` is ``D``
  (a head reads the ``D``-dimensional token), the analogue of a dense layer's ``k_{l-1}``;
  the head's group (``group_size``) is its query, key and value weights and biases,
  ``3 * head_dim * (D + 1)`` (the output rows are consumers, outside the group).
* ``block{i}_mlp``: the hidden nodes of the block's MLP (``gelu(0) = 0``); consumers are the
  rows of the MLP's second dense layer.

and ``head`` (the classifier, not prunable). Heads per block and MLP widths per block may
differ (``num_heads`` and ``mlp_hidden`` take a list), so a pruned network is again a
:class:`VisionTransformer`. Patch embedding, positions, class token and layer norms are free
parameters.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_bnn.nets.base import ImageNet, ParamAxis, UnitLayer, check_widths, with_group_sizes


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """``[B, H, W, C] -> [B, (H/p) * (W/p), p * p * C]`` (patches in row-major order)."""
    b, h, w, c = x.shape
    p = patch_size
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def check_patches(image_size: int, patch_size: int) -> int:
    """Number of patches; raises unless the patch size divides the image size."""
    if image_size % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
    return (image_size // patch_size) ** 2


def per_block(value, depth: int, what: str) -> tuple[int, ...]:
    """An int (same for every block) or one entry per block -> tuple of ``depth`` ints."""
    values = [value] * depth if isinstance(value, int) else list(value)
    if len(values) != depth:
        raise ValueError(f"{what} needs one entry per block ({depth}), got {values}")
    return check_widths(values, what)


def check_input(net, x: jax.Array) -> None:
    expected = (net.image_size, net.image_size, net.in_channels)
    if x.ndim != 4 or x.shape[1:] != expected:
        raise ValueError(f"{type(net).__name__} expects NHWC inputs [B, {expected[0]}, {expected[1]}, "
                         f"{expected[2]}], got {x.shape}")


class HeadProjection(nnx.Module):
    """Per-head projection ``[B, N, D] -> [B, N, heads, head_dim]``; kernel ``[D, heads, head_dim]``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(stddev=dim ** -0.5)
        self.kernel = nnx.Param(init(rngs.params(), (dim, num_heads, head_dim)))
        self.bias = nnx.Param(jnp.zeros((num_heads, head_dim)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("bnd,dhk->bnhk", x, self.kernel[...]) + self.bias[...]


class HeadOutput(nnx.Module):
    """Merge heads ``[B, N, heads, head_dim] -> [B, N, D]``; kernel ``[heads, head_dim, D]``."""

    def __init__(self, num_heads: int, head_dim: int, dim: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(stddev=(num_heads * head_dim) ** -0.5)
        self.kernel = nnx.Param(init(rngs.params(), (num_heads, head_dim, dim)))
        self.bias = nnx.Param(jnp.zeros((dim,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("bnhk,hkd->bnd", x, self.kernel[...]) + self.bias[...]


class SelfAttention(nnx.Module):
    """Multi-head self-attention, ``[B, N, D] -> [B, N, D]``, one index of the heads axis per head."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs):
        self.head_dim = head_dim
        self.query = HeadProjection(dim, num_heads, head_dim, rngs=rngs)
        self.key = HeadProjection(dim, num_heads, head_dim, rngs=rngs)
        self.value = HeadProjection(dim, num_heads, head_dim, rngs=rngs)
        self.out = HeadOutput(num_heads, head_dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = self.query(x), self.key(x), self.value(x)
        logits = jnp.einsum("bnhk,bmhk->bhnm", q, k) / jnp.sqrt(self.head_dim).astype(x.dtype)
        weights = jax.nn.softmax(logits, axis=-1)
        return self.out(jnp.einsum("bhnm,bmhk->bnhk", weights, v))


class EncoderBlock(nnx.Module):
    """Pre-norm transformer block, ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attention = SelfAttention(dim, num_heads, head_dim, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.mlp_in = nnx.Linear(dim, mlp_hidden, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(x))))


class VisionTransformer(ImageNet, nnx.Module):
    """ViT with a class token and learned positions.

    Args:
      image_size: input height = width.
      in_channels: input channels.
      num_classes: outputs.
      patch_size: patch height = width (divides ``image_size``).
      embed_dim: token width ``D``.
      depth: number of encoder blocks.
      num_heads: heads per block (int, or one per block).
      mlp_hidden: MLP hidden width per block (int, or one per block).
      head_dim: width of one head; ``None`` gives ``embed_dim // num_heads``.

    Shapes: ``x [B, image_size, image_size, in_channels] -> [B, num_classes]``.

    Named configurations (``SIZES``; :meth:`default_config` and ``--net-size``), heads of width
    ``embed_dim / num_heads``; the patch size is the divisor of the image size nearest the one
    given here:

    ========  =====  =========  =====  =====  ==========
    size      patch  embed_dim  depth  heads  mlp_hidden
    ========  =====  =========  =====  =====  ==========
    ``tiny``  7      64         4      4      128
    ``small`` 4      128        6      4      256
    ``base``  4      256        6      8      512
    ========  =====  =========  =====  =====  ==========
    """

    SIZES = {"tiny": dict(patch_size=7, embed_dim=64, depth=4, num_heads=4, mlp_hidden=128),
             "small": dict(patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_hidden=256),
             "base": dict(patch_size=4, embed_dim=256, depth=6, num_heads=8, mlp_hidden=512)}
    DEFAULT_SIZE = "tiny"

    def __init__(self, image_size: int = 32, in_channels: int = 3, num_classes: int = 10,
                 patch_size: int = 4, embed_dim: int = 256, depth: int = 6,
                 num_heads: int | Sequence[int] = 8, mlp_hidden: int | Sequence[int] = 512,
                 head_dim: int | None = None, *, rngs: nnx.Rngs):
        (self.image_size, self.in_channels, self.num_classes, self.patch_size, self.embed_dim,
         self.depth) = check_widths((image_size, in_channels, num_classes, patch_size, embed_dim,
                                     depth), "image_size/in_channels/num_classes/patch_size/"
                                             "embed_dim/depth")
        self.num_patches = check_patches(self.image_size, self.patch_size)
        self.num_heads = per_block(num_heads, self.depth, "num_heads")
        self.mlp_hidden = per_block(mlp_hidden, self.depth, "mlp_hidden")
        if head_dim is None:
            if not isinstance(num_heads, int) or embed_dim % num_heads:
                raise ValueError("head_dim=None needs one int num_heads dividing embed_dim; "
                                 f"got num_heads={num_heads}, embed_dim={embed_dim}")
            head_dim = embed_dim // num_heads
        (self.head_dim,) = check_widths((head_dim,), "head_dim")

        self.patch_embedding = nnx.Linear(self.patch_size ** 2 * self.in_channels, self.embed_dim,
                                          rngs=rngs)
        init = nnx.initializers.normal(stddev=0.02)
        self.class_token = nnx.Param(init(rngs.params(), (1, 1, self.embed_dim)))
        self.positions = nnx.Param(init(rngs.params(), (1, self.num_patches + 1, self.embed_dim)))
        self.blocks = nnx.List([
            EncoderBlock(self.embed_dim, h, self.head_dim, m, rngs=rngs)
            for h, m in zip(self.num_heads, self.mlp_hidden)])
        self.norm = nnx.LayerNorm(self.embed_dim, rngs=rngs)
        self.head = nnx.Linear(self.embed_dim, self.num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_input(self, x)
        tokens = self.patch_embedding(patchify(x, self.patch_size))
        cls = jnp.broadcast_to(self.class_token[...], (x.shape[0], 1, self.embed_dim))
        tokens = jnp.concatenate([cls, tokens], axis=1) + self.positions[...]
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])

    def unit_layers(self) -> tuple[UnitLayer, ...]:
        out = []
        for i, (heads, hidden) in enumerate(zip(self.num_heads, self.mlp_hidden)):
            attention = ("blocks", i, "attention")
            members = tuple(ParamAxis((*attention, projection, field), 1 if field == "kernel" else 0)
                            for projection in ("query", "key", "value")
                            for field in ("kernel", "bias"))
            out.append(UnitLayer(name=f"block{i}_heads", units=heads, fan_in=self.embed_dim,
                                 members=members,
                                 consumers=(ParamAxis((*attention, "out", "kernel"), 0),), residual=True))
            out.append(UnitLayer(
                name=f"block{i}_mlp", units=hidden, fan_in=self.embed_dim,
                members=(ParamAxis(("blocks", i, "mlp_in", "kernel"), 1),
                         ParamAxis(("blocks", i, "mlp_in", "bias"), 0)),
                consumers=(ParamAxis(("blocks", i, "mlp_out", "kernel"), 0),),
                inactive_output=0.0, residual=True))  # gelu(0) = 0
        out.append(UnitLayer(
            name="head", units=self.num_classes, fan_in=self.embed_dim,
            members=(ParamAxis(("head", "kernel"), 1), ParamAxis(("head", "bias"), 0)),
            prunable=False))
        return with_group_sizes(self, out)

    @property
    def config(self) -> dict:
        return {"net": "vit", "image_size": self.image_size, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "patch_size": self.patch_size,
                "embed_dim": self.embed_dim, "depth": self.depth,
                "num_heads": list(self.num_heads), "head_dim": self.head_dim,
                "mlp_hidden": list(self.mlp_hidden)}

    @classmethod
    def from_config(cls, config: dict, rngs: nnx.Rngs) -> "VisionTransformer":
        return cls(config["image_size"], config["in_channels"], config["num_classes"],
                   config["patch_size"], config["embed_dim"], config["depth"],
                   config["num_heads"], config["mlp_hidden"], config.get("head_dim"), rngs=rngs)

    @classmethod
    def config_with_units(cls, config: dict, units: dict[str, int]) -> dict:
        depth = config["depth"]
        heads = per_block(config["num_heads"], depth, "num_heads")
        hidden = per_block(config["mlp_hidden"], depth, "mlp_hidden")
        head_dim = config.get("head_dim") or config["embed_dim"] // config["num_heads"]
        return {**config, "head_dim": head_dim,
                "num_heads": [units.get(f"block{i}_heads", h) for i, h in enumerate(heads)],
                "mlp_hidden": [units.get(f"block{i}_mlp", m) for i, m in enumerate(hidden)]}

    @classmethod
    def example_config(cls) -> dict:
        """Two blocks, 3 heads of width 2, 8x8x3 inputs in 4x4 patches, for fast tests."""
        return {"net": "vit", "image_size": 8, "in_channels": 3, "num_classes": 3,
                "patch_size": 4, "embed_dim": 6, "depth": 2, "num_heads": [3, 3], "head_dim": 2,
                "mlp_hidden": [5, 4]}

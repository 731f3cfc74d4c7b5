"""What every architecture declares: its prunable unit layers and who consumes them.

A *unit layer* is a set of units (dense output nodes, conv output channels, attention heads)
whose parameters form the node groups of ``math.md`` §1. Each unit layer names

* ``members``: the parameter arrays the units own, with the axis that indexes the unit
  (kernel columns, bias entries, batch-norm channels, ...);
* ``consumers``: the parameter arrays downstream whose input axis indexes the unit
  (the next kernel's rows, ...), so that removing a unit also removes its input row.

Parameter arrays are addressed by their path in the network's pure state dict, e.g.
``("layers", 0, "kernel")``. Everything else in the network (layer-norm scales, positional
embeddings, ...) is a *free* parameter: plain Gaussian prior, never pruned.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Path = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class ParamAxis:
    """One parameter array and the axis of it that indexes a layer's units.

    ``interleave`` > 1 says the axis is a flattened ``(positions, units)`` axis with the unit
    index fastest (a dense layer after a flattened NHWC feature map): entry ``p * units + j``
    belongs to unit ``j``.
    """

    path: Path
    axis: int
    interleave: int = 1


@dataclasses.dataclass(frozen=True)
class UnitLayer:
    """A layer of prunable units and the parameters they own or feed.

    Attributes:
      name: readable name used in site names (``"dense0"`` gives sites ``dense0.z``, ...).
      units: number of units ``k_l``.
      fan_in: inputs to one unit, ``k_{l-1}`` (``C_in * kh * kw`` for a conv).
      members: parameters owned by the units, each with its unit axis.
      consumers: downstream parameters whose axis indexes this layer's units as inputs.
      prunable: ``False`` for the output layer (shrinkage without an indicator).
      inactive_output: what a removed unit still sends downstream (``activation(0)``; 0 for
        SiLU/ReLU/tanh/GELU, 0.5 for sigmoid). Pruning folds it into the consumers' biases.
      weights_per_unit: random weights one unit owns, counted over its ``nnx.Param`` members
        by :func:`with_group_sizes`; ``None`` for a layer built by hand (see ``group_size``).
      residual: the units sit on a residual branch ``x + f(x)`` (a transformer's heads and MLP
        units, a ResNet block's first conv): with none of them kept the block passes its input
        on unchanged, so an empty layer does not cut the network.
    """

    name: str
    units: int
    fan_in: int
    members: tuple[ParamAxis, ...]
    consumers: tuple[ParamAxis, ...] = ()
    prunable: bool = True
    inactive_output: float = 0.0
    weights_per_unit: int | None = None
    residual: bool = False

    @property
    def group_size(self) -> int:
        """``m_l``: the random weights in one unit's group (``math.md`` §1).

        Counted from the parameter shapes when the net set ``weights_per_unit`` (every net in
        :mod:`sparse_bnn.nets` does: an attention head owns its query, key and value weights, a
        residual-stream channel the filters of every conv writing into it and their BN scales
        and offsets). A layer built by hand falls back to the dense/conv rule: fan-in plus one
        for a bias.
        """
        if self.weights_per_unit is not None:
            return self.weights_per_unit
        has_bias = any(m.path[-1] == "bias" for m in self.members)
        return self.fan_in + int(has_bias)


def with_group_sizes(net: nnx.Module, layers: Sequence[UnitLayer]) -> tuple[UnitLayer, ...]:
    """``layers`` with ``weights_per_unit`` counted from ``net``'s parameter shapes.

    A member array ``[..., units * interleave, ...]`` gives each unit ``size / units`` entries;
    members that are not ``nnx.Param`` (batch-norm running statistics) are not random weights
    and count nothing.
    """
    param_shapes = {p: tuple(v.shape) for p, v in flatten_paths(pure_params(net)).items()}
    state_paths = set(flatten_paths(nnx.to_pure_dict(nnx.state(net))))
    out = []
    for layer in layers:
        count = 0
        for member in layer.members:
            if member.path not in param_shapes:
                if member.path in state_paths:
                    continue
                raise ValueError(f"layer {layer.name} names parameter {path_name(member.path)}, "
                                 "which the network does not have; fix its unit_layers()")
            shape = param_shapes[member.path]
            if shape[member.axis] != layer.units * member.interleave:
                raise ValueError(
                    f"layer {layer.name}: axis {member.axis} of {path_name(member.path)} {shape} "
                    f"should have {layer.units} units x interleave {member.interleave} entries")
            count += math.prod(shape) // layer.units
        out.append(dataclasses.replace(layer, weights_per_unit=count))
    return tuple(out)


class SparseNet(Protocol):
    """The protocol every architecture in :mod:`sparse_bnn.nets` implements."""

    def __call__(self, x: jax.Array) -> jax.Array: ...

    def unit_layers(self) -> tuple[UnitLayer, ...]:
        """Unit layers in forward order; the last one is the output layer."""

    @property
    def config(self) -> dict:
        """JSON-serialisable constructor arguments, including ``"net"`` (the registry name)."""

    @classmethod
    def config_with_units(cls, config: dict, units: dict[str, int]) -> dict:
        """The config of the same architecture with ``units[name]`` units in each named layer."""


def pure_params(net: nnx.Module) -> dict:
    """The network's ``nnx.Param`` values as a nested pure dict."""
    return nnx.to_pure_dict(nnx.state(net, nnx.Param))


def flatten_paths(tree: dict) -> dict[Path, jax.Array]:
    """Nested pure dict -> ``{path: array}``."""
    flat = {}

    def visit(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, prefix + (key,))
        else:
            flat[prefix] = node

    visit(tree, ())
    return flat


def unflatten_paths(flat: dict[Path, Any]) -> dict:
    """``{path: array}`` -> nested pure dict (the inverse of :func:`flatten_paths`)."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def path_name(path: Path) -> str:
    """``("layers", 0, "kernel")`` -> ``"layers.0.kernel"``."""
    return ".".join(str(p) for p in path)


def unit_broadcast(values: jax.Array, ndim: int, axis: int, interleave: int = 1) -> jax.Array:
    """Reshape per-unit ``values`` ``[k]`` so they broadcast along ``axis`` of an ``ndim`` array.

    With ``interleave`` > 1 the values are tiled to ``[interleave * k]`` (unit index fastest).
    A scalar broadcasts as it is. NumPy values stay NumPy (host-side bookkeeping compiles nothing).
    """
    xp = np if isinstance(values, np.ndarray) else jnp
    values = xp.asarray(values)
    if values.ndim == 0:
        return values
    if interleave > 1:
        values = xp.tile(values, interleave)
    axis = axis % ndim
    shape = [1] * ndim
    shape[axis] = values.shape[0]
    return values.reshape(shape)


class FunctionalNet:
    """A network as a pure function of its parameter arrays: ``apply(params, x)``.

    ``params`` is ``{path: array}`` for every ``nnx.Param`` of the network; all other state
    (batch statistics, ...) is taken from the network as it was when wrapped.
    """

    def __init__(self, net: nnx.Module):
        self.graphdef, self.param_state, self.rest = nnx.split(net, nnx.Param, ...)
        self.initial = flatten_paths(nnx.to_pure_dict(self.param_state))

    def apply(self, params: dict[Path, jax.Array], x: jax.Array) -> jax.Array:
        state = jax.tree_util.tree_map(lambda v: v, self.param_state)
        rest = jax.tree_util.tree_map(lambda v: v, self.rest)  # training-mode batch-norm writes here
        nnx.replace_by_pure_dict(state, unflatten_paths(params))
        return nnx.merge(self.graphdef, state, rest)(x)

    def __call__(self, params: dict[Path, jax.Array], x: jax.Array) -> jax.Array:
        return self.apply(params, x)


def check_widths(widths: Sequence[int], what: str = "widths") -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if any(w <= 0 for w in widths):
        raise ValueError(f"{what} must all be positive integers, got {list(widths)}")
    return widths


def image_net_config(cls: type, input_shape: Sequence[int], outputs: int, **constructor: Any) -> dict:
    """The config of the image net ``cls`` built for square images ``input_shape = (H, W, C)`` and
    ``outputs`` classes; ``constructor`` options go to ``cls`` where its constructor takes them
    (``None`` values stay at the constructor's defaults)."""
    import inspect
    if len(input_shape) != 3 or input_shape[0] != input_shape[1]:
        raise ValueError(f"net {cls.__name__} needs square images [H, W, C]; the data set has examples of "
                         f"shape {tuple(input_shape)}")
    size, _, channels = input_shape
    accepted = inspect.signature(cls.__init__).parameters
    options = {k: v for k, v in constructor.items() if k in accepted and v is not None}
    return cls(image_size=int(size), in_channels=int(channels), num_classes=int(outputs), **options,
               rngs=nnx.Rngs(0)).config


def nearest_divisor(size: int, preferred: int) -> int:
    """The divisor of ``size`` closest to ``preferred`` (the larger one on a tie): the patch size
    a named configuration takes on images of another size (patch 7 on 28x28, 8 on 32x32)."""
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    return min(divisors, key=lambda d: (abs(d - preferred), -d))


class ImageNet:
    """Mixin of the image nets: :meth:`default_config` for a data set's images and classes.

    A net with named configurations sets ``SIZES`` (``{name: constructor options}``) and
    ``DEFAULT_SIZE``; ``default_config(..., size=name)`` builds one of them.
    """

    SIZES: dict[str, dict[str, Any]] = {}
    DEFAULT_SIZE: str | None = None

    @classmethod
    def default_config(cls, input_shape: Sequence[int], outputs: int, *, activation: str | None = None,
                       size: str | None = None, **unused: Any) -> dict:
        """The config for examples of ``input_shape`` ``(H, W, C)`` and ``outputs`` classes, with
        ``activation`` where the architecture takes one (options of other nets are ignored). A net
        with ``SIZES`` builds the named configuration ``size`` (``None``: ``DEFAULT_SIZE``), its
        patch size the divisor of the image size nearest the listed one; other nets ignore ``size``."""
        if not cls.SIZES:
            return image_net_config(cls, input_shape, outputs, activation=activation)
        size = cls.DEFAULT_SIZE if size is None else size
        if size not in cls.SIZES:
            raise ValueError(f"{cls.__name__} has no size {size!r}; choose one of {', '.join(cls.SIZES)}")
        options = dict(cls.SIZES[size])
        if len(input_shape) == 3 and "patch_size" in options:
            options["patch_size"] = nearest_divisor(int(input_shape[0]), options["patch_size"])
        return image_net_config(cls, input_shape, outputs, activation=activation, **options)

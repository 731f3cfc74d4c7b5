"""Multi-layer perceptron of any depth: ``in -> widths[0] -> ... -> widths[-1] -> out``."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from sparse_bnn.nets.base import ParamAxis, UnitLayer, check_widths, with_group_sizes

ACTIVATIONS = {
    "silu": nnx.silu,
    "relu": nnx.relu,
    "tanh": nnx.tanh,
    "gelu": nnx.gelu,
    "elu": nnx.elu,
    "sigmoid": nnx.sigmoid,
    "leaky_relu": nnx.leaky_relu,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nnx.Module):
    """Dense network; inputs of any trailing shape are flattened.

    Args:
      in_features: number of input features (after flattening).
      widths: hidden widths, e.g. ``(400, 400)``.
      out_features: outputs (classes, or 1 for scalar regression).
      activation: a name from ``ACTIVATIONS`` (SiLU by default).

    Shapes: ``x [B, ...] -> [B, out_features]``.
    """

    def __init__(self, in_features: int, widths: Sequence[int], out_features: int,
                 activation: str = "silu", *, rngs: nnx.Rngs):
        in_features, out_features = check_widths((in_features, out_features), "in/out features")
        self.widths = check_widths(widths)
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.act = get_activation(activation)
        sizes = (in_features, *self.widths, out_features)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)

    def unit_layers(self) -> tuple[UnitLayer, ...]:
        sizes = (self.in_features, *self.widths, self.out_features)
        n = len(self.layers)
        out = []
        for i in range(n):
            consumers = ((ParamAxis(("layers", i + 1, "kernel"), 0),) if i + 1 < n else ())
            out.append(UnitLayer(
                name=f"dense{i}", units=sizes[i + 1], fan_in=sizes[i],
                members=(ParamAxis(("layers", i, "kernel"), 1), ParamAxis(("layers", i, "bias"), 0)),
                consumers=consumers, prunable=i + 1 < n,
                inactive_output=float(self.act(0.0))))
        return with_group_sizes(self, out)

    @classmethod
    def default_config(cls, input_shape: Sequence[int], outputs: int, *, widths: Sequence[int] = (400, 400),
                       activation: str = "silu", **unused) -> dict:
        """The config for examples of ``input_shape`` (flattened) and ``outputs`` outputs."""
        return {"net": "mlp", "in_features": int(np.prod(input_shape)), "widths": [int(w) for w in widths],
                "out_features": int(outputs), "activation": activation}

    @property
    def config(self) -> dict:
        return {"net": "mlp", "in_features": self.in_features, "widths": list(self.widths),
                "out_features": self.out_features, "activation": self.activation}

    @classmethod
    def from_config(cls, config: dict, rngs: nnx.Rngs) -> "MLP":
        return cls(config["in_features"], config["widths"], config["out_features"],
                   config.get("activation", "silu"), rngs=rngs)

    @classmethod
    def config_with_units(cls, config: dict, units: dict[str, int]) -> dict:
        widths = [units.get(f"dense{i}", w) for i, w in enumerate(config["widths"])]
        return {**config, "widths": widths}

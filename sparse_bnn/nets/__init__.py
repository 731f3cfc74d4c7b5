"""Architectures: plain Flax NNX modules that declare their prunable unit layers.

Any other NNX module gets its unit layers from :func:`infer_units` (traced) or by hand, through
:func:`sparse_bnn.nets.declare.declare_units`; its config names its class as
``"package.module:Class"``, which :func:`net_from_config` imports.
"""
from __future__ import annotations

from flax import nnx

from sparse_bnn.nets.base import (FunctionalNet, ParamAxis, SparseNet, UnitLayer, flatten_paths,
                                  pure_params, unflatten_paths, with_group_sizes)
from sparse_bnn.nets.infer import infer_units
from sparse_bnn.nets.lenet import LeNet5, LeNet5Caffe
from sparse_bnn.nets.mixer import MLPMixer
from sparse_bnn.nets.mlp import MLP
from sparse_bnn.nets.resnet import ResNet
from sparse_bnn.nets.vit import VisionTransformer

NETS: dict[str, type] = {"mlp": MLP, "lenet5-caffe": LeNet5Caffe, "lenet5": LeNet5,
                         "resnet20": ResNet, "resnet32": ResNet, "vit": VisionTransformer,
                         "mixer": MLPMixer}


def register_net(name: str, cls: type) -> None:
    NETS[name] = cls


def net_from_config(config: dict, seed: int = 0) -> nnx.Module:
    """Build the network a config describes (``config["net"]`` names the architecture: a
    registered name, or the import path ``"package.module:Class"`` of a declared module)."""
    name = config.get("net")
    if isinstance(name, str) and ":" in name:
        from sparse_bnn.nets.rebuild import custom_from_config
        return custom_from_config(config, seed)
    if name not in NETS:
        raise ValueError(f"unknown net {name!r}; choose one of {sorted(NETS)}, or the import path "
                         "'package.module:Class' of a module declared with declare_units")
    return NETS[name].from_config(config, nnx.Rngs(seed))


__all__ = ["NETS", "MLP", "FunctionalNet", "ParamAxis", "SparseNet", "UnitLayer", "flatten_paths", "infer_units",
           "net_from_config", "pure_params", "register_net", "unflatten_paths", "with_group_sizes"]

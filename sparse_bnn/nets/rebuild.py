"""Rebuilding a declared module from its config (``"net": "package.module:Class"``).

:func:`sparse_bnn.nets.net_from_config` calls :func:`custom_from_config` for such a config, as
:func:`sparse_bnn.compact.io.load_compact` does when it loads a saved compact network: the class
is imported by name (never executed from the file), built from its constructor arguments,
declared as it was and cut to the saved widths (:func:`sparse_bnn.nets.resize.resize`).
"""
from __future__ import annotations

import inspect
import json
from typing import Any, Mapping

from flax import nnx

from sparse_bnn.nets.base import with_group_sizes
from sparse_bnn.nets.declaration import UnitDeclaration, attach, import_class, layers_from_json
from sparse_bnn.nets.resize import resize

__all__ = ["construct", "custom_from_config"]


def construct(cls: type, init: Mapping[str, Any], seed: int = 0) -> nnx.Module:
    """``cls(**init, rngs=nnx.Rngs(seed))`` (``rngs`` only where the constructor takes it)."""
    kwargs = dict(init)
    if "rngs" in inspect.signature(cls.__init__).parameters:
        kwargs["rngs"] = nnx.Rngs(seed)
    return cls(**kwargs)


def custom_from_config(config: Mapping[str, Any], seed: int = 0) -> nnx.Module:
    """The module a ``"package.module:Class"`` config describes (see :mod:`~sparse_bnn.nets.declaration`).

    A class implementing :class:`~sparse_bnn.nets.SparseNet` is built by its ``from_config``;
    any other is built from ``init``, given the unit ``layers`` of the dense module (inferred or
    by hand when it was declared) and cut to ``units``. No tracing: it also builds under
    ``nnx.eval_shape``.
    """
    cls = import_class(config.get("net"))
    if callable(getattr(cls, "unit_layers", None)) and hasattr(cls, "from_config"):
        return cls.from_config(dict(config), nnx.Rngs(seed))
    init = config.get("init")
    if not isinstance(init, dict):
        raise ValueError(f"the config of {config['net']} has no constructor arguments ('init' is "
                         f"{init!r}); declare the net with declare_units(net, x, init={{...}}) "
                         "before saving it")
    if "layers" not in config:
        raise ValueError(f"the config of {config['net']} lacks its unit 'layers'")
    net = construct(cls, init, seed)
    declared = with_group_sizes(net, layers_from_json(config["layers"], net))
    base = {k: v for k, v in config.items() if k != "units"}
    net = attach(net, UnitDeclaration(tuple(declared), json.dumps(base)))
    units = config.get("units") or {}
    if not isinstance(units, dict):
        raise ValueError(f"the config's 'units' must map layer names to counts, got {units!r}")
    return resize(net, {str(k): int(v) for k, v in units.items()})

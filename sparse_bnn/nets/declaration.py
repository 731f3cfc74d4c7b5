"""What a plain NNX module carries once its unit layers are declared, and how it is named.

:func:`sparse_bnn.nets.declare.declare_units` attaches two static attributes to a module that
has no ``unit_layers`` of its own:

* ``unit_layers``: a :class:`UnitDeclaration`; calling it returns the unit layers, as
  ``SparseNet.unit_layers()`` does, so every part of the library reads it unchanged;
* ``config``: a :class:`NetConfig`, the JSON that rebuilds the module in another process::

      {"net": "mypackage.nets:SkipMLP",              # import path of the class
       "init": {"width": 64, ...},                   # its constructor's keyword arguments
       "input": {"shape": [8, 10], "dtype": "float32"},  # the input it was traced with
       "inferred": true,                             # false for a hand declaration
       "not_prunable": [],                           # inferred layers kept whole
       "layers": [{"name": "fc1", "units": 64, "members": ["fc1.kernel[1]", "fc1.bias[0]"],
                   "consumers": [...], ...}, ...],   # the dense module's unit layers
       "units": {"fc1": 64, "fc3": 32, "out": 3}}    # units per layer (fewer once compacted)

Both are hashable, so they travel in the module's graph definition through ``nnx.split``,
``nnx.merge`` and ``nnx.clone``. :func:`import_class` resolves ``"module:Class"`` by importing
the module; nothing read from a file is ever executed.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import re
from typing import Any

from flax import nnx

from sparse_bnn.nets.base import ParamAxis, UnitLayer, path_name

__all__ = ["NetConfig", "UnitDeclaration", "attach", "class_path", "declaration_of", "import_class",
           "layers_from_json", "layers_to_json"]

REF = re.compile(r"^(.+)\[(-?\d+)\](?:\*(\d+))?$")
CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class NetConfig(dict):
    """A module's config (a plain JSON dict) that can sit in an NNX graph definition."""

    def __hash__(self) -> int:
        return hash(json.dumps(self, sort_keys=True))


@dataclasses.dataclass(frozen=True)
class UnitDeclaration:
    """The unit layers of a declared module; ``base`` is its config without ``units`` (JSON text)."""

    layers: tuple[UnitLayer, ...]
    base: str

    def __call__(self) -> tuple[UnitLayer, ...]:
        return self.layers

    @property
    def config(self) -> NetConfig:
        return NetConfig({**json.loads(self.base), "units": {l.name: l.units for l in self.layers}})


def declaration_of(net: Any) -> UnitDeclaration | None:
    """The declaration :func:`attach` gave ``net``, or ``None`` (a built-in or hand-written net)."""
    declaration = getattr(net, "unit_layers", None)
    return declaration if isinstance(declaration, UnitDeclaration) else None


def attach(net: nnx.Module, declaration: UnitDeclaration) -> nnx.Module:
    """Give ``net`` its ``unit_layers`` and ``config`` attributes (refusing to hide its own)."""
    for name in ("unit_layers", "config"):
        current = getattr(net, name, None)
        if current is not None and declaration_of(net) is None:
            raise ValueError(f"{type(net).__name__} already has an attribute {name!r}, which "
                             "declare_units would replace; rename it in the class")
    net.unit_layers = declaration
    net.config = declaration.config
    return net


def class_path(cls: type) -> str:
    """``"package.module:Class"`` of ``cls``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def import_class(path: Any, what: str = "net") -> type:
    """The ``nnx.Module`` subclass ``"package.module:Class"`` names, imported; ``ValueError`` otherwise."""
    if not isinstance(path, str) or not CLASS_PATH.match(path):
        raise ValueError(f"{what} {path!r} is not an import path 'package.module:Class'")
    module_name, qualname = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({error}); install "
                         "the package that defines the class or put it on PYTHONPATH") from error
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no {qualname!r}; define "
                             "the class at the top level of an importable module")
    if not (isinstance(target, type) and issubclass(target, nnx.Module)):
        raise ValueError(f"{what} {path!r} is not a Flax NNX module class")
    return target


def _ref_text(ref: ParamAxis) -> str:
    interleave = f"*{ref.interleave}" if ref.interleave != 1 else ""
    return f"{path_name(ref.path)}[{ref.axis}]{interleave}"


def layers_to_json(layers) -> list[dict]:
    """Unit layers as JSON; a parameter axis is ``"fc1.kernel[1]"`` (``"d1.kernel[0]*9"`` with an
    interleave of 9)."""
    def refs(items):
        return [_ref_text(r) for r in items]
    return [{"name": l.name, "units": l.units, "fan_in": l.fan_in, "members": refs(l.members),
             "consumers": refs(l.consumers), "prunable": l.prunable,
             "inactive_output": l.inactive_output} for l in layers]


def layers_from_json(items: Any, net: nnx.Module) -> tuple[UnitLayer, ...]:
    """The inverse of :func:`layers_to_json` for the variables of ``net``; ``ValueError`` for a
    malformed entry or one that names a variable ``net`` does not have."""
    paths = {path_name(p): p for p, v in nnx.iter_graph(net) if isinstance(v, nnx.Variable)}

    def ref(text):
        match = REF.match(text) if isinstance(text, str) else None
        if match is None or match.group(1) not in paths:
            raise ValueError(f"{text!r} is not a parameter axis 'path[axis]' of {type(net).__name__}")
        return ParamAxis(paths[match.group(1)], int(match.group(2)), int(match.group(3) or 1))

    try:
        return tuple(UnitLayer(name=str(d["name"]), units=int(d["units"]), fan_in=int(d["fan_in"]),
                               members=tuple(map(ref, d["members"])),
                               consumers=tuple(map(ref, d["consumers"])), prunable=bool(d["prunable"]),
                               inactive_output=float(d["inactive_output"])) for d in items)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"the config's unit 'layers' are malformed ({error})") from error

"""Any Flax NNX module as a sparse network: declare its unit layers, check them, rebuild it.

>>> net = declare_units(MyNet(64, rngs=nnx.Rngs(0)), x_train[:8])   # inferred, then checked
>>> bnn = SparseBNN(net, get_prior("ss-ghs"), n_data=len(x_train))

(``SparseBNN(MyNet(...), prior, n_data, example_input=x_train[:8])`` does the same.)

:func:`declare_units` infers the unit layers (:func:`sparse_bnn.nets.infer.infer_units`) unless
``layers`` are given by hand, checks that compacting commutes with pruning
(:func:`sparse_bnn.nets.check.check_compaction`) and attaches the declaration to the module
(:mod:`sparse_bnn.nets.declaration`): ``net.unit_layers()`` and ``net.config``. The config names
the class by its import path and holds its constructor arguments, so that a compact network
saved with :func:`sparse_bnn.compact.io.save_compact` loads in another process
(:func:`sparse_bnn.nets.rebuild.custom_from_config`, which :func:`sparse_bnn.nets.net_from_config`
calls for a ``"net"`` of the form ``"package.module:Class"``).

A class that implements :class:`sparse_bnn.nets.SparseNet` itself (``unit_layers``, ``config``,
``config_with_units``, ``from_config``) is its own hand declaration: :func:`declare_units` only
checks it.
"""
from __future__ import annotations

import inspect
import json
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_bnn.nets.base import UnitLayer, flatten_paths, with_group_sizes
from sparse_bnn.nets.check import check_compaction
from sparse_bnn.nets.declaration import UnitDeclaration, attach, class_path, declaration_of, layers_to_json
from sparse_bnn.nets.infer import infer_units
from sparse_bnn.nets.rebuild import construct

__all__ = ["declare_units"]

EXAMPLES = 8  # inference and the check look at this many examples of example_input


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    json.dumps(value)  # TypeError for anything else that is not JSON
    return value


def _captured_init(net: nnx.Module) -> dict | None:
    """The constructor's arguments read back from same-named attributes, or ``None``."""
    init = {}
    for name, parameter in list(inspect.signature(type(net).__init__).parameters.items())[1:]:
        if name == "rngs" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if not hasattr(net, name):
            if parameter.default is parameter.empty:
                return None
            continue
        try:
            init[name] = _jsonable(getattr(net, name))
        except TypeError:
            return None
    return init


def _state_shapes(net: nnx.Module) -> dict:
    state = nnx.state(net, nnx.Not(nnx.RngState))
    return {p: tuple(np.shape(v)) for p, v in flatten_paths(nnx.to_pure_dict(state)).items()}


def _build_mismatch(net: nnx.Module, init: Mapping[str, Any]) -> str | None:
    """Why ``type(net)(**init)`` does not rebuild ``net``'s variables, or ``None``."""
    try:
        try:
            template = nnx.eval_shape(lambda: construct(type(net), init))
        except jax.errors.JAXTypeError:  # a constructor that computes with values
            template = construct(type(net), init)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    if _state_shapes(template) != _state_shapes(net):
        return "it builds variables of other paths or shapes"
    return None


def _example(example_input: Any) -> jax.Array:
    x = jnp.asarray(example_input)
    if x.ndim == 0:
        raise ValueError("example_input must be a batch [B, ...], got a scalar")
    return x[:EXAMPLES]


def declare_units(net: nnx.Module, example_input: Any = None, *,
                  layers: Sequence[UnitLayer] | None = None, not_prunable: Sequence[str] = (),
                  init: Mapping[str, Any] | None = None, check: bool = True) -> nnx.Module:
    """Declare the unit layers of ``net`` and return it (the same module, now carrying them).

    Args:
      net: any Flax NNX module ``x [B, ...] -> [B, out]``.
      example_input: an input batch; its first 8 examples are traced and checked.
      layers: the unit layers by hand, overriding inference (forward order, output layer last).
      not_prunable: inferred layers to keep whole.
      init: the constructor's keyword arguments (without ``rngs``), stored in ``net.config`` so
        that a saved compact network loads elsewhere. By default they are read back from
        attributes of the same names, when the class keeps them all.
      check: run :func:`sparse_bnn.nets.check.check_compaction` (refuses, naming the layer, a
        declaration whose compact network differs from the masked one).

    Raises ``ValueError`` for a layer that cannot be pruned (see
    :func:`sparse_bnn.nets.infer.infer_units`) or a declaration that does not commute with
    pruning.
    """
    name = type(net).__name__
    if callable(getattr(type(net), "unit_layers", None)):
        if layers is not None or not_prunable or init is not None:
            raise ValueError(f"{name} declares unit_layers() itself; change the declaration there")
        if check and example_input is not None:
            check_compaction(net, _example(example_input))
        return net
    if declaration_of(net) is not None and layers is None and not not_prunable and init is None:
        return net
    if example_input is None:
        raise ValueError(f"{name} has no unit_layers(); pass example_input (an input batch, e.g. "
                         "x_train[:8]) to infer them, or layers= to declare them by hand")
    x = _example(example_input)
    if layers is None:
        declared = infer_units(net, x, not_prunable=not_prunable)
    else:
        if not_prunable:
            raise ValueError("not_prunable applies to inferred layers; with layers= set prunable=False")
        declared = with_group_sizes(net, tuple(layers))
    if init is not None:
        init = {k: _jsonable(v) for k, v in init.items()}
        problem = _build_mismatch(net, init)
        if problem is not None:
            raise ValueError(f"init={dict(init)} does not rebuild this {name}: {problem}")
    else:
        init = _captured_init(net)
        if init is not None and _build_mismatch(net, init) is not None:
            init = None
    base = {"net": class_path(type(net)), "init": init,
            "input": {"shape": list(x.shape), "dtype": str(x.dtype)}, "inferred": layers is None,
            "not_prunable": list(not_prunable), "layers": layers_to_json(declared)}
    declaration = UnitDeclaration(tuple(declared), json.dumps(base))
    if check:
        check_compaction(attach(nnx.clone(net), declaration), x)
    return attach(net, declaration)

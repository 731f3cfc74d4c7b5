"""The package's public names: each is the object of the module ``_EXPORTS`` names, of the kind
documented (class, function or registry), also after the submodules are imported."""
from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys

import pytest

import sparse_bnn

CLASSES = {"SparseBNN", "Masks", "MLP", "FitResult", "DivergenceError", "Hook", "Shrink", "ShrinkSchedule",
           "Reduction", "NodeBMRRule"}
REGISTRIES = {"PRIORS", "NETS"}
# ``compact`` is the function sparse_bnn.compact.prune.compact and also the subpackage's name:
# once the subpackage is imported, ``sparse_bnn.compact`` is the package, which is callable as it
FUNCTIONS = set(sparse_bnn._EXPORTS) - CLASSES - REGISTRIES - {"compact"}


def documented(name: str):
    return getattr(importlib.import_module(sparse_bnn._EXPORTS[name]), name)


def check_every_export() -> None:
    for name in sorted(sparse_bnn._EXPORTS):
        exported = getattr(sparse_bnn, name)
        if name == "compact":
            assert callable(exported), name
            continue
        assert exported is documented(name), name
        if name in CLASSES:
            assert inspect.isclass(exported), name
        elif name in REGISTRIES:
            assert isinstance(exported, dict) and exported, name
        else:
            assert inspect.isfunction(exported), (name, type(exported))


def test_the_kinds_cover_every_export():
    assert FUNCTIONS | CLASSES | REGISTRIES | {"compact"} == set(sparse_bnn._EXPORTS)
    assert set(sparse_bnn.__all__) == set(sparse_bnn._EXPORTS) | {"__version__"}
    assert {"fit", "predict", "load_compact", "get_prior"} <= FUNCTIONS


def test_every_export_is_the_documented_object():
    check_every_export()


def test_fit_stays_the_function_after_the_old_module_is_imported():
    import sparse_bnn.fit  # the former module of the training loop
    from sparse_bnn import fit
    from sparse_bnn.train import fit as loop_fit
    assert fit is loop_fit and sparse_bnn.fit is loop_fit and inspect.isfunction(fit)
    assert "epochs" in inspect.signature(fit).parameters
    old = sys.modules["sparse_bnn.fit"]
    assert old.fit is loop_fit and old is importlib.import_module("sparse_bnn.fit")
    from sparse_bnn.fit import CHECKPOINT_FILE  # the old names stay importable
    assert CHECKPOINT_FILE == "checkpoint.msgpack"
    check_every_export()


def test_the_compact_export_computes_what_the_function_does():
    import numpy as np
    from flax import nnx

    from sparse_bnn import compact
    from sparse_bnn.compact.prune import compact as prune_compact
    from sparse_bnn.nets import MLP
    from sparse_bnn.nets.base import flatten_paths
    net = MLP(4, [6], 2, rngs=nnx.Rngs(0))
    weights = flatten_paths(nnx.to_pure_dict(nnx.state(net, nnx.Param)))
    keep = {net.unit_layers()[0].name: np.array([True, False, True, True, False, True])}
    ours, ours_params = compact(net, weights, keep)
    theirs, their_params = prune_compact(net, weights, keep)
    assert ours.config == theirs.config and ours.config["widths"] == [4]
    kernel = next(p for p in their_params if p[-1] == "kernel" and np.shape(their_params[p]) == (4, 4))
    np.testing.assert_array_equal(ours_params[kernel], np.asarray(weights[kernel])[:, [0, 2, 3, 5]])


@pytest.mark.parametrize("first", ["import sparse_bnn.fit", "import sparse_bnn.train",
                                   "from sparse_bnn.fit import fit", "from sparse_bnn import *"])
def test_in_a_fresh_interpreter_fit_is_the_function_whatever_was_imported_first(first):
    code = (f"{first}\nimport inspect, sparse_bnn\nfrom sparse_bnn import fit\n"
            "from sparse_bnn.train import fit as loop_fit\n"
            "assert fit is loop_fit and sparse_bnn.fit is loop_fit, fit\n"
            "import sparse_bnn.fit as old\nassert old is loop_fit\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr

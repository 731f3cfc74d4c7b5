"""sparse_bnn: structurally sparse Bayesian neural networks in NumPyro over Flax NNX.

The common entry points are importable from the package (loaded on first use, so that
``sparse_bnn.compact.io`` alone stays light for deployment)::

    from sparse_bnn import SparseBNN, get_prior, fit, Shrink, predict, load_compact

Each name is the object of the module ``_EXPORTS`` names. ``fit`` is the function
:func:`sparse_bnn.train.fit` even after the old module ``sparse_bnn/fit.py`` is imported (its
names stay importable as ``from sparse_bnn.fit import ...``). ``compact`` is the function
:func:`sparse_bnn.compact.prune.compact` until a module of the package :mod:`sparse_bnn.compact`
is imported; from then on ``sparse_bnn.compact`` is that package, which is callable as the function.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "SparseBNN": "sparse_bnn.core.model", "Masks": "sparse_bnn.core.model",
    "get_prior": "sparse_bnn.priors", "PRIORS": "sparse_bnn.priors",
    "NETS": "sparse_bnn.nets", "MLP": "sparse_bnn.nets", "net_from_config": "sparse_bnn.nets",
    "fit": "sparse_bnn.train", "FitResult": "sparse_bnn.train", "DivergenceError": "sparse_bnn.train",
    "Hook": "sparse_bnn.train", "svi_optimizer": "sparse_bnn.train",
    "Shrink": "sparse_bnn.sparsify.shrink", "ShrinkSchedule": "sparse_bnn.sparsify.shrink",
    "Reduction": "sparse_bnn.sparsify.reduction", "NodeBMRRule": "sparse_bnn.sparsify.reduction",
    "predict": "sparse_bnn.core.posterior", "predict_mean": "sparse_bnn.core.posterior",
    "posterior_mean_params": "sparse_bnn.core.posterior", "inclusion_probs": "sparse_bnn.core.posterior",
    "compact": "sparse_bnn.compact.prune", "mask_params": "sparse_bnn.compact.keep",
    "compression_report": "sparse_bnn.compact.report",
    "save_compact": "sparse_bnn.compact.io", "load_compact": "sparse_bnn.compact.io",
    "load_dataset": "sparse_bnn.data", "predict_run": "sparse_bnn.compact.deploy",
    "fit_with_bmr": "sparse_bnn.sparsify.reduction", "fit_shrinking": "sparse_bnn.sparsify.shrink",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


# exported names that a submodule of the package shares: importing the submodule must not
# rebind them (``import sparse_bnn.fit`` would otherwise make ``sparse_bnn.fit`` the module)
_KEPT_OVER_SUBMODULES = frozenset({"fit"})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _KEPT_OVER_SUBMODULES and isinstance(value, types.ModuleType):
            return  # the submodule stays in sys.modules; the attribute stays the exported object
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sparse_bnn' has no attribute {name!r}")

"""Hooks: what the training loop does between epochs.

A hook is a small object with pure-function methods over its own state, in the spirit of
Optax's ``init``/``update``::

    class Hook:
        name = "my_hook"          # key of its state in checkpoints and FitResult.hook_states
        modifies_model = False    # True: runs before the built-in summaries (kept units, validation)

        def init(self, fitting, info):               # once, before the first compilation
            return fitting, hook_state
        def update(self, fitting, hook_state, record):   # after every epoch
            return fitting, hook_state, {"field": value}  # new history fields
        def to_json(self, hook_state): ...          # for checkpoints (None: nothing to save)
        def restore(self, fitting, data, info): ... # from to_json's output, on --resume

``fitting`` is a :class:`~sparse_bnn.train.state.Fitting` ``(bnn, state, stop)``. A hook that
returns new masks changes jit data only; one that returns another ``bnn`` (a smaller network
with its sliced state) makes the loop recompile the epoch, on the same mesh and the same data
placement; ``stop=True`` ends the run after this epoch. The loop runs the hooks that modify the
model first (in the order given), then :class:`KeptUnits` and :class:`Validation`, then the
others, so an observing hook reads ``record["kept"]`` and ``record["val_accuracy"]``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sparse_bnn.train.distributed import place, replicated
from sparse_bnn.core.model import Masks, SparseBNN
from sparse_bnn.train.state import Fitting

__all__ = ["Hook", "KeptUnits", "LoopInfo", "ProgressBar", "Validation", "format_kept", "kept_units", "order_hooks"]


class LoopInfo(NamedTuple):
    """What a hook may need to know about the run it is part of."""

    mesh: Mesh
    epochs: int
    batch_size: int
    n_data: int


class Hook:
    """Base class of hooks: no state, no changes (override what the hook needs)."""

    name = "hook"
    modifies_model = False

    def init(self, fitting: Fitting, info: LoopInfo) -> tuple[Fitting, Any]:
        return fitting, None

    def update(self, fitting: Fitting, hook_state: Any, record: Mapping[str, Any]
               ) -> tuple[Fitting, Any, dict[str, Any]]:
        return fitting, hook_state, {}

    def to_json(self, hook_state: Any) -> Any:
        """A JSON value that :meth:`restore` turns back into the state (``None``: nothing to save)."""
        return None

    def restore(self, fitting: Fitting, data: Any, info: LoopInfo) -> tuple[Fitting, Any]:
        """The fitting and hook state a checkpoint was written with (``fitting`` is fresh from
        :meth:`init`; a hook that rebuilt the network rebuilds it here, so the checkpoint's
        arrays fit)."""
        return fitting, data

    def progress(self, record: Mapping[str, Any]) -> dict[str, str]:
        """Fields for the progress bar."""
        return {}

    def result(self, hook_state: Any) -> dict[str, Any]:
        """Fields of :class:`~sparse_bnn.train.state.FitResult` this hook fills in
        (``unit_origin``, ``removed``)."""
        return {}


def order_hooks(hooks, builtins) -> list[Hook]:
    """Model-modifying hooks first (in their order), then ``builtins``, then the rest."""
    hooks = list(hooks)
    names = [h.name for h in (*hooks, *builtins)]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"two hooks are named {duplicated[0]!r}; every hook needs its own name "
                         "(it keys the hook's state in checkpoints)")
    return ([h for h in hooks if h.modifies_model] + list(builtins)
            + [h for h in hooks if not h.modifies_model])


def kept_units(bnn: SparseBNN, params: Mapping[str, jax.Array], threshold: float = 0.5,
               masks: Masks | None = None) -> dict[str, int]:
    """Units per hidden layer kept by the median-probability model (and not masked off)."""
    from sparse_bnn.core.posterior import keep_masks
    keep = keep_masks(bnn, params, threshold, masks)
    return {l.name: int(np.sum(np.asarray(keep[l.name]))) if l.name in keep else l.units
            for l in bnn.layers[:-1]}


class KeptUnits(Hook):
    """Records ``kept``: units per hidden layer of the median-probability model. The progress bar
    shows ``kept=15+33/800``: each layer's kept units, joined by ``+``, over the prunable units of
    the network the fit started with."""

    name = "kept"

    def init(self, fitting, info):
        self._units_at_start = sum(layer.units for layer in fitting.bnn.layers[:-1])
        return fitting, None

    def update(self, fitting, hook_state, record):
        return fitting, hook_state, {"kept": kept_units(fitting.bnn, fitting.state.params,
                                                        masks=fitting.state.masks)}

    def progress(self, record):
        if "kept" not in record:
            return {}
        return {"kept": format_kept(record["kept"], getattr(self, "_units_at_start", None))}


def format_kept(kept: Mapping[str, int], units_at_start: int | None = None) -> str:
    """``"15+33/800"``: the kept units of each layer joined by ``+``, over ``units_at_start``."""
    return "+".join(map(str, kept.values())) + ("" if units_at_start is None else f"/{units_at_start}")


class Validation(Hook):
    """Records ``val_accuracy`` (classification) or ``val_rmse`` of the posterior-mean network on
    ``(x, y)`` after every epoch. Recompiles its program only when the network changes."""

    name = "validation"

    def __init__(self, x, y):
        self.x, self.y = x, y

    def init(self, fitting, info):
        from sparse_bnn.train.epoch import validate_data
        x, y = validate_data(fitting.bnn, self.x, self.y)
        self._y = y
        self._x_device = place(x, replicated(info.mesh))
        self._model, self._outputs = None, None
        return fitting, None

    def _program(self, bnn: SparseBNN) -> Callable:
        if bnn is not self._model:
            from sparse_bnn.core.posterior import posterior_mean_params
            # x is an argument, not a closed-over constant: XLA would otherwise constant-fold it
            self._outputs = jax.jit(lambda params, masks, x: bnn.functional.apply(
                posterior_mean_params(bnn, params, masks=masks)[0], x))
            self._model = bnn
        return self._outputs

    def update(self, fitting, hook_state, record):
        bnn, state = fitting.bnn, fitting.state
        outputs = np.asarray(self._program(bnn)(state.params, state.masks, self._x_device))
        if bnn.likelihood == "categorical":
            return fitting, hook_state, {"val_accuracy": float(np.mean(np.argmax(outputs, -1) == self._y))}
        error = outputs.reshape(self._y.shape) - self._y
        return fitting, hook_state, {"val_rmse": float(np.sqrt(np.mean(error ** 2)))}

    def progress(self, record):
        return {"acc": f"{record['val_accuracy']:.4f}"} if "val_accuracy" in record else {}


class ProgressBar:
    """A tqdm bar over epochs showing the loss and the hooks' progress fields."""

    def __init__(self, epochs: int, first_epoch: int, description: str = "epochs"):
        from tqdm.auto import tqdm
        self._bar = tqdm(total=epochs, initial=first_epoch, desc=description, unit="epoch")

    def update(self, record: Mapping[str, Any], fields: Mapping[str, str]) -> None:
        self._bar.set_postfix({"loss": f"{record['loss']:.4f}", **fields})
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def unit_masks_with(masks: Masks, layers, fill: float = 1.0) -> Masks:
    """``masks`` plus an all-``fill`` unit mask for each of ``layers`` that has none (float32)."""
    units = {l.name: jnp.full(l.units, fill, jnp.float32) for l in layers}
    units.update({k: jnp.asarray(v, jnp.float32) for k, v in masks.units.items()})
    return Masks(units, dict(masks.weights))

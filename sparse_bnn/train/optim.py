"""The SVI optimiser: Adam with its own rate for the node indicators, and learning-rate schedules."""
from __future__ import annotations

import numpy as np
import optax

from sparse_bnn.core.spec import INDICATOR_LOGIT_SUFFIX as INDICATOR_SUFFIX


def scale_indicator_updates(factor: float) -> optax.GradientTransformation:
    """Multiply the updates of the indicator logits (``*.z.logit``) by ``factor`` (stateless)."""

    def update(updates, state, params=None):
        return {k: (u * factor if k.endswith(INDICATOR_SUFFIX) else u) for k, u in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


LR_SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(learning_rate: float, schedule: str = "constant", total_steps: int | None = None,
                           final_fraction: float = 0.1) -> float | optax.Schedule:
    """The learning rate over the optimiser's steps.

    * ``"constant"``: ``learning_rate`` (a float: the optimiser state is plain Adam's);
    * ``"cosine"``: from ``learning_rate`` to ``final_fraction * learning_rate`` at step
      ``total_steps`` along a half cosine (``optax.cosine_decay_schedule``), then flat;
    * ``"linear"``: the same ends joined by a straight line (``optax.linear_schedule``).
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if schedule == "constant":
        return learning_rate
    if total_steps is None or int(total_steps) <= 0:
        raise ValueError(f"the {schedule} schedule decays over total_steps, which must be a positive "
                         f"integer (epochs x steps per epoch), got {total_steps}")
    if not (np.isfinite(final_fraction) and 0.0 < final_fraction <= 1.0):
        raise ValueError(f"final_fraction (of the learning rate at the end) must lie in (0, 1], got {final_fraction}")
    if schedule == "cosine":
        return optax.cosine_decay_schedule(learning_rate, int(total_steps), alpha=final_fraction)
    return optax.linear_schedule(learning_rate, final_fraction * learning_rate, int(total_steps))


def svi_optimizer(learning_rate: float = 1e-3, indicator_learning_rate: float | None = None, *,
                  schedule: str = "constant", total_steps: int | None = None, final_fraction: float = 0.1
                  ) -> optax.GradientTransformation:
    """Adam at ``learning_rate``; indicator logits at ``indicator_learning_rate`` when given.

    ``schedule``, ``total_steps``, ``final_fraction``: :func:`learning_rate_schedule`; both
    rates follow it (the indicators' stays ``indicator_learning_rate / learning_rate`` times the
    weights').

    Under Adam every logit moves about its learning rate per step whatever the size of its
    gradient, so the indicators' rate sets how fast units are decided. Which ratio works depends
    on the initial posterior scales (``SparseBNN(rho_init=...)``): with ``rho_init=-6`` the slab
    KL is large and one shared fast rate can switch every unit off, so indicators slower than the
    weights are safer; with ``rho_init=-3`` indicators faster than the weights (e.g. ``1e-2``
    against ``3e-3``) decide units early and reach a lower loss (docs/tuning.md, "Settings that
    prune").
    """
    for name, value in (("learning_rate", learning_rate), ("indicator_learning_rate", indicator_learning_rate)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive, got {value}")
    adam = optax.adam(learning_rate_schedule(learning_rate, schedule, total_steps, final_fraction))
    if indicator_learning_rate is None or indicator_learning_rate == learning_rate:
        return adam
    return optax.chain(adam, scale_indicator_updates(indicator_learning_rate / learning_rate))

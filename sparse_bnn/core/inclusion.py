"""Layer-wise prior inclusion probabilities ``lambda_l`` (``math.md`` §2)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sparse_bnn.nets.base import UnitLayer


def theory_inclusion_probs(widths: Sequence[int], n_data: int, C: float = 1e-9,
                           fan_ins: Sequence[int] | None = None) -> np.ndarray:
    """The theory-driven ``lambda_l`` for every hidden layer ``l = 1..L``.

    Args:
      widths: ``k_0`` (input) ... ``k_L`` (last hidden), ``k_{L+1}`` (output).
      n_data: number of training points ``n``.
      C: the constant of the formula.
      fan_ins: inputs per unit of each hidden layer when they differ from ``k_{l-1}``
        (``C_in * kh * kw`` for a conv); default ``widths[:-2]``.

    Returns:
      ``[L]`` inclusion probabilities.
    """
    k = np.asarray(widths, dtype=np.float64)
    if k.ndim != 1 or len(k) < 3 or np.any(k <= 0):
        raise ValueError(f"widths must be >= 3 positive sizes (input, hidden..., output), got {list(widths)}")
    if n_data <= 0:
        raise ValueError(f"n_data must be positive, got {n_data}")
    L = len(k) - 2
    fan = np.asarray(fan_ins if fan_ins is not None else k[:-2], dtype=np.float64)
    i = np.arange(L + 1)
    u = (L + 1) ** 2 * (np.log(n_data) + np.log(L + 1) + np.log(k[i] + 1) + np.log(k[i + 1]))
    common = np.sum(np.log(k[: L + 1] + 1)) + L + np.log(n_data) + np.log(np.sum(u))
    hidden = k[1 : L + 1]
    v = (fan + 1) ** 2 + common + np.log(hidden)
    return np.exp(-(np.log(hidden) + C * (fan + 1) * v))


def layer_inclusion_probs(layers: Sequence[UnitLayer], n_data: int,
                          inclusion: str | float | Mapping[str, float] = "theory") -> dict[str, float]:
    """``{layer name: lambda_l}`` for the prunable layers.

    ``inclusion`` is ``"theory"`` (the formula), one probability for every layer, or a mapping
    from layer name to probability (layers it leaves out get the theory value).
    """
    prunable = [layer for layer in layers if layer.prunable]
    if not prunable:
        return {}
    theory = {}
    needs_theory = isinstance(inclusion, str) or (
        isinstance(inclusion, Mapping) and set(l.name for l in prunable) - set(inclusion))
    if isinstance(inclusion, str) and inclusion != "theory":
        raise ValueError(f"inclusion must be 'theory', a probability or a mapping, got {inclusion!r}")
    if needs_theory:
        widths = [prunable[0].fan_in] + [l.units for l in prunable] + [layers[-1].units]
        probs = theory_inclusion_probs(widths, n_data, fan_ins=[l.fan_in for l in prunable])
        theory = {l.name: float(p) for l, p in zip(prunable, probs)}
    if isinstance(inclusion, Mapping):
        unknown = set(inclusion) - set(l.name for l in prunable)
        if unknown:
            raise ValueError(f"inclusion names unknown layers {sorted(unknown)}; "
                             f"prunable layers are {[l.name for l in prunable]}")
        out = {**theory, **{k: float(v) for k, v in inclusion.items()}}
    elif isinstance(inclusion, str):
        out = theory
    else:
        out = {l.name: float(inclusion) for l in prunable}
    for name, p in out.items():
        if not 0.0 < p < 1.0:
            raise ValueError(f"inclusion probability of {name} must be in (0, 1), got {p}")
    return out

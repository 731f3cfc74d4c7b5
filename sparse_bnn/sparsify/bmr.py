"""Bayesian model reduction (``math.md`` §6): pure functions on arrays.

A flat model has the prior ``N(0, sigma^2)`` and the Gaussian posterior ``N(mu, 1/pi)`` on each
weight. Shrinking the prior to ``N(0, g^2)`` gives, in closed form, the reduced posterior and
the change of log evidence ``Delta F = log p_reduced(y) - log p_full(y)``:
``Delta F > 0`` favours the reduced model, i.e. pruning the weight.

Checked in ``tests/test_bmr.py`` against numerical quadrature of
``log int q(w) p_reduced(w) / p_full(w) dw`` and against the exact marginal likelihoods of a
conjugate linear-Gaussian model: the formula and the sign convention of ``math.md`` §6 are right.

Node (group) reduction shrinks every entry a unit owns at once; with a factorised posterior
and prior the log evidence ratio of the group is the sum of its entries' ``Delta F``.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma

from sparse_bnn.nets.base import Path, UnitLayer, path_name


class ReducedPosterior(NamedTuple):
    """``delta_f``: log evidence of the reduced model minus that of the full one (> 0: prune).
    ``mean``, ``var``: the Gaussian posterior under the reduced prior. All broadcast shapes."""

    delta_f: jax.Array
    mean: jax.Array
    var: jax.Array


class InclusionThreshold(NamedTuple):
    """``zeta``: learned log prior odds of inclusion (scalar); ``inclusion_prob``: ``q_i``."""

    zeta: jax.Array
    inclusion_prob: jax.Array


def _concrete(value) -> np.ndarray | None:
    """The value as a NumPy array, or ``None`` when it is traced (inside ``jit``)."""
    try:
        return np.asarray(value)
    except jax.errors.TracerArrayConversionError:
        return None


def _check_positive(name: str, value) -> None:
    concrete = _concrete(value)
    if concrete is not None and not np.all(concrete > 0):
        raise ValueError(f"{name} must be positive everywhere, got minimum {concrete.min()}")


def reduced_gaussian(mu: jax.Array, precision: jax.Array, prior_var: jax.Array | float,
                     reduced_var: jax.Array | float) -> ReducedPosterior:
    """Reduce the prior ``N(0, prior_var)`` to ``N(0, reduced_var)`` under the posterior ``N(mu, 1/precision)``.

    With ``M = g^2 (pi - 1/sigma^2) + 1`` (``g^2 = reduced_var``, ``sigma^2 = prior_var``,
    ``pi = precision``)::

        var     = g^2 / M
        mean    = var * pi * mu
        delta_f = -1/2 log M + 1/2 log(pi sigma^2) - 1/2 pi mu^2 + 1/2 (pi mu)^2 var

    computed in the algebraically equal, cancellation-free form
    ``-1/2 log1p(g^2 (pi - 1/sigma^2)) + 1/2 log(pi sigma^2) - 1/2 pi mu^2 (1 - g^2/sigma^2) / M``.
    All arguments broadcast against each other; ``reduced_var < prior_var`` keeps ``M > 0``.
    """
    for name, value in (("precision", precision), ("prior_var", prior_var), ("reduced_var", reduced_var)):
        _check_positive(name, value)
    prior, reduced = _concrete(prior_var), _concrete(reduced_var)
    if prior is not None and reduced is not None and not np.all(reduced < prior):
        raise ValueError("reduced_var must be smaller than prior_var (a reduced prior shrinks); "
                         f"got reduced_var {reduced} and prior_var {prior}")
    mu, precision = jnp.asarray(mu), jnp.asarray(precision)
    prior_var, reduced_var = jnp.asarray(prior_var), jnp.asarray(reduced_var)
    shrink = 1.0 - reduced_var / prior_var
    m = reduced_var * precision + shrink
    var = reduced_var / m
    mean = var * precision * mu
    delta_f = (-0.5 * jnp.log1p(reduced_var * (precision - 1.0 / prior_var))
               + 0.5 * jnp.log(precision * prior_var)
               - 0.5 * precision * mu**2 * shrink / m)
    return ReducedPosterior(delta_f, mean, var)


def savage_dickey(mu: jax.Array, precision: jax.Array, prior_var: jax.Array | float) -> jax.Array:
    """``log q(0) - log p(0) = 1/2 log(pi sigma^2) - 1/2 pi mu^2``: the limit of
    ``reduced_gaussian(...).delta_f`` as ``reduced_var -> 0`` (same sign: > 0 favours pruning)."""
    precision, prior_var = jnp.asarray(precision), jnp.asarray(prior_var)
    return 0.5 * jnp.log(precision * prior_var) - 0.5 * precision * jnp.asarray(mu) ** 2


def sum_over_units(values: jax.Array, axis: int, interleave: int = 1) -> jax.Array:
    """Sum every entry of ``values`` that belongs to each unit along ``axis``.

    With ``interleave`` > 1 the axis is a flattened ``(positions, units)`` axis, unit index
    fastest: entry ``p * units + j`` belongs to unit ``j`` (``ParamAxis.interleave``).
    ``values [..., interleave * units, ...] -> [units]``.
    """
    values = jnp.asarray(values)
    if values.ndim == 0:
        raise ValueError("values must have at least one axis (the unit axis), got a scalar")
    if not -values.ndim <= axis < values.ndim:
        raise ValueError(f"axis {axis} out of range for an array of shape {values.shape}")
    if interleave < 1 or values.shape[axis] % interleave:
        raise ValueError(f"axis {axis} of length {values.shape[axis]} is not a multiple of "
                         f"interleave {interleave}")
    values = jnp.moveaxis(values, axis, 0)
    units = values.shape[0] // interleave
    return jnp.sum(values.reshape(interleave, units, -1), axis=(0, 2))


def group_delta_f(delta_f: Mapping[Path, jax.Array], layer: UnitLayer) -> jax.Array:
    """Node ``Delta F`` of each unit: the sum of its members' entries. ``{path: array} -> [units]``."""
    total = jnp.zeros(layer.units)
    for member in layer.members:
        if member.path not in delta_f:
            raise ValueError(f"no Delta F for {path_name(member.path)!r}, a member of layer "
                             f"{layer.name!r}; pass one array per member path")
        per_unit = sum_over_units(delta_f[member.path], member.axis, member.interleave)
        if per_unit.shape != (layer.units,):
            raise ValueError(f"{path_name(member.path)!r} gives {per_unit.shape[0]} units along axis "
                             f"{member.axis}, but layer {layer.name!r} has {layer.units}")
        total = total + per_unit
    return total


def node_delta_f(layers: Sequence[UnitLayer], means: Mapping[Path, jax.Array],
                 variances: Mapping[Path, jax.Array],
                 prior_var: float | Mapping[Path, float],
                 reduced_var_ratio: float = 1e-8) -> dict[str, jax.Array]:
    """Per-unit ``Delta F`` of switching each unit off, for every prunable layer.

    Each member entry's prior ``N(0, prior_var)`` is reduced to ``N(0, reduced_var_ratio *
    prior_var)``; the entries of a unit sum (``group_delta_f``). Layers with ``prunable=False``
    (the output layer) are left out.

    Args:
      layers: the net's unit layers (``net.unit_layers()``).
      means, variances: posterior mean and variance of every member path, ``{path: array}``.
      prior_var: the full prior's variance, one float or one per path.
      reduced_var_ratio: ``g^2 / sigma^2``, small.

    Returns:
      ``{layer.name: delta_f [units]}``; ``delta_f > 0`` favours removing the unit.
    """
    if not 0.0 < reduced_var_ratio < 1.0:
        raise ValueError(f"reduced_var_ratio must be in (0, 1), got {reduced_var_ratio}")
    out = {}
    for layer in layers:
        if not layer.prunable:
            continue
        entry_delta_f = {}
        for member in layer.members:
            path = member.path
            for what, table in (("means", means), ("variances", variances)):
                if path not in table:
                    raise ValueError(f"{what} has no entry for {path_name(path)!r} "
                                     f"(member of layer {layer.name!r})")
            if isinstance(prior_var, Mapping):
                if path not in prior_var:
                    raise ValueError(f"prior_var has no entry for {path_name(path)!r}; "
                                     "give one float or one per member path")
                sigma2 = prior_var[path]
            else:
                sigma2 = prior_var
            _check_positive(f"variances[{path_name(path)!r}]", variances[path])
            entry_delta_f[path] = reduced_gaussian(
                means[path], 1.0 / jnp.asarray(variances[path]), sigma2,
                reduced_var_ratio * jnp.asarray(sigma2)).delta_f
        out[layer.name] = group_delta_f(entry_delta_f, layer)
    return out


def learned_inclusion_threshold(delta_f: jax.Array | Sequence[jax.Array], n_iter: int = 10,
                                init_zeta: float = 0.0, tol: float = 1e-6) -> InclusionThreshold:
    """Fixed point of the Beta-Bernoulli inclusion rate of one layer (``math.md`` §6).

    Iterates ``q_i = sigmoid(zeta - DeltaF_i)``, ``alpha = 1 + sum q_i``,
    ``beta = 1 + sum (1 - q_i)``, ``zeta = digamma(alpha) - digamma(beta)`` at most ``n_iter``
    times, stopping once an iteration moves ``zeta`` by at most ``tol`` (``tol=0``: exactly
    ``n_iter`` times); ``zeta`` is the expected log prior odds of inclusion, ``q_i`` the posterior
    inclusion probability of entry ``i``. ``delta_f`` is one array or a sequence of arrays (the
    layer's members; the sums run over all of them, nothing is concatenated). Returns the last
    ``zeta`` and ``q`` computed from it (like ``delta_f``). ``delta_f [...] -> [], [...]``.
    """
    parts = [jnp.asarray(d) for d in (delta_f if isinstance(delta_f, (list, tuple)) else [delta_f])]
    size = sum(int(d.size) for d in parts)
    if size == 0:
        raise ValueError("delta_f is empty; pass the Delta F of every entry of one layer")
    if int(n_iter) != n_iter or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    dtype = jnp.result_type(*parts)

    def update(zeta):
        included = sum(jnp.sum(jax.nn.sigmoid(zeta - d)) for d in parts)
        return digamma(1.0 + included) - digamma(1.0 + size - included)

    def not_done(carry):
        i, zeta, step = carry
        return (i < n_iter) & (step > tol)

    def body(carry):
        i, zeta, _ = carry
        new = update(zeta)
        return i + 1, new, jnp.abs(new - zeta)

    start = (jnp.zeros((), jnp.int32), jnp.asarray(init_zeta, dtype), jnp.asarray(jnp.inf, dtype))
    _, zeta, _ = jax.lax.while_loop(not_done, body, start)
    q = [jax.nn.sigmoid(zeta - d) for d in parts]
    return InclusionThreshold(zeta, q if isinstance(delta_f, (list, tuple)) else q[0])


def elementwise_prune_mask(delta_f: jax.Array, n_iter: int = 10, init_zeta: float = 0.0,
                           zeta: jax.Array | float | None = None) -> jax.Array:
    """Keep mask of one layer's entries: ``NOT (DeltaF_i > zeta)`` (``True`` = keep).

    ``zeta`` is learned with :func:`learned_inclusion_threshold` unless given. A NaN ``Delta F``
    is kept. ``delta_f [...] -> bool [...]``.
    """
    delta_f = jnp.asarray(delta_f)
    if zeta is None:
        zeta = learned_inclusion_threshold(delta_f, n_iter, init_zeta).zeta
    return jnp.logical_not(delta_f > zeta)

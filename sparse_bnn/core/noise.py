"""Gaussian noise for the guide's weight draws from a keyed counter hash.

The guide draws one standard normal per weight per step (478k for MLP 784-400-400-10). JAX's
``jax.random.normal`` runs threefry (20 rounds) once per number, which on a CPU costs more than
all the rest the guide adds to a step. Here element ``i`` of a draw gets the 32 bits

    h(i) = mix(mix(i + a) ^ b),    a = mix(k0 ^ C0),  b = mix(k1 ^ a ^ C1),

with ``mix`` Wellons' "lowbias32" integer hash and ``(k0, k1)`` the 64 bits of the draw's JAX key
(numpyro's ``seed`` handler gives every site a fresh threefry-derived key each step; hashing the
key words first also keeps plain keys such as ``PRNGKey(0)``, ``PRNGKey(1)`` apart), and turns
them into a normal by the inverse CDF,
as ``jax.random.normal`` does (``sqrt(2) erfinv(u)``, ``u`` uniform in ``(-1, 1)`` from 23 bits).
For a fixed key ``h`` is a bijection of the counter, so a draw never repeats a value pattern; it
is elementwise in the counter, so a sharded array draws its noise where it lives.

It is a fast Monte Carlo generator for reparametrised gradients, not a cryptographic one:
``tests/test_noise.py`` checks moments, the Kolmogorov-Smirnov distance, the balance of every
bit, and correlations within a draw and between keys. ``SparseBNN(weight_noise="threefry")``
draws the same noise with ``jax.random.normal`` instead.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

MAX_DRAW = 2**32


def _mix(x: jax.Array) -> jax.Array:
    """lowbias32 (C. Wellons, "Hash function prospector"): a bijection of ``uint32``."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _key_words(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    data = jnp.ravel(data).astype(jnp.uint32)
    return data[0], data[-1]


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``uint32[shape]``: element ``i`` (row-major) is ``h(i)`` of the module docstring."""
    size = int(np.prod(shape, dtype=np.int64))
    if size > MAX_DRAW:
        raise ValueError(f"a hash draw holds at most 2**32 numbers; shape {shape} has {size}")
    k0, k1 = _key_words(key)
    a = _mix(k0 ^ jnp.uint32(0x9E3779B9))
    b = _mix(k1 ^ a ^ jnp.uint32(0x85EBCA6B))
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return _mix(_mix(counter + a) ^ b)


def hash_normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normals ``[shape]`` from :func:`hash_bits`; ``|value| <= 5.3`` (23-bit uniforms)."""
    mantissa = (hash_bits(key, tuple(shape)) >> 9).astype(jnp.float32)  # 0 .. 2**23 - 1
    uniform = (mantissa + 0.5) * np.float32(2.0**-22) - 1.0  # symmetric in (-1, 1), never +-1
    return (np.float32(np.sqrt(2.0)) * jax.scipy.special.erfinv(uniform)).astype(dtype)


class HashNormal(dist.Normal):
    """``Normal(loc, scale)`` whose samples use :func:`hash_normal` noise (same density)."""

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        return self.loc + self.scale * hash_normal(key, shape, jnp.result_type(self.loc))


WEIGHT_NOISE = {"hash": HashNormal, "threefry": dist.Normal}

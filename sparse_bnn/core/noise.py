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

:func:`hash_normal_many` draws several arrays, each exactly as :func:`hash_normal` would, in
one loop over fixed-size chunks of their concatenation. The guide draws all of a step's weight
noise that way: XLA computes the noise once and stores it, where separate draws were fused and
recomputed inside every kernel that reads them (the forward weights, the gradient, the optimiser
update), which multiplied the compiled program's size and compile time.

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
MANY_CHUNK = 2**16  # numbers per iteration of hash_normal_many's loop


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
    a, b = _key_mix(key)
    counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return _mix(_mix(counter + a) ^ b)


def _key_mix(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(a, b)`` of the module docstring for one key."""
    k0, k1 = _key_words(key)
    a = _mix(k0 ^ jnp.uint32(0x9E3779B9))
    return a, _mix(k1 ^ a ^ jnp.uint32(0x85EBCA6B))


def _normal_from_bits(bits: jax.Array) -> jax.Array:
    mantissa = (bits >> 9).astype(jnp.float32)  # 0 .. 2**23 - 1
    uniform = (mantissa + 0.5) * np.float32(2.0**-22) - 1.0  # symmetric in (-1, 1), never +-1
    return np.float32(np.sqrt(2.0)) * jax.scipy.special.erfinv(uniform)


def hash_normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normals ``[shape]`` from :func:`hash_bits`; ``|value| <= 5.3`` (23-bit uniforms)."""
    return _normal_from_bits(hash_bits(key, tuple(shape))).astype(dtype)


def hash_normal_many(keys, shapes, dtypes=None, chunk: int = MANY_CHUNK) -> list[jax.Array]:
    """``[hash_normal(key, shape, dtype) for ...]``, the same numbers, drawn in one ``lax.map``
    over chunks of ``chunk`` numbers of the draws' concatenation (see the module docstring).

    ``keys``: one per draw; ``shapes``: the draws' shapes; ``dtypes``: theirs (default float32).
    """
    shapes = [tuple(int(d) for d in shape) for shape in shapes]
    dtypes = list(dtypes) if dtypes is not None else [jnp.float32] * len(shapes)
    if not (len(keys) == len(shapes) == len(dtypes)):
        raise ValueError(f"need one key and one dtype per shape, got {len(keys)} keys, {len(dtypes)} dtypes "
                         f"and {len(shapes)} shapes")
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in shapes]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    total = int(offsets[-1])
    if total + chunk > MAX_DRAW or len(shapes) < 2:  # a global uint32 counter would wrap: one by one
        return [hash_normal(k, shape, dtype) for k, shape, dtype in zip(keys, shapes, dtypes)]
    mixed = [_key_mix(k) for k in keys]
    a = jnp.stack([m[0] for m in mixed])
    b = jnp.stack([m[1] for m in mixed])
    starts = jnp.asarray(offsets[:-1], jnp.uint32)
    ends = jnp.asarray(offsets[1:-1], jnp.uint32)  # the first element of every draw but the first

    def draw(index):
        counter = index.astype(jnp.uint32) * jnp.uint32(chunk) + jax.lax.iota(jnp.uint32, chunk)
        site = jnp.sum(counter[:, None] >= ends[None, :], axis=1)  # which draw each number belongs to
        return _normal_from_bits(_mix(_mix(counter - starts[site] + a[site]) ^ b[site]))

    flat = jax.lax.map(draw, jnp.arange(-(-total // chunk))).reshape(-1)
    return [flat[start:start + size].reshape(shape).astype(dtype)
            for start, size, shape, dtype in zip(offsets[:-1], sizes, shapes, dtypes)]


class HashNormal(dist.Normal):
    """``Normal(loc, scale)`` whose samples use :func:`hash_normal` noise (same density).

    ``noise``: the standard normals its key gives, drawn already (:func:`hash_normal_many`); a
    sample of another shape draws its own.
    """

    pytree_data_fields = ("noise",)

    def __init__(self, loc=0.0, scale=1.0, *, noise=None, validate_args=None):
        self.noise = noise
        super().__init__(loc, scale, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        noise = self.noise
        if noise is None or tuple(jnp.shape(noise)) != shape:
            noise = hash_normal(key, shape, jnp.result_type(self.loc))
        return self.loc + self.scale * noise


WEIGHT_NOISE = {"hash": HashNormal, "threefry": dist.Normal}

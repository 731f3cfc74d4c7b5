"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.core.noise` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.core.noise import HashNormal, MAX_DRAW, WEIGHT_NOISE, hash_bits, hash_normal

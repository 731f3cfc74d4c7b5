"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.compact.io` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.compact.io import (ARCHITECTURE, FORMAT, FORMAT_VERSION, PARAMS, SAMPLES, STATE, batched,
                                   compact_outputs, load_compact, load_compact_samples, read_architecture,
                                   sampled_outputs, save_compact)

__all__ = ["FORMAT_VERSION", "batched", "compact_outputs", "load_compact", "load_compact_samples", "read_architecture",
           "sampled_outputs", "save_compact"]

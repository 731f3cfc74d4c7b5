"""Former home of the module, kept so that old imports work for one release: it lives in
:mod:`sparse_bnn.train.distributed` now."""
from __future__ import annotations

# ruff: noqa: F401  (re-exports)

from sparse_bnn.train.distributed import (DATA_AXIS, DEVICE_MEMORY_FRACTION, FALLBACK_DEVICE_BYTES, batch_sharding,
                                          check_batch_size, chunk_sharding, data_mesh, data_parallel_size,
                                          free_device_bytes, local_batch_slice, place, place_chunk, replicated,
                                          resolve_mesh, should_stream)

__all__ = ["DATA_AXIS", "data_mesh", "resolve_mesh", "data_parallel_size", "check_batch_size", "replicated",
           "batch_sharding", "chunk_sharding", "place", "place_chunk", "local_batch_slice", "free_device_bytes",
           "should_stream"]

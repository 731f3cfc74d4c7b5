"""Data parallelism for :func:`sparse_bnn.train.fit` through JAX's own sharding.

One code path for one and many devices: a :class:`jax.sharding.Mesh` with one axis named
``"data"``; every minibatch is sharded along its batch axis (``NamedSharding(mesh, P("data"))``),
the variational parameters and the optimiser state are replicated, and XLA inserts the gradient
all-reduce. With one device every constraint is a no-op and the computation is the plain
single-device one.

>>> mesh = data_mesh(4)                      # the first 4 local devices
>>> result = fit(bnn, x, y, epochs=10, batch_size=1024, mesh=mesh)   # or devices=4

Data placement
  * Device-resident (the default when the data fit): ``x``/``y`` are replicated on every device
    and the shuffled index of each step is sharded, so each device gathers only its own rows
    from its local copy: no communication for the data, the batch is born sharded.
  * Streaming (data larger than device memory, ``fit(..., streaming=True)``): the data stay in
    host memory; each epoch's permutation (the same one the device-resident epoch draws) is
    gathered on the host in chunks of ``K`` minibatches, each chunk is put on the devices
    already sharded (``[K, batch, ...]`` with ``P(None, "data")``) while the previous chunk
    runs, and one jitted ``lax.scan`` runs per chunk. Same seed, same result as device-resident.
    :func:`should_stream` chooses between the two by size.

Several machines (multi-host; untested here, no cluster at hand)
  Start the same script on every host, and before anything else touches JAX::

      import jax
      jax.distributed.initialize(coordinator_address="host0:1234",   # on GPU/TPU clusters the
                                 num_processes=n_hosts,              # arguments are usually found
                                 process_id=this_host)               # from the environment
      result = fit(bnn, x, y, epochs=..., batch_size=global_batch, streaming=True)

  The default mesh then spans ``jax.devices()`` (every device of every host; devices of one
  host are contiguous in it). Every process draws the same permutation and the same step keys
  (same seed), and each host feeds only its shard of every global minibatch: the rows of the
  batch that land on its own devices (:func:`local_batch_slice`), made into one global array
  with ``jax.make_array_from_process_local_data``. ``x`` may be a ``numpy.memmap`` over a file
  every host can read, so a host touches only the rows it feeds. Replicated values (parameters,
  state) are assembled the same way from each host's identical copy. Progress bars, history and
  checkpoints should be written by ``jax.process_index() == 0`` only (pass ``progress=False``
  and ``checkpoint_dir=None`` on the others).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
DEVICE_MEMORY_FRACTION = 0.5  # of a device's free memory the data may take before streaming
FALLBACK_DEVICE_BYTES = 4 * 2**30  # assumed free memory when the backend reports none (CPU)


def data_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"``.

    Args:
      devices: ``None`` for every device (``jax.devices()``: all local devices, or all devices
        of all hosts after ``jax.distributed.initialize``), an ``int`` ``N`` for the first ``N``
        local devices, or an explicit sequence of devices.
    """
    if devices is None:
        chosen = jax.devices()
    elif isinstance(devices, (int, np.integer)):
        available = jax.local_devices()
        if jax.process_count() > 1:
            raise ValueError("devices=N picks local devices and cannot span several hosts; "
                             "leave devices=None (all devices of all hosts) or pass a mesh")
        if not 1 <= int(devices) <= len(available):
            raise ValueError(f"devices must be between 1 and the {len(available)} local device(s), "
                             f"got {devices}")
        chosen = available[: int(devices)]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices is an empty sequence; pass None, a count, or some devices")
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def resolve_mesh(mesh: Mesh | None, devices: int | Sequence[jax.Device] | None) -> Mesh:
    """The mesh ``fit`` runs on: the given one (checked), else :func:`data_mesh` of ``devices``."""
    if mesh is None:
        return data_mesh(devices)
    if devices is not None:
        raise ValueError("pass either mesh or devices, not both")
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"the mesh needs an axis named {DATA_AXIS!r} to shard batches over; "
                         f"it has {mesh.axis_names}")
    return mesh


def data_parallel_size(mesh: Mesh) -> int:
    """How many shards a batch is cut into (the size of the ``"data"`` axis)."""
    return int(mesh.shape[DATA_AXIS])


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the ``"data"`` axis."""
    shards = data_parallel_size(mesh)
    if batch_size % shards:
        lower, upper = (batch_size // shards) * shards, (batch_size // shards + 1) * shards
        suggestion = f"{lower} or {upper}" if lower > 0 else f"{upper}"
        raise ValueError(f"the global batch size {batch_size} does not divide by the {shards} devices "
                         f"it is sharded over; use a multiple of {shards} (e.g. {suggestion}) or fewer devices")


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, resident data)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A minibatch ``[batch, ...]`` split along its first axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def chunk_sharding(mesh: Mesh) -> NamedSharding:
    """A chunk of minibatches ``[steps, batch, ...]`` split along the batch axis."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def place(tree: Any, sharding: NamedSharding) -> Any:
    """Put every array of ``tree`` on the devices with ``sharding``.

    One process: :func:`jax.device_put`. Several: each process passes its share of every
    array (the whole array for a replicated sharding; the rows of its devices otherwise, see
    :func:`local_batch_slice`) to ``jax.make_array_from_process_local_data``.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), tree)


def place_chunk(chunk: np.ndarray, mesh: Mesh, global_shape: tuple[int, ...]) -> jax.Array:
    """A host chunk ``[steps, local batch, ...]`` -> a global ``[steps, batch, ...]`` array sharded
    along the batch axis (this process's rows only when there are several processes)."""
    sharding = chunk_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(chunk, sharding)
    return jax.make_array_from_process_local_data(sharding, chunk, global_shape)


def local_batch_slice(mesh: Mesh, batch_size: int) -> slice:
    """The columns of a global minibatch that this process's devices hold (all of them on one host).

    The devices of a process must be contiguous along the ``"data"`` axis (``jax.devices()`` is
    ordered by process, so the default mesh is).
    """
    if jax.process_count() == 1:
        return slice(0, batch_size)
    sharding = batch_sharding(mesh)
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(batch_size if rows.stop is None else rows.stop)
    start, stop = min(starts), max(stops)
    if stop - start != sum(b - a for a, b in set(zip(starts, stops))):
        raise ValueError("this host's devices are not contiguous along the mesh's 'data' axis; "
                         "build the mesh from jax.devices() in their order")
    return slice(start, stop)


def free_device_bytes(mesh: Mesh) -> int | None:
    """The smallest free memory of the mesh's local devices, or ``None`` if the backend does not say."""
    free = []
    for device in mesh.devices.flat:
        if device.process_index != jax.process_index():
            continue
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = None
        if not stats or "bytes_limit" not in stats:
            return None
        free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
    return min(free) if free else None


def should_stream(data_bytes: int, mesh: Mesh, fraction: float = DEVICE_MEMORY_FRACTION,
                  fallback_bytes: int = FALLBACK_DEVICE_BYTES) -> bool:
    """Stream from the host when the replicated data would take more than ``fraction`` of a device's
    free memory (``fallback_bytes`` of it when the backend reports no memory statistics)."""
    free = free_device_bytes(mesh)
    return data_bytes > fraction * (fallback_bytes if free is None else free)


__all__ = ["DATA_AXIS", "data_mesh", "resolve_mesh", "data_parallel_size", "check_batch_size",
           "replicated", "batch_sharding", "chunk_sharding", "place", "place_chunk",
           "local_batch_slice", "free_device_bytes", "should_stream"]

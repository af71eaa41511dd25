"""The device mesh and the layouts on it: parameters replicated, batches split over 'data' across devices and hosts."""

import collections

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh, axis 'data', over `devices` (default: every device of every process); what pmap did, as jit."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def global_batch(mesh, local: dict) -> dict:
  """A global array per key from this process's rows (process i holds rows [i n, (i + 1) n) of the batch)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def process_rows(global_size: int) -> slice:
  """This process's rows of a global batch of `global_size`."""
  n = global_size // jax.process_count()
  return slice(jax.process_index() * n, (jax.process_index() + 1) * n)


def prefetch_to_mesh(batches, mesh, size: int = 2):
  """Global arrays of this process's `batches`, `size` - 1 ahead: the transfer of the next batch to the devices is
  under way while the current step runs (device_put is asynchronous), so a step never waits for one."""
  queue = collections.deque()
  try:
    for local in batches:
      queue.append(global_batch(mesh, local))
      if len(queue) == size:
        yield queue.popleft()
    while queue:
      yield queue.popleft()
  finally:
    close = getattr(batches, 'close', None)
    if close is not None:
      close()

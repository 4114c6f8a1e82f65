"""Mesh and shardings: axes ('data', 'fsdp'); parameters and optimizer state replicated, or sharded
along 'fsdp' (big_vision's rule: the largest axis that divides evenly); batch over both axes."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from tpm_jax.config import MeshConfig

AXES = ('data', 'fsdp')


def make_mesh(mesh_cfg: MeshConfig | None = None, devices=None):
  """The ('data', 'fsdp') mesh of ``mesh_cfg`` (default: data parallel) over ``devices`` (default: all)."""
  devices = devices if devices is not None else jax.devices()
  shape = MeshConfig.from_dict(mesh_cfg).shape(len(devices)) if not isinstance(mesh_cfg, MeshConfig) else \
      mesh_cfg.shape(len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def _fsdp_spec(shape, fsdp: int, min_size: int) -> P:
  if fsdp == 1 or np.prod(shape, dtype=np.int64) < min_size:
    return P()
  for axis in np.argsort(shape)[::-1]:  # the largest axis that divides evenly
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh, *, fsdp_min_size: int = 2 ** 14):
  """NamedSharding for every array of a (possibly abstract) state tree."""
  fsdp = mesh.shape['fsdp']
  return jax.tree.map(lambda a: NamedSharding(mesh, _fsdp_spec(a.shape, fsdp, fsdp_min_size)), abstract_state)


def batch_sharding(mesh):
  return NamedSharding(mesh, P(AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def to_global(tree, shardings):
  """Host values (identical on every process) -> global arrays with ``shardings``; works across
  processes, where ``jax.device_put`` cannot target devices of other hosts."""
  def put(x, s):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = np.asarray(jax.random.key_data(x))
      arr = jax.make_array_from_callback(data.shape, s, lambda idx: data[idx])
      return jax.random.wrap_key_data(arr, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])
  return jax.tree.map(put, tree, shardings)


def global_batch(batch: dict, batch_sharding) -> dict:
  """A host batch (this process's examples) -> global arrays sharded over the mesh's devices."""
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v)) for k, v in batch.items()}

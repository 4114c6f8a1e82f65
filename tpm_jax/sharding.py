"""Mesh and shardings: axes ('data', 'fsdp'); parameters and optimizer state replicated, or sharded
along 'fsdp' (big_vision's rule: the largest axis that divides evenly); batch over both axes."""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from tpm_jax.config import ConfigError

AXES = ('data', 'fsdp')


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes from config, -1 filling with the remaining devices."""
  sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp)]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f'mesh=(data={sizes[0]}, fsdp={sizes[1]}) is not accepted: expected positive sizes, at most one -1')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f'mesh=(data={sizes[0]}, fsdp={sizes[1]}) is not accepted: {num_devices} devices are not divisible by {known}')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f'mesh=(data={sizes[0]}, fsdp={sizes[1]}) is not accepted: sizes must multiply to the {num_devices} devices')
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None):
  devices = devices if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
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

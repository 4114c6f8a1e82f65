"""Reading an export (``python -m tpm_jax.export`` writes it): ``params/`` (Orbax), ``config.json``
(the run's config), ``export.json`` (where it came from), ``checksums.json`` (SHA-256 of every file,
written last). Every read verifies the checksums first and refuses non-finite parameters."""
from __future__ import annotations

import hashlib
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from tpm_jax.checkpoint.errors import CheckpointError, first_line
from tpm_jax.checkpoint.integrity import CHECKSUMS, nonfinite, verify_checksums
from tpm_jax.checkpoint.items import uncommitted
from tpm_jax.checkpoint.steps import saved_shapes
from tpm_jax.files import read_json_object

EXPORT_CONFIG = 'config.json'
EXPORT_INFO = 'export.json'
EXPORT_FILES = ('params', EXPORT_CONFIG, EXPORT_INFO, CHECKSUMS)


def is_export(path: str) -> bool:
  """Whether ``path`` looks like an export (its ``params`` item and ``config.json``), checked or not."""
  return os.path.isdir(os.path.join(path, 'params')) and os.path.isfile(os.path.join(path, EXPORT_CONFIG))


def moved_aside_note(path: str) -> str:
  """For a missing ``path``: ' (<path>.replaced-<pid> beside it is ...)' where an export killed between its two renames
  left the earlier export moved away (pass 14b's SX2), else ''."""
  folder, base = os.path.split(os.path.abspath(os.path.expanduser(path)))
  aside = sorted(n for n in (os.listdir(folder) if os.path.isdir(folder) else ()) if n.startswith(base + '.replaced-'))
  return (f' ({aside[0]} beside it is the export an interrupted export moved away: the next export to this path, or '
          f'renaming it back, puts it in place)' if aside else '')


def check_export(path: str) -> str:
  """The absolute path of an export whose files match its checksums; CheckpointError (one line)
  for anything else: a missing path, a file, a training workdir, a folder that is no export, a
  damaged or altered export."""
  p = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(p):
    raise CheckpointError(f'export {path}: no such directory{moved_aside_note(p)}')
  if not os.path.isdir(p):
    raise CheckpointError(f'export {path}: not a directory (an export is a folder written by python -m tpm_jax.export)')
  if os.path.isdir(os.path.join(p, 'checkpoints')) and not is_export(p):
    raise CheckpointError(f'{path} is a training workdir, not an export: export it first (python -m tpm_jax.export '
                          f'--workdir {path} --output EXPORT)')
  special = [n for n in (EXPORT_CONFIG, EXPORT_INFO) if os.path.lexists(os.path.join(p, n))
             and not os.path.isfile(os.path.join(p, n))]
  if special:  # a FIFO or device (never opened), a folder, a dangling link
    raise CheckpointError(f'export {path}: its {special[0]} is not a regular file')
  if not is_export(p):
    raise CheckpointError(f'{path} is not an export (it has no params/ and config.json; exports are written by '
                          f'python -m tpm_jax.export)')
  if not verify_checksums(p, None, label=f'export {path}'):
    raise CheckpointError(f'export {path} has no {CHECKSUMS}: it was not completely written by python -m '
                          f'tpm_jax.export, or was altered; export it again')
  return p


def read_export_config(path: str) -> dict:
  """The run config an export holds (a checked export: ``check_export`` first)."""
  f = os.path.join(path, EXPORT_CONFIG)
  try:
    return read_json_object(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'export {path}: {f} is unreadable ({first_line(e)})') from e


def export_param_shapes(path: str) -> dict:
  """{dotted parameter path: (shape, dtype)} of a checked export, from its metadata alone (Orbax
  stores each nnx.Param as a mapping with its ``value``)."""
  try:
    return {k.removesuffix('.value'): v for k, v in saved_shapes(os.path.join(path, 'params')).items()}
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f'export {path}: {os.path.join(path, "params")} is unreadable ({first_line(e)})') from e


def export_digest(path: str) -> str:
  """SHA-256 of a checked export's parameter values (each array's path, dtype, shape and bytes, in path
  order): equal for two exports of the same weights, which Orbax never writes as the same files (its
  metadata carries timestamps, its data files random names)."""
  path = os.path.abspath(path)  # Orbax reads no metadata from a relative path
  try:
    with ocp.StandardCheckpointer() as ckptr:
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), ckptr.metadata(
          os.path.join(path, 'params')).item_metadata.tree)
      values = ckptr.restore(os.path.join(path, 'params'), target)
  except Exception as e:  # noqa: BLE001  (check_export passed: damaged as written)
    raise CheckpointError(f'export {path}: its params/ cannot be read ({first_line(e)}); export it again') from e
  digest = hashlib.sha256()
  for key, leaf in sorted((jax.tree_util.keystr(k), v) for k, v in jax.tree_util.tree_leaves_with_path(values)):
    a = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f'{key} {a.dtype} {a.shape}'.encode())
    digest.update(a.tobytes())
  return digest.hexdigest()


def param_mismatch(saved: dict, state) -> str | None:
  """Which parameter of ``state`` (an nnx.State of Params) an export's ``saved`` shapes
  (``export_param_shapes``) do not fit, in words; None when all fit. An export without multi-scale
  parameters (an unpruned backbone's) fits a model with a fusion: it starts as a new model's."""
  has_multiscale = any(k.startswith('multiscale.') for k in saved)
  for p, v in nnx.to_flat_state(state):
    key = '.'.join(str(k) for k in p)
    if key.startswith('multiscale.') and not has_multiscale:
      continue
    got = saved.get(key, (None,))[0]
    if got != tuple(v.shape):
      return f'{key} is {got if got is not None else "missing"} there, the model needs {tuple(v.shape)}'
  keys = {'.'.join(str(k) for k in p) for p, _ in nnx.to_flat_state(state)}
  extra = sorted(k for k in saved if k not in keys)  # restoring them failed as if the export were damaged (pass 21's EX13)
  if extra:
    fusion = ' (a multi-scale fusion; this model has none: multiscale.method=none)' if all(
        k.startswith('multiscale.') for k in extra) else ''
    return f'{extra[0]}{f" and {len(extra) - 1} more" if len(extra) > 1 else ""} is there{fusion}, not in the model'
  return None


def load_params_into(model, path: str):
  """Set ``model``'s parameters from an export (same architecture); returns the model. An export
  without multi-scale parameters (an unpruned backbone's) leaves ``model``'s multi-scale fusion at
  its initialisation, whose zero output projections keep the backbone's function."""
  path = check_export(path)  # first: nothing is read from an export that fails its checksums
  state = nnx.state(model, nnx.Param)
  saved = export_param_shapes(path)  # the metadata, read once
  if 'multiscale' in state and not any(k.startswith('multiscale.') for k in saved):
    state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.PathContains('multiscale'))))
  why = param_mismatch(saved, state)
  if why:
    raise CheckpointError(f'export {path}: not an export of this model ({why})')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), state)
  try:
    params = ocp.StandardCheckpointer().restore(os.path.join(path, 'params'), target)
  except Exception as e:  # noqa: BLE001  (its shapes fit and its files match their checksums: damaged as written)
    raise CheckpointError(f'export {path}: its params/ cannot be read ({first_line(e)}); export it again') from e
  params = jax.tree.map(np.asarray, params)  # on the host once: checked, then set uncommitted
  bad = nonfinite(params)
  if bad:
    raise CheckpointError(f'export {path}: non-finite parameters at {bad}')
  nnx.update(model, jax.tree.map(uncommitted, params))
  return model

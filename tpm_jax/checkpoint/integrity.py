"""What makes a saved step or an export trustworthy: SHA-256 checksums of every file (written last)
and finite parameters."""
from __future__ import annotations

import os

import jax
import numpy as np

from tpm_jax.checkpoint.errors import CheckpointError
from tpm_jax.files import read_json_object, sha256, write_json

CHECKSUMS = 'checksums.json'


def _files(directory):
  for root, _, files in os.walk(directory):
    for f in sorted(files):
      rel = os.path.relpath(os.path.join(root, f), directory)
      if rel != CHECKSUMS:
        yield rel


def write_checksums(directory: str) -> None:
  """``directory/checksums.json``: the SHA-256 of every other file below it (written beside, then renamed)."""
  sums = {rel: sha256(os.path.join(directory, rel)) for rel in _files(directory)}
  write_json(os.path.join(directory, CHECKSUMS), dict(algorithm='sha256', files=dict(sorted(sums.items()))), indent=0)


def verify_checksums(directory: str, step: int | None, *, label: str | None = None) -> bool:
  """True when the files match their checksums; False when there are none (a step committed just
  before a kill); raises CheckpointError naming the file otherwise. ``label`` names the directory
  in messages (default: 'checkpoint step <step>')."""
  what = label or f'checkpoint step {step}'
  path = os.path.join(directory, CHECKSUMS)
  if not os.path.lexists(path):
    return False
  try:
    sums = read_json_object(path)['files']
    items = sums.items()
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise CheckpointError(f'{what}: {path} is unreadable ({type(e).__name__})') from e
  for rel, digest in items:
    f = os.path.join(directory, rel)
    if not os.path.isfile(f):
      raise CheckpointError(f'{what}: {f} is ' + ('not a regular file' if os.path.lexists(f) else 'missing')
                            + ' (checksums.json lists it)')
    if sha256(f) != digest:
      raise CheckpointError(f'{what}: {f} fails its SHA-256 check (changed since the save)')
  extra = sorted(set(_files(directory)) - set(sums))
  if extra:
    raise CheckpointError(f'{what}: {os.path.join(directory, extra[0])} is not in checksums.json')
  return True


def nonfinite(tree) -> str | None:
  """The path of the first leaf holding a NaN or Inf, None if all are finite. Host arrays are checked
  on the host; device arrays (sharded over processes, too) by one jitted reduction."""
  leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
            if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
  if all(isinstance(x, np.ndarray) for _, x in leaves):
    flags = [bool(np.isfinite(x).all()) for _, x in leaves]
  else:
    flags = jax.device_get(jax.jit(lambda xs: [jax.numpy.isfinite(x).all() for x in xs])([x for _, x in leaves]))
  return next((jax.tree_util.keystr(p) for (p, _), ok in zip(leaves, flags) if not ok), None)

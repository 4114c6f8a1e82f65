"""A workdir's saved steps, read without writing: ``WORKDIR/checkpoints/<step>/`` with the named
items (``items.py``), ``meta`` (JSON: step, config, process count, ...), ``data`` (the train
iterator's Grain state, one JSON file per process) and ``checksums.json``. A step that failed its
checks is set aside as ``<step>.unreadable`` (only by the resume policy); those are listed too."""
from __future__ import annotations

import os
import re

import grain
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from tpm_jax.checkpoint.errors import CheckpointError, ResumeMismatch, first_line
from tpm_jax.checkpoint.integrity import nonfinite, verify_checksums
from tpm_jax.checkpoint.items import ARRAY_ITEMS
from tpm_jax.files import read_json_object

DATA_ITEM = 'data'  # the train iterator's Grain state, process_<i>-of-<n>.json
META_ITEM = 'meta'
SET_ASIDE = re.compile(r'^(\d+)\.unreadable\d*$')


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), 'checkpoints')


def is_step_name(name: str) -> bool:
  """Whether ``name`` is a step's as Orbax writes it (``str(step)``): not ``007``, which is no step 7 (hostile pass
  18's D10: it was read as one and named where step 7 was looked for), nor other scripts' digits."""
  return name.isascii() and name.isdigit() and str(int(name)) == name


def list_steps(directory: str) -> list[int]:
  """Committed steps (Orbax's temporary directories and set-aside steps are not step names)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if is_step_name(n) and _own_folder(os.path.join(directory, n)))


def stray_steps(directory: str) -> list[int]:
  """Entries named like a step that are not folders of their own (a file put there by hand, a link): no step, and
  saving that step would replace them (hostile pass 16b's D10); a linked step was deleted through the link as an old
  step, and Orbax's deletion failed after the last step (pass 19's CK04: exit 1, no final.json)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if is_step_name(n) and not _own_folder(os.path.join(directory, n)))


def _own_folder(path: str) -> bool:
  return os.path.isdir(path) and not os.path.islink(path)


def set_aside_steps(directory: str) -> list[str]:
  """The names of the steps set aside as unreadable (``<step>.unreadable``), oldest step first."""
  if not os.path.isdir(directory):
    return []
  return sorted((n for n in os.listdir(directory) if SET_ASIDE.match(n)), key=lambda n: int(SET_ASIDE.match(n)[1]))


def step_items(step_dir: str) -> set[str]:
  return {n for n in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, n))}


def check_layout(step_dir: str, step: int) -> None:
  """ResumeMismatch (exit 2, nothing renamed) for a step in a layout this version does not read:
  the one ``state`` item of versions before the named items."""
  items = step_items(step_dir) if os.path.isdir(step_dir) else set()
  if 'state' in items and 'params' not in items:
    raise ResumeMismatch(f'checkpoint step {step} in {step_dir} was written by an earlier tpm_jax (one "state" item), '
                         f'which this version does not read: export it with the version that wrote it (python -m '
                         f'tpm_jax.export), then start a new run from the export with --config.init.checkpoint=EXPORT')


def read_meta(step_dir: str) -> dict:
  """The step's JSON ``meta`` item (Orbax's JsonSave writes it as ``meta/metadata``)."""
  path = os.path.join(step_dir, META_ITEM, 'metadata')
  try:
    return read_json_object(path)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{path} is unreadable ({first_line(e)})') from e


def saved_label_names(step_dir: str) -> list | None:
  """The class names a step's meta records (what each label meant in training); None where they are
  not recorded (runs of earlier versions) or the step cannot be read (a live run's keep policy removed it)."""
  try:
    names = read_meta(step_dir).get('label_names')
  except CheckpointError:
    return None
  return list(names) if isinstance(names, list) else None


def _leaf_shapes(tree, prefix=()):
  """{path: (shape, dtype)} of a nested dict of arrays, ShapeDtypeStructs or Orbax metadata."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_leaf_shapes(v, prefix + (str(k),)))
  else:
    out['.'.join(prefix)] = (tuple(tree.shape), str(np.dtype(tree.dtype)))
  return out


def saved_shapes(item_dir: str) -> dict:
  """{dotted path: (shape, dtype)} of an Orbax item, from its metadata alone."""
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(item_dir)
  meta = getattr(meta, 'item_metadata', meta)
  return _leaf_shapes(getattr(meta, 'tree', meta))


def tree_differences(step_dir: str, abstract: dict) -> list[str]:
  """What differs between a step's items and ``abstract`` (from ``abstract_items``), from Orbax's
  metadata alone: items present in one only, then leaves present in one only or of other shapes."""
  saved = step_items(step_dir) & set(ARRAY_ITEMS)
  diffs = [f'item {n} {"saved, not built now" if n in saved else "built now, not saved"}'
           for n in sorted(saved ^ set(abstract))]
  for name in sorted(saved & set(abstract)):
    try:
      a = saved_shapes(os.path.join(step_dir, name))
    except Exception as e:  # noqa: BLE001 - unreadable metadata is the step's fault, not the config's
      raise CheckpointError(f'{os.path.join(step_dir, name)}: its metadata is unreadable ({first_line(e)})') from e
    b = _leaf_shapes(abstract[name])
    for k in sorted(set(a) | set(b)):
      if a.get(k, (None,))[0] != b.get(k, (None,))[0]:
        diffs.append(f'{name}.{k}: {a.get(k, ("absent",))[0]} saved, {b.get(k, ("absent",))[0]} now')
  return diffs


def restore_items(step_dir: str, step: int, abstract: dict, names, *, checksums_checked: bool | None = None,
                  warn=None) -> dict:
  """Restore the named items of one step into the shardings of ``abstract``; checks the step's
  checksums first (unless ``checksums_checked`` says they were) and refuses non-finite parameters.
  Raises CheckpointError naming what failed. ``warn(message)`` reports an unverified step."""
  verified = checksums_checked if checksums_checked is not None else verify_checksums(step_dir, step)
  if not verified and warn is not None:
    warn(f'note: checkpoint step {step} has no checksums.json (a run still writing it, or killed right after its '
         f'save): restoring it unverified')
  out = {}
  for name in names:
    try:
      with ocp.StandardCheckpointer() as ckptr:
        out[name] = ckptr.restore(os.path.join(step_dir, name), abstract[name])
    except Exception as e:  # noqa: BLE001 - any library failure becomes one clear error
      raise CheckpointError(f'checkpoint step {step}: {os.path.join(step_dir, name)} cannot be restored '
                            f'({first_line(e)})') from e
    if name in ('params', 'ema'):
      bad = nonfinite(out[name])
      if bad:
        raise CheckpointError(f'checkpoint step {step}: {os.path.join(step_dir, name)} holds non-finite values at {bad}')
  return out


def data_position_file(step_dir: str, process_index: int, process_count: int) -> str:
  return os.path.join(step_dir, DATA_ITEM, f'process_{process_index}-of-{process_count}.json')


def saved_workers(step_dir: str, step: int, process_index: int, process_count: int) -> int | None:
  """The number of Grain worker processes this process's input position was saved with; None when
  the step has no position of this process."""
  path = data_position_file(step_dir, process_index, process_count)
  if not os.path.isfile(path):
    return None
  try:
    state = read_json_object(path)
    return len(state['iterators_in_use_states']) if 'iterators_in_use_states' in state else 0
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise CheckpointError(f'checkpoint step {step}: {path} is unreadable ({type(e).__name__})') from e


def restore_data(step_dir: str, step: int, iterator) -> None:
  """Set ``iterator`` (the train iterator) to the position saved with ``step`` (Grain's state)."""
  item_dir = os.path.join(step_dir, DATA_ITEM)
  try:
    grain.checkpoint.CheckpointHandler().restore(epath.Path(item_dir), args=grain.checkpoint.CheckpointRestore(iterator))
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f'checkpoint step {step}: the input pipeline position in {item_dir} cannot be restored '
                          f'({first_line(e)})') from e

"""Orbax checkpoints under ``workdir/checkpoints``, as named items (Flax's examples' layout):

  <step>/params     the model's parameters
  <step>/opt_state  the optimizer's state (AdamW moments, schedule counts)
  <step>/ema        the EMA parameters (only when ``optim.ema_decay`` > 0)
  <step>/rng        the model's rng streams (dropout / stochastic depth keys and counts)
  <step>/step       the optimizer's step counter
  <step>/meta       JSON: step, the config, the library version
  <step>/data       the train iterator's Grain state, one JSON file per process: resume continues at the same example
  <step>/checksums.json  SHA-256 of every file above, written once the save has committed

Each item restores on its own: export and eval read ``params`` (or ``ema``) alone, with no
optimizer, schedule or training graph. The frozen distillation teacher is not saved; it is rebuilt
from its source (the run's initial weights).

Guarantees (README, "Checkpoints, resume and faults"):
- Saves are asynchronous; Orbax writes a step into a temporary directory and renames it when
  complete, so a half-written step is never listed.
- Resume is all or nothing (``restore_for_resume``): a checkpoint whose items do not fit the
  current config's state is refused (``ResumeMismatch``, exit 2) and nothing is renamed. Only a
  step that fails its integrity check (checksums, restore, finite parameters) is set aside, as
  ``<step>.unreadable``, with a message naming the step, the file and the check; the next older
  good step is used, saying so. With none left, ``CheckpointError`` (exit 1).
- The read-only path (``restore_params``) never writes: a step that fails is reported and the next
  older good one used, nothing renamed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as cm

from tpm_jax.config import ConfigError, flat_dict

log = logging.getLogger(__name__)

ARRAY_ITEMS = ('params', 'opt_state', 'ema', 'rng', 'step')
CHECKSUMS = 'checksums.json'
DATA_ITEM = 'data'  # the train iterator's Grain state, process_<i>-of-<n>.json
LEGACY_ITEM = 'state'  # workdirs written before the named items: the whole train state as one item


class CheckpointError(RuntimeError):
  """A checkpoint could not be used; the message names the step, the file or directory, and why."""


class CheckpointWriteError(OSError):
  """The file system refused a checkpoint (disk full, read-only, permissions): the run stops."""


_FS_ERRORS = (('No space left on device', 28), ('Read-only file system', 30), ('Permission denied', 13),
              ('Disk quota exceeded', 122))


def _write_error(directory, step, e):
  """A CheckpointWriteError for a file-system failure reported by Orbax (often wrapped as ValueError
  or RuntimeError from TensorStore), None for anything else."""
  text = f'{type(e).__name__}: {e}'
  if isinstance(e, OSError) and e.errno:
    return CheckpointWriteError(e.errno, f'checkpoint step {step} could not be written ({e.strerror})', directory)
  for reason, errno in _FS_ERRORS:
    if reason in text:
      return CheckpointWriteError(errno, f'checkpoint step {step} could not be written ({reason})', directory)
  return None


class ResumeMismatch(ConfigError):
  """The workdir's checkpoints hold a different state than the current config builds (exit 2)."""


# ------------------------------------------------------------------------------------------------
# The train state <-> named items
# ------------------------------------------------------------------------------------------------
def _is_key(x):
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _item_of(path, var):
  """(item, path inside it) of one entry of the train state ``(model, optimizer, teacher, ema)``;
  (None, None) for what is rebuilt rather than saved (the teacher, the EMA copy's rng streams)."""
  top = path[0]
  if top == 0:
    return ('params' if isinstance(var, nnx.Param) else 'rng'), path[1:]
  if top == 1:
    return ('step', ('step',)) if path[1] == 'step' else ('opt_state', path[2:])
  if top == 3 and isinstance(var, nnx.Param):
    return 'ema', path[1:]
  return None, None


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(str(k), {})
  tree[str(path[-1])] = value


def _get(tree, path):
  for k in path:
    tree = tree[str(k)]
  return tree


def state_items(state, convert=None) -> dict:
  """The named items (nested dicts with string keys) of a train state; ``convert(value)`` maps each
  leaf (default: PRNG keys to their raw uint32 data, as Orbax saves them)."""
  convert = convert or (lambda v: jax.random.key_data(v) if _is_key(v) else v)
  items = {}
  for path, var in nnx.to_flat_state(state):
    name, sub = _item_of(path, var)
    if name is not None:
      _set(items.setdefault(name, {}), sub, convert(var.get_value()))
  return items


def abstract_items(abstract_state) -> dict:
  """``state_items`` of an abstract state: ShapeDtypeStructs (shardings kept), keys as their data."""
  def conv(a):
    if _is_key(a):
      s = jax.eval_shape(jax.random.key_data, a)
      return jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=getattr(a, 'sharding', None))
    return a
  return state_items(abstract_state, conv)


def items_into_state(state, items):
  """``state`` with every saved entry replaced by its value in ``items`` (keys re-wrapped)."""
  out = []
  for path, var in nnx.to_flat_state(state):
    name, sub = _item_of(path, var)
    if name is not None:
      value = _get(items[name], sub)
      old = var.get_value()
      if _is_key(old):
        value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(old))
      var = var.replace(value)
    out.append((path, var))
  return nnx.from_flat_state(out)


def with_shardings(abstract_state, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


# ------------------------------------------------------------------------------------------------
# Steps on disk: listing, checksums, metadata (no CheckpointManager: nothing here writes)
# ------------------------------------------------------------------------------------------------
def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), 'checkpoints')


def list_steps(directory: str) -> list[int]:
  """Committed steps (Orbax's temporary directories and set-aside steps are not digit names)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def _files(step_dir):
  for root, _, files in os.walk(step_dir):
    for f in sorted(files):
      rel = os.path.relpath(os.path.join(root, f), step_dir)
      if rel != CHECKSUMS:
        yield rel


def _sha256(path):
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def write_checksums(step_dir: str) -> None:
  sums = {rel: _sha256(os.path.join(step_dir, rel)) for rel in _files(step_dir)}
  tmp = os.path.join(step_dir, f'.{CHECKSUMS}.tmp')
  with open(tmp, 'w') as f:
    json.dump(dict(algorithm='sha256', files=sums), f, indent=0, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, CHECKSUMS))


def verify_checksums(step_dir: str, step: int | None, *, label: str | None = None) -> bool:
  """True when the step's files match its checksums; False when it has none (a step committed just
  before a kill, or an older workdir or export); raises CheckpointError naming the file otherwise.
  ``label`` names the directory in messages (default: 'checkpoint step <step>')."""
  what = label or f'checkpoint step {step}'
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      sums = json.load(f)['files']
  except (OSError, ValueError, KeyError) as e:
    raise CheckpointError(f'{what}: {path} is unreadable ({type(e).__name__})') from e
  for rel, digest in sums.items():
    f = os.path.join(step_dir, rel)
    if not os.path.exists(f):
      raise CheckpointError(f'{what}: {f} is missing (checksums.json lists it)')
    if _sha256(f) != digest:
      raise CheckpointError(f'{what}: {f} fails its SHA-256 check (changed since the save)')
  extra = sorted(set(_files(step_dir)) - set(sums))
  if extra:
    raise CheckpointError(f'{what}: {os.path.join(step_dir, extra[0])} is not in checksums.json')
  return True


def step_items(step_dir: str) -> set[str]:
  return {n for n in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, n))}


def read_meta(step_dir: str) -> dict:
  """The step's JSON ``meta`` item (Orbax's JsonSave writes it as ``meta/metadata``)."""
  path = os.path.join(step_dir, 'meta', 'metadata')
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{path} is unreadable ({type(e).__name__}: {e})') from e


def _leaf_shapes(tree, prefix=()):
  """{path: (shape, dtype)} of a nested dict of arrays, ShapeDtypeStructs or Orbax metadata."""
  out = {}
  if isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_leaf_shapes(v, prefix + (str(k),)))
  else:
    out['.'.join(prefix)] = (tuple(tree.shape), str(np.dtype(tree.dtype)))
  return out


def saved_shapes(step_dir: str, item: str) -> dict:
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(os.path.join(step_dir, item))
  meta = getattr(meta, 'item_metadata', meta)
  return _leaf_shapes(getattr(meta, 'tree', meta))


def tree_differences(step_dir: str, abstract: dict) -> list[str]:
  """What differs between a step's items and ``abstract`` (from ``abstract_items``), from Orbax's
  metadata alone: items present in one only, then leaves present in one only or of other shapes."""
  saved = step_items(step_dir) & set(ARRAY_ITEMS)
  diffs = [f'item {n} {"saved, not built now" if n in saved else "built now, not saved"}'
           for n in sorted(saved ^ set(abstract))]
  for name in sorted(saved & set(abstract)):
    a, b = saved_shapes(step_dir, name), _leaf_shapes(abstract[name])
    for k in sorted(set(a) | set(b)):
      if a.get(k, (None,))[0] != b.get(k, (None,))[0]:
        diffs.append(f'{name}.{k}: {a.get(k, ("absent",))[0]} saved, {b.get(k, ("absent",))[0]} now')
  return diffs


def _nonfinite(tree) -> str | None:
  """The path of the first leaf holding a NaN or Inf, None if all are finite."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  finite = jax.jit(lambda xs: [jax.numpy.isfinite(x).all() for x in xs])([x for _, x in leaves])
  for (path, _), ok in zip(leaves, jax.device_get(finite)):
    if not ok:
      return jax.tree_util.keystr(path)
  return None


def restore_items(step_dir: str, step: int, abstract: dict, names, *, checksums_checked: bool = False) -> dict:
  """Restore the named items of one step into the shardings of ``abstract``; checks the step's
  checksums first and refuses non-finite parameters. Raises CheckpointError naming what failed."""
  verified = checksums_checked or verify_checksums(step_dir, step)
  if not verified:
    print(f'note: checkpoint step {step} has no {CHECKSUMS} (saved by an older version, or killed right after '
          f'the save): restoring it unverified', file=sys.stderr, flush=True)
  out = {}
  for name in names:
    try:
      with ocp.StandardCheckpointer() as ckptr:
        out[name] = ckptr.restore(os.path.join(step_dir, name), abstract[name])
    except Exception as e:  # noqa: BLE001 - any library failure becomes one clear error
      raise CheckpointError(f'checkpoint step {step}: {os.path.join(step_dir, name)} cannot be restored '
                            f'({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""})') from e
    if name in ('params', 'ema'):
      bad = _nonfinite(out[name])
      if bad:
        raise CheckpointError(f'checkpoint step {step}: {os.path.join(step_dir, name)} holds non-finite values '
                              f'at {bad}')
  return out


def _legacy_message(directory, step):
  return (f'{directory}/{step} was written by an earlier tpm_jax (one "state" item): resume is not supported; '
          f'export it (python -m tpm_jax.export --workdir {os.path.dirname(directory)} --output EXPORT) and '
          f'start a run with --config.init.checkpoint=EXPORT, or --config.overwrite=true to start over')


def restore_params(workdir: str, abstract_params, *, step: int | None = None, prefer_ema: bool = True):
  """(params, step, item) of a training workdir, read-only: the EMA parameters when the run kept
  them (``prefer_ema``), else ``params``; the newest step that passes its checks, or ``step``.
  ``abstract_params``: a nested dict (string keys) of ShapeDtypeStructs. Nothing is written."""
  directory = checkpoint_dir(workdir)
  steps = list_steps(directory)
  if not steps:
    raise CheckpointError(f'no checkpoint in {directory}')
  if step is not None:
    if step not in steps:
      raise CheckpointError(f'step {step} is not a checkpoint in {directory} (steps: {", ".join(map(str, steps))})')
    steps = [step]
  failures = []
  for s in reversed(steps):
    step_dir = os.path.join(directory, str(s))
    names = step_items(step_dir)
    try:
      if LEGACY_ITEM in names and 'params' not in names:
        tree = _restore_legacy(step_dir, s)
        model_params = {k: v for k, v in tree['0'].items()}
        item = 'ema' if prefer_ema and tree.get('3') else 'params'
        params = _params_only(tree['3'] if item == 'ema' else model_params, abstract_params, s, step_dir)
        print(f'note: {step_dir} is in the earlier one-item layout; read its {item} for export or eval '
              f'(resuming it is not supported)', file=sys.stderr, flush=True)
      else:
        item = 'ema' if prefer_ema and 'ema' in names else 'params'
        params = restore_items(step_dir, s, {item: abstract_params}, [item])[item]
    except CheckpointError as e:
      failures.append(str(e))
      print(f'warning: {e}', file=sys.stderr, flush=True)
      continue
    if failures:
      print(f'warning: using checkpoint step {s} instead', file=sys.stderr, flush=True)
    return params, s, item
  raise CheckpointError(f'no usable checkpoint in {directory}: ' + '; '.join(failures))


def _restore_legacy(step_dir, step):
  verify_checksums(step_dir, step)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      return ckptr.restore(os.path.join(step_dir, LEGACY_ITEM))
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f'checkpoint step {step}: {os.path.join(step_dir, LEGACY_ITEM)} cannot be restored '
                          f'({type(e).__name__})') from e


def _params_only(tree, abstract_params, step, step_dir):
  """The Param leaves of a legacy model subtree, shaped like ``abstract_params`` (rng dropped)."""
  def pick(t, a, path):
    if isinstance(a, dict):
      return {k: pick(t[k], v, path + (k,)) for k, v in a.items()}
    if isinstance(t, dict) and set(t) == {'value'}:  # how the earlier layout stored an nnx Variable
      t = t['value']
    x = np.asarray(t)
    if x.shape != a.shape:
      raise CheckpointError(f'checkpoint step {step}: {".".join(path)} is {x.shape} in {step_dir}, the model '
                            f'needs {a.shape}')
    return jax.device_put(x.astype(a.dtype), getattr(a, 'sharding', None))
  try:
    out = pick(tree, abstract_params, ())
  except KeyError as e:
    raise CheckpointError(f'checkpoint step {step} in {step_dir} lacks parameter {e}') from e
  bad = _nonfinite(out)
  if bad:
    raise CheckpointError(f'checkpoint step {step}: {step_dir} holds non-finite parameters at {bad}')
  return out


def abstract_params(model, device=None) -> dict:
  """The model's parameters as a nested dict of ShapeDtypeStructs (on ``device`` when given)."""
  sharding = None if device is None else jax.sharding.SingleDeviceSharding(device)
  tree = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    v = var.get_value()
    _set(tree, path, jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding))
  return tree


def _uncommitted(x):
  """A restored parameter as a freshly built model holds it: on the default device but not committed
  to it, so that a jitted call places it with its other inputs (a batch sharded over several devices:
  restored onto device 0, it made such a call fail with 'incompatible devices')."""
  return jax.numpy.asarray(np.asarray(x))


def params_into_model(model, params: dict) -> None:
  """Set ``model``'s parameters from a nested dict shaped like ``abstract_params(model)``."""
  state = nnx.state(model, nnx.Param)
  nnx.update(model, nnx.from_flat_state([(p, v.replace(_uncommitted(_get(params, p))))
                                         for p, v in nnx.to_flat_state(state)]))


# ------------------------------------------------------------------------------------------------
# Training: resume and save
# ------------------------------------------------------------------------------------------------
STATE_FIELDS = ('model.', 'reduction.', 'multiscale.', 'optim.', 'distill.')


def _mismatch_message(directory, step, diffs, saved_config, config):
  old, new = flat_dict(saved_config or {}), flat_dict(json.loads(config.to_json_best_effort()))
  fields = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k.startswith(STATE_FIELDS)]
  what = ', '.join(f'{k}={old.get(k)!r} there, {new.get(k)!r} now' for k in fields) or '; '.join(diffs[:3])
  return (f'{directory}/{step} holds a different train state than this config builds ({what}): resume with '
          f'the saved values, use another workdir, or --config.overwrite=true to start over')


def restore_for_resume(workdir: str, abstract_state, config):
  """(step, state_items, meta) of the newest good step of ``workdir``, or None when it has none.

  All or nothing: raises ResumeMismatch when the newest step's items differ from what ``config``
  builds (checked from metadata, before anything is read or written). A step that fails its
  integrity check is set aside (``<step>.unreadable``) and the next older one tried, saying so;
  CheckpointError when no good step is left."""
  directory = checkpoint_dir(workdir)
  steps = list_steps(directory)
  if not steps:
    return None
  abstract = abstract_items(abstract_state)
  failures = []
  for s in reversed(steps):
    step_dir = os.path.join(directory, str(s))
    names = step_items(step_dir)
    if LEGACY_ITEM in names and 'params' not in names:
      raise ResumeMismatch(_legacy_message(directory, s))
    try:
      checked = verify_checksums(step_dir, s)  # first: nothing is read from a step that fails them
      diffs = tree_differences(step_dir, abstract)
      if diffs:  # all or nothing: refuse, rename nothing
        saved_config = None
        try:
          saved_config = read_meta(step_dir).get('config')
        except CheckpointError:
          pass
        raise ResumeMismatch(_mismatch_message(directory, s, diffs, saved_config, config))
      # the input position: refused (ResumeMismatch) when saved with other workers, set aside when unreadable
      check_data_position(workdir, s, config.get('dataset', {}).get('workers', 0))
      items = restore_items(step_dir, s, abstract, sorted(abstract), checksums_checked=checked)
      meta = read_meta(step_dir)
    except CheckpointError as e:
      failures.append(s)
      print(f'warning: {e}; setting it aside as {s}.unreadable', flush=True)
      _set_aside(directory, s)
      continue
    if failures:
      print(f'resuming from the older good step {s} (step {", ".join(map(str, failures))} failed its checks)',
            flush=True)
    return s, items, meta
  raise CheckpointError(f'no good checkpoint left in {directory} (step {", ".join(map(str, failures))} failed '
                        f'its checks and was set aside): nothing was trained; --config.overwrite=true starts over')


def check_data_position(workdir: str, step: int, workers: int) -> None:
  """Refuse (``ResumeMismatch`` naming ``dataset.workers``) a step whose input position was saved
  with another number of Grain worker processes: Grain's state is per worker. Checked before the
  workdir is written; a step without a ``data`` item passes."""
  if not has_data_position(workdir, step):
    return
  item_dir = os.path.join(checkpoint_dir(workdir), str(step), DATA_ITEM)
  path = os.path.join(item_dir, f'process_{jax.process_index()}-of-{jax.process_count()}.json')
  try:
    with open(path) as f:
      state = json.load(f)
    saved = len(state['iterators_in_use_states']) if 'iterators_in_use_states' in state else 0
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise CheckpointError(f'checkpoint step {step}: {path} is unreadable ({type(e).__name__})') from e
  if saved != workers:
    raise ResumeMismatch(f'dataset.workers={workers} does not match checkpoint step {step} of {checkpoint_dir(workdir)}'
                         f', whose input position was saved with {saved} workers: resume with '
                         f'--config.dataset.workers={saved}')


def has_data_position(workdir: str, step: int) -> bool:
  """Whether ``step`` holds the train iterator's state (steps saved by earlier versions do not)."""
  return os.path.isdir(os.path.join(checkpoint_dir(workdir), str(step), DATA_ITEM))


def restore_data(workdir: str, step: int, iterator) -> None:
  """Set ``iterator`` (the train iterator) to the position saved with ``step`` (Grain's state).
  The step's checksums were verified when its arrays were restored."""
  item_dir = os.path.join(checkpoint_dir(workdir), str(step), DATA_ITEM)
  try:
    grain.checkpoint.CheckpointHandler().restore(epath.Path(item_dir), args=grain.checkpoint.CheckpointRestore(iterator))
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f'checkpoint step {step}: the input pipeline position in {item_dir} cannot be restored '
                          f'({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""})') from e


def _set_aside(directory: str, step: int) -> None:
  if jax.process_index() == 0:
    src = os.path.join(directory, str(step))
    dst, n = f'{src}.unreadable', 1
    while os.path.exists(dst):
      dst, n = f'{src}.unreadable{n}', n + 1
    os.rename(src, dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'set aside checkpoint {step}')


class Checkpointer:
  """Saves the named items with Orbax's CheckpointManager: asynchronous, the last ``keep`` steps
  plus the best by eval top-1. Each committed step gets its checksums (process 0) as soon as the
  next save starts or the checkpointer waits or closes."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = checkpoint_dir(workdir)
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: m['eval_top1'], n=1, keep_checkpoints_without_metrics=False),
    ])
    # The step's directories are created before the save returns: a file system that refuses them (read-only,
    # full) fails the save at once, instead of leaving the Grain item's synchronous writer waiting for them.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=async_save,
                                           create=True, async_options=ocp.AsyncOptions(
                                               create_directories_asynchronously=False))
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._unsummed = []

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, items: dict, meta: dict, metrics: dict | None = None, data=None) -> None:
    """Start an asynchronous save of ``items`` (``state_items``) and ``meta`` (JSON) at ``step``;
    ``data``: the train iterator, whose Grain state (one small JSON file per process) is saved as
    item ``data``. File-system failures (of this save or the one before) raise CheckpointWriteError."""
    self._finish()
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    if data is not None:
      args[DATA_ITEM] = grain.checkpoint.CheckpointSave(data)
    try:
      self.manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args), metrics=metrics,
                        force=True)
    except Exception as e:  # noqa: BLE001 - Orbax reports file-system errors in several types
      raise _write_error(self.directory, step, e) or e
    self._unsummed.append(step)

  def _finish(self) -> None:
    """Wait for the save in flight, then write the checksums of every step committed since."""
    try:
      self.manager.wait_until_finished()
      if jax.process_index() == 0:
        for step in self._unsummed:
          step_dir = os.path.join(self.directory, str(step))
          if os.path.isdir(step_dir):  # not already removed by the keep policy
            write_checksums(step_dir)
    except Exception as e:  # noqa: BLE001
      raise _write_error(self.directory, self._unsummed[-1] if self._unsummed else '?', e) or e
    self._unsummed = []

  def poll(self) -> None:
    """Write the checksums of the steps committed since the last call, if no save is in flight (cheap:
    called after every train step, so a step is verified from soon after its commit, not only once
    the next save starts)."""
    if self._unsummed and not self.manager.is_saving_in_progress():
      self._finish()

  def wait(self) -> None:
    self._finish()

  def close(self) -> None:
    try:
      self._finish()
    finally:
      self.manager.close()


# ------------------------------------------------------------------------------------------------
# Exports (python -m tpm_jax.export): parameters alone
# ------------------------------------------------------------------------------------------------
def _replicated_on_one_device(abstract):
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)


def load_params_into(model, path: str):
  """Set ``model``'s parameters from an export directory (same architecture); returns the model.
  An export without multi-scale parameters (an unpruned backbone's) leaves ``model``'s multi-scale
  fusion at its initialisation, whose zero output projections keep the backbone's function. The
  export's checksums are verified first and non-finite parameters refused (``CheckpointError``)."""
  # first: nothing is read from an export that fails its checksums (exports written before them have none)
  verify_checksums(os.path.abspath(path), None, label=f'export {path}')
  state = nnx.state(model, nnx.Param)
  params_dir = os.path.join(os.path.abspath(path), 'params')
  if 'multiscale' in state and not os.path.isdir(os.path.join(params_dir, 'multiscale')):
    meta = ocp.StandardCheckpointer().metadata(params_dir)
    if 'multiscale' not in getattr(meta, 'item_metadata', meta):
      state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.PathContains('multiscale'))))
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  try:
    params = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), 'params'),
                                                _replicated_on_one_device(target))
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f'{path}: not an export of this model ({type(e).__name__}: '
                          f'{str(e).splitlines()[0][:200] if str(e) else ""})') from e
  params = jax.tree.map(np.asarray, params)  # on the host once: checked, then set uncommitted
  bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(params) if not np.isfinite(v).all()]
  if bad:
    raise CheckpointError(f'export {path}: non-finite parameters at {bad[0]}')
  nnx.update(model, jax.tree.map(_uncommitted, params))
  return model

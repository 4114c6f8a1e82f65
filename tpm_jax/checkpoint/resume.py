"""The resume policy: what a training run does with the workdir it is given, decided before it
writes anything. It sees every step, set-aside ones included.

* A workdir holding another run (the identity fields of ``RunConfig.IDENTITY`` differ from those
  saved in ``config.json`` or in the step's own ``meta``): refused (``ResumeMismatch``, exit 2).
* A step whose state cannot continue as asked (other state shapes, a step past ``total_steps``,
  an input position saved by another number of processes or workers, or over a train split of
  another size or contents: its class names, files or shards, ``Dataset.fingerprint``): refused
  (exit 2), nothing renamed.
* A step that fails its integrity checks (unreadable meta, checksums, restore, non-finite
  parameters): set aside as ``<step>.unreadable`` with a message, and the next older step tried.
* No good step left but set-aside ones: refused (``CheckpointError``, exit 1): never started over
  without ``overwrite``.
* A finished run (its newest step is ``total_steps`` and ``final.json`` is there): nothing to do.
With ``overwrite`` the policy is not asked: the trainer moves the old run aside first."""
from __future__ import annotations

import dataclasses
import logging
import os

from jax.experimental import multihost_utils

from tpm_jax.checkpoint.errors import CheckpointError, ResumeMismatch
from tpm_jax.checkpoint.integrity import verify_checksums
from tpm_jax.checkpoint.items import abstract_items
from tpm_jax.checkpoint.readonly import newest_saved_config, saved_run
from tpm_jax.checkpoint.steps import (
  check_layout,
  checkpoint_dir,
  list_steps,
  read_meta,
  restore_items,
  saved_workers,
  set_aside_steps,
  stray_steps,
  tree_differences,
)
from tpm_jax.config import ConfigError, RunConfig, field_differences, flat_dict
from tpm_jax.files import read_json_object

log = logging.getLogger(__name__)

RUN_FILES = ('checkpoints', 'metrics.jsonl', 'tensorboard', 'config.json', 'final.json')


@dataclasses.dataclass
class Resume:
  step: int
  items: dict | None        # the restored named items (None when finished)
  meta: dict
  step_dir: str
  finished: bool = False


# How each refusal below ends: train.py's ways on (the quickstart, which has no --config.* flags, says its own).
OVERWRITE_HINT = 'use another workdir, or --config.overwrite=true to start over there (the old run is kept aside)'


def check_config_json(workdir: str, run: RunConfig) -> None:
  """Refuse a workdir that holds another run (ResumeMismatch), before anything is written: judged by
  the config its newest checkpoint step was saved with, and by config.json only where there is no step
  (config.json is a record a user may edit: hostile pass 12's CFG_edit_train)."""
  saved = newest_saved_config(workdir)
  if saved is None:
    path = os.path.join(workdir, 'config.json')
    if list_steps(checkpoint_dir(workdir)) or not os.path.isfile(path):
      return  # steps whose meta cannot be read: the resume policy reports them
    try:
      saved = path, read_json_object(path)
    except (OSError, ValueError) as e:
      raise ResumeMismatch(f'workdir {workdir}: {path} is not a readable run config ({e}): '
                           f'{OVERWRITE_HINT}') from None
  path, config = saved
  try:
    old = RunConfig.from_any(config)
  except ConfigError as e:
    raise ResumeMismatch(f'workdir {workdir}: {path} is not a readable run config ({e}): '
                         f'{OVERWRITE_HINT}') from None
  diffs = run.identity_differences(old)
  if diffs:
    raise ResumeMismatch(f'workdir {workdir} holds a run with {"; ".join(diffs)} ({os.path.relpath(path, workdir)}): '
                         f'{OVERWRITE_HINT}')


def plan_resume(workdir: str, run: RunConfig, abstract_state, *, total_steps: int, train_examples: int,
                train_fingerprint: str | None = None, init_fingerprint: str | None = None,
                process_index: int = 0, process_count: int = 1,
                final_step: int | None = None) -> Resume | None:
  """The step to continue from (its items restored into ``abstract_state``'s shardings), None to
  start at step 0; raises as the module docstring says."""
  directory = checkpoint_dir(workdir)
  steps, aside = list_steps(directory), set_aside_steps(directory)
  for s in stray_steps(directory):  # kept, under another name: saving step s would replace it
    new = _set_aside(directory, s, process_index, process_count)
    log.warning('warning: %s is not a checkpoint step (a step is a folder of its own, not a file or a link); set aside '
                'as %s', os.path.join(directory, str(s)), os.path.basename(new))
    aside.append(os.path.basename(new))
  abstract = abstract_items(abstract_state)
  for s in reversed(steps):
    step_dir = os.path.join(directory, str(s))
    check_layout(step_dir, s)
    try:
      checked = verify_checksums(step_dir, s)  # first: nothing is read from a step that fails them
      meta = read_meta(step_dir)
      saved = saved_run(step_dir, s, meta)
      _refuse_other_run(workdir, s, run, saved, meta, total_steps=total_steps, train_examples=train_examples,
                        train_fingerprint=train_fingerprint, init_fingerprint=init_fingerprint,
                        process_count=process_count)
      diffs = tree_differences(step_dir, abstract)
      if diffs:
        fields = _state_field_differences(run, saved) or diffs[:3]
        raise ResumeMismatch(f'{step_dir} holds another train state than this config builds ({"; ".join(fields)}): '
                             f'resume with the saved values, or {OVERWRITE_HINT}')
      if s == total_steps and final_step == s:  # final.json of this very step (pass 12b's F1: of an older one)
        return Resume(s, None, meta, step_dir, finished=True)
      workers = saved_workers(step_dir, s, process_index, process_count)
      if workers is None:
        raise CheckpointError(f'checkpoint step {s}: {step_dir}/data has no input position of process '
                              f'{process_index} of {process_count}')
      if workers != run.dataset.workers:
        raise ResumeMismatch(f'dataset.workers={run.dataset.workers} does not match checkpoint step {s} of {directory}, '
                             f'whose input position was saved with {workers} workers: resume with '
                             f'--config.dataset.workers={workers}')
      items = restore_items(step_dir, s, abstract, sorted(abstract), checksums_checked=checked, warn=log.warning)
    except CheckpointError as e:
      new = _set_aside(directory, s, process_index, process_count)
      log.warning('warning: %s; set aside as %s', e, os.path.basename(new))
      aside.append(os.path.basename(new))
      continue
    if s != steps[-1]:
      log.info('resuming from the older good step %d (newer steps failed their checks and were set aside)', s)
    return Resume(s, items, meta, step_dir)
  if aside:
    raise CheckpointError(f'no good checkpoint left in {directory}: every step was set aside as unreadable '
                          f'({", ".join(aside)}); nothing was trained. Inspect or remove them, or '
                          f'--config.overwrite=true to start over (the old run is kept aside)')
  if final_step is not None:  # a finished run whose checkpoints are gone: training again would replace its results
    raise ResumeMismatch(f'workdir {workdir} holds a finished run (final.json) but no checkpoint to continue '
                         f'from ({directory} is empty or gone); nothing was trained: {OVERWRITE_HINT}')
  return None


STATE_SECTIONS = ('model.', 'reduction.', 'multiscale.', 'optim.', 'distill.')


def _state_field_differences(run: RunConfig, saved: RunConfig) -> list[str]:
  """'field=<saved> there, <now> now' for the settings that shape the train state."""
  state = lambda c: {k: v for k, v in flat_dict(c.to_dict()).items() if k.startswith(STATE_SECTIONS)}
  return field_differences(state(saved), state(run), 'now')


def _refuse_other_run(workdir, step, run, saved, meta, *, total_steps, train_examples, train_fingerprint,
                      process_count, init_fingerprint=None):
  diffs = run.identity_differences(saved)
  if diffs:
    raise ResumeMismatch(f'checkpoint step {step} of {workdir} was saved by a run with {"; ".join(diffs)}: '
                         f'{OVERWRITE_HINT}')
  if step > total_steps:
    raise ResumeMismatch(f'checkpoint step {step} of {workdir} is past total_steps={total_steps}: set total_steps to '
                         f'{step} or more to continue it, or {OVERWRITE_HINT}')
  saved_count = meta.get('process_count')
  if saved_count is not None and saved_count != process_count:
    raise ResumeMismatch(f'checkpoint step {step} of {workdir} was saved by {saved_count} processes, and its input '
                         f'position is per process: resume it with {saved_count} processes')
  saved_n = meta.get('train_examples')
  if saved_n is not None and int(saved_n) != train_examples:
    raise ResumeMismatch(f'dataset.train_split={run.dataset.train_split!r} has {train_examples} examples now and had '
                         f'{saved_n} when checkpoint step {step} was saved: the saved input position would point into '
                         f'other data; restore the data, or {OVERWRITE_HINT}')
  saved_init = meta.get('init_fingerprint')  # one of another kind (an earlier version's) is not compared
  same_kind = str(saved_init).split(':')[0] == str(init_fingerprint).split(':')[0] and ':' in str(saved_init)
  if run.distill.alpha > 0 and same_kind and saved_init != init_fingerprint:
    raise ResumeMismatch(f'the init weights of {workdir} (init.*) are not the files checkpoint step {step} was saved '
                         f'with (same paths, other contents: other weights): the '
                         f'distillation teacher, rebuilt from them on resume, would be another model; restore them, '
                         f'or {OVERWRITE_HINT}')
  saved_print = meta.get('train_fingerprint')
  if saved_print is not None and train_fingerprint is not None and saved_print != train_fingerprint:
    raise ResumeMismatch(f'dataset.train_split={run.dataset.train_split!r} of {run.dataset.where} holds other examples '
                         f'or classes than when checkpoint step {step} was saved (same size; its class names, files '
                         f'or shards changed): the saved input position and labels would mean other data; restore '
                         f'the data, or {OVERWRITE_HINT}')


def _set_aside(directory: str, step: int, process_index: int, process_count: int) -> str:
  src = os.path.join(directory, str(step))
  dst, n = f'{src}.unreadable', 1
  while os.path.exists(dst):
    dst, n = f'{src}.unreadable{n}', n + 1
  if process_index == 0:
    os.rename(src, dst)
  if process_count > 1:
    multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
  return dst


def move_run_aside(workdir: str, stamp: str) -> list[str]:
  """``overwrite``: the run's files renamed to ``<name>.replaced-<stamp>`` (nothing deleted)."""
  moved, n = [], 1
  base = stamp
  while any(os.path.lexists(os.path.join(workdir, f'{name}.replaced-{stamp}')) for name in RUN_FILES):
    n += 1  # two overwrites within one second: a rename would replace the earlier run's files
    stamp = f'{base}-{n}'
  for name in RUN_FILES:
    src = os.path.join(workdir, name)
    if os.path.lexists(src):
      os.rename(src, f'{src}.replaced-{stamp}')
      moved.append(name)
  return moved


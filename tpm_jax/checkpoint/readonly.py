"""Reading a training workdir's model without changing it (export, eval.py, ``load_model``): the
step's own saved config describes the model (not ``config.json``, which a user may edit or delete),
and its ``ema`` item (when the run kept one) or ``params`` is restored alone, with no optimizer,
schedule or training graph, from the newest step that passes its checks, or a given step. A step
that fails is reported and the next older good one used; nothing is renamed or written."""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

import jax

from tpm_jax.checkpoint.errors import CheckpointError
from tpm_jax.checkpoint.items import abstract_params, params_into_model
from tpm_jax.checkpoint.steps import check_layout, checkpoint_dir, list_steps, read_meta, restore_items, step_items
from tpm_jax.cli import raise_if_stopped
from tpm_jax.config import ConfigError, RunConfig
from tpm_jax.models.registry import model_from_config

log = logging.getLogger(__name__)


def saved_run(step_dir: str, step: int, meta: dict | None = None) -> RunConfig:
  """The run config saved with a step (its ``meta``, read here unless given); CheckpointError when
  unreadable."""
  meta = read_meta(step_dir) if meta is None else meta
  if isinstance(meta, dict) and meta.get('step', step) != step:  # a step folder copied or renamed by hand (pass 12b's F2)
    raise CheckpointError(f'checkpoint step {step}: {step_dir}/meta records step {meta["step"]!r}, not {step} (a step '
                          f'folder copied or renamed by hand?)')
  try:
    return RunConfig.from_any(meta['config'])
  except (KeyError, ConfigError) as e:
    raise CheckpointError(f'checkpoint step {step}: the config saved in {step_dir}/meta is not readable by this '
                          f'version of tpm_jax ({e})') from e


def newest_saved_config(workdir: str) -> tuple[str, dict] | None:
  """(file, config) saved with the newest step of ``workdir`` whose meta is readable: what its state
  was saved with (``config.json`` is a record a user may edit); None without such a step."""
  directory = checkpoint_dir(workdir)
  for s in reversed(list_steps(directory)):
    step_dir = os.path.join(directory, str(s))
    try:
      meta = read_meta(step_dir)
    except CheckpointError:
      continue
    if isinstance(meta, dict) and isinstance(meta.get('config'), dict):
      return os.path.join(step_dir, 'meta', 'metadata'), meta['config']
  return None


class Restored(NamedTuple):
  model: object
  run: RunConfig
  step: int
  item: str                  # 'ema' or 'params'
  label_names: list | None   # what each label meant in training (the step's meta), read with the step


def restore_model(workdir: str, *, step: int | None = None, prefer_ema: bool = True) -> Restored:
  """(model, run, step, item, label_names) of a training workdir, read-only: ``item`` is 'ema' or 'params'; the
  label names are read with the step (a live run's keep policy may remove it right after: hostile pass 16b's N29).
  A ``step`` not saved there: CheckpointError listing the saved steps. A step that disappears while
  it is read (a run training in the workdir removed it under its keep policy) is not a failure: the
  steps are listed again and the newest read."""
  directory = checkpoint_dir(workdir)
  for _ in range(5):  # each round: the steps as they are now
    steps = list_steps(directory)
    if not steps:
      aside = sorted(n for n in os.listdir(workdir) if n.startswith('checkpoints.replaced-')) if os.path.isdir(
          workdir) else []
      raise CheckpointError(f'no checkpoint in {directory}' + (
          f' (the run there was moved aside, as {aside[-1]}, by a run started with --config.overwrite=true)'
          if aside else ''))  # hostile pass 18's C03: an export while that happened
    if step is not None:
      if step not in steps:
        raise CheckpointError(f'step {step} is not a checkpoint in {directory} (steps: {", ".join(map(str, steps))})')
      steps = [step]
    failures, vanished = [], False
    for s in reversed(steps):
      step_dir = os.path.join(directory, str(s))
      try:
        check_layout(step_dir, s)
        meta = read_meta(step_dir)
        run = saved_run(step_dir, s, meta)
        names = meta.get('label_names') if isinstance(meta, dict) else None
        item = 'ema' if prefer_ema and 'ema' in step_items(step_dir) else 'params'
        model = model_from_config(run)
        target = abstract_params(model, jax.local_devices()[0])
        params = restore_items(step_dir, s, {item: target}, [item], warn=log.warning)[item]
      except (CheckpointError, OSError) as e:
        raise_if_stopped()  # a stop that a library turned into a read error: the step is not to blame
        if not os.path.isdir(step_dir):  # removed meanwhile by the run that owns the workdir
          vanished = True
          break
        if isinstance(e, OSError):
          raise
        failures.append(str(e))  # said when an older step is used instead; else the error says it (once: pass
        continue                  # 18's D12 said it twice)
      for failure in failures:
        log.warning('warning: %s', failure)
      if failures:
        log.warning('warning: using checkpoint step %d instead', s)
      params_into_model(model, params)
      return Restored(model, run, s, item, list(names) if isinstance(names, list) else None)
    if not vanished:
      raise CheckpointError(f'no usable checkpoint in {directory}: ' + '; '.join(failures))
  raise CheckpointError(f'the checkpoints in {directory} kept changing while they were read (a run is saving there '
                        f'every few seconds); try again, or export a --step it keeps')

"""What ``tpm_jax.export`` offers (its docstring): export from a training workdir, load an export, the
command line."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys

import orbax.checkpoint as ocp
from flax import nnx

from tpm_jax import checkpoint, preflight
from tpm_jax.checkpoint import EXPORT_CONFIG, EXPORT_INFO, CheckpointError, WorkdirBusy, load_params_into
from tpm_jax.checkpoint.errors import first_line, fs_failure
from tpm_jax.cli import ArgumentParser, Interrupted, fail, finished, raise_if_stopped, stop_on_signals, stops_deferred
from tpm_jax.config import ConfigError, RunConfig
from tpm_jax.files import process_running, writing_name, writing_pid
from tpm_jax.models.registry import model_from_config
from tpm_jax.timm_weights import export_timm_weights

log = logging.getLogger(__name__)


def read_config(path: str) -> RunConfig:
  """The run config an export (or a config.json) holds."""
  config = checkpoint.read_export_config(os.path.dirname(path) if path.endswith('.json') else path)
  try:
    return RunConfig.from_any(config)
  except ConfigError as e:
    raise CheckpointError(f'{path}: the config is not readable by this version of tpm_jax ({e})') from e


def restore_from_workdir(workdir: str, step: int | None = None):
  """(model, run, step) from a training workdir's checkpoint, read-only: the ``ema`` item when the
  run kept one, else ``params``; the newest step that passes its checks, or ``step``."""
  if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
    raise FileNotFoundError(f'{workdir} is not a training workdir: it has no checkpoints/ folder')
  restored = checkpoint.restore_model(workdir, step=step)
  return restored.model, restored.run, restored.step


def check_step(workdir: str, step: int | None) -> None:
  """ConfigError (exit 2) for a ``--step`` the workdir does not hold."""
  steps = checkpoint.list_steps(checkpoint.checkpoint_dir(workdir))
  if step is not None and step not in steps:
    raise ConfigError(f'--step={step} is not accepted: expected a saved step of {workdir} '
                      f'({", ".join(map(str, steps)) or "none saved"})')


def export(workdir: str, output: str, *, step: int | None = None, safetensors: str | None = None,
           overwrite: bool = False, before_commit=None) -> str:
  """Export ``workdir``'s step (default: the newest good one) to ``output``; returns its absolute path.
  Bad paths raise ConfigError before anything is read or written; another export writing the same
  ``output`` or ``safetensors`` now, WorkdirBusy. ``before_commit()`` is called once everything is
  written beside ``output``, just before it is renamed into place (the command line's
  ``cli.finished``: a stop from then on changes nothing)."""
  return _export(workdir, output, step=step, safetensors=safetensors, overwrite=overwrite,
                 before_commit=before_commit)[0]


def _export(workdir, output, *, step, safetensors, overwrite, before_commit) -> tuple[str, int]:
  """``export``, returning (output, the step exported)."""
  if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
    raise ConfigError(f'--workdir={workdir} is not a training workdir (it has no checkpoints/ folder)')
  check_step(workdir, step)
  output, safetensors = preflight.check_export_paths(output, safetensors, source_workdir=workdir, overwrite=overwrite)
  _recover_interrupted(output, safetensors)
  tmp = _claim(output, safetensors)
  checkpointer = None
  try:
    model, run, step, _, label_names = checkpoint.restore_model(workdir, step=step)  # the names read with the step
    checkpointer = ocp.StandardCheckpointer()
    try:
      with stops_deferred():  # a stop cut short left TensorStore writing into the folder removed below
        checkpointer.save(os.path.join(tmp, 'params'), nnx.state(model, nnx.Param))
        checkpointer.wait_until_finished()
    except (ValueError, RuntimeError) as e:  # Orbax's and TensorStore's write errors (a full disk: RESOURCE_EXHAUSTED)
      why = (fs_failure(e) or (first_line(e),))[0]  # a full disk named as such, not cut from TensorStore's text (OUT02)
      raise checkpoint.CheckpointWriteError(f'{output}: writing the export failed ({why}); nothing was written') from e
    with open(os.path.join(tmp, EXPORT_CONFIG), 'w') as f:
      json.dump(run.to_dict(), f, indent=2)
    with open(os.path.join(tmp, EXPORT_INFO), 'w') as f:  # label_names: what each label meant in training
      json.dump(dict(workdir=os.path.abspath(workdir), step=step,
                     **({'label_names': label_names} if label_names is not None else {})), f)
    checkpoint.write_checksums(tmp)  # last: SHA-256 of every file, verified by every reader
    if safetensors:  # written beside, then renamed: an existing file is replaced whole or not at all
      try:
        export_timm_weights(model, writing_name(safetensors, ext=_TIMM), name=safetensors)
      except Exception as e:  # a full disk: OSError, or safetensors' own SafetensorError
        if not isinstance(e, (OSError, ValueError, RuntimeError)) and type(e).__name__ != 'SafetensorError':
          raise
        raise checkpoint.CheckpointWriteError(f'--safetensors={safetensors}: writing it failed ({first_line(e)}); '
                                              f'nothing was written') from e
    if before_commit is not None:
      before_commit()
    _replace(tmp, output)
    if safetensors:
      os.replace(writing_name(safetensors, ext=_TIMM), safetensors)
  finally:
    if checkpointer is not None:
      _close(checkpointer)
    shutil.rmtree(tmp, ignore_errors=True)
    if safetensors and os.path.exists(writing_name(safetensors, ext=_TIMM)):
      os.remove(writing_name(safetensors, ext=_TIMM))
  return output, step


# What an export writes beside its outputs while it runs: files.writing_name's <output>.writing-<pid> (a folder) and
# <safetensors>.writing-<pid>.safetensors (a file timm reads by its extension)
_TIMM = '.safetensors'


def _claim(output: str, safetensors: str | None) -> str:
  """Create this export's ``<output>.writing-<pid>`` folder (and an empty ``<safetensors>.writing-<pid>.safetensors``)
  and return the folder; WorkdirBusy, with them removed again, where another running export has its own beside
  the same ``--output`` or ``--safetensors``. Each export looks after creating its own: of two started together
  one is refused, or both, never neither (hostile pass 14b's CC2: two exports into one output left the folder of
  one and the timm file of the other)."""
  tmp = writing_name(output)
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  if safetensors:
    open(writing_name(safetensors, ext=_TIMM), 'wb').close()
  for flag, path, ext in (('output', output, ''), ('safetensors', safetensors, _TIMM)):
    if not path:
      continue
    folder, base = os.path.split(os.path.abspath(path))
    for name in sorted(os.listdir(folder)):
      pid = writing_pid(name, base, ext)
      if pid is not None and pid != os.getpid() and process_running(pid):
        shutil.rmtree(tmp, ignore_errors=True)
        if safetensors:
          os.remove(writing_name(safetensors, ext=_TIMM))
        raise WorkdirBusy(f'--{flag}={path} is being written by another export (pid {pid}, '
                          f'{os.path.join(folder, name)}): wait for it to finish, or export elsewhere')
  return tmp


def _close(checkpointer) -> None:
  """Close ``checkpointer``, waiting for its background writes; their errors were reported already
  (a failed save raised), or do not matter (the export's folder is removed next)."""
  try:
    checkpointer.close()
  except (ValueError, RuntimeError, OSError):
    pass


def _recover_interrupted(output: str, safetensors: str | None) -> None:
  """Tidy what an export killed part-way (kill -9, power loss) left beside ``output``: its
  ``.writing-<pid>`` files are removed, and an earlier export it had renamed away
  (``.replaced-<pid>``) is put back if ``output`` is missing, else removed. Only names this module
  writes, and only those of a process that no longer runs."""
  for path, ext in ((output, ''), (safetensors, _TIMM)):
    if not path:
      continue
    folder, base = os.path.split(os.path.abspath(path))
    for name in os.listdir(folder):
      replaced = re.fullmatch(re.escape(base) + r'\.replaced-(\d+)', name) if not ext else None
      pid = int(replaced[1]) if replaced else writing_pid(name, base, ext)
      if pid is None or process_running(pid):
        continue
      stale = os.path.join(folder, name)
      if replaced and not os.path.lexists(path):
        os.rename(stale, path)
        log.warning('note: put back %s, which an interrupted export (pid %s) had moved to %s', path, pid, stale)
      elif os.path.isdir(stale) and not os.path.islink(stale):
        shutil.rmtree(stale)
      else:
        os.remove(stale)


def _replace(new: str, output: str) -> None:
  """Put the complete directory ``new`` at ``output``: renamed into place; an earlier ``output`` is
  renamed away first and removed only once the new one is there."""
  if not os.path.lexists(output):
    os.rename(new, output)
    return
  old = f'{output}.replaced-{os.getpid()}'
  os.rename(output, old)
  busy = preflight.in_use_below(old)  # checked again once it is away: a run, or an export, may have started in it
  if busy is not None:  # while this export was written (hostile pass 17b's X5w)
    os.rename(old, output)
    raise CheckpointError(f'--output={output}: {os.path.normpath(os.path.join(output, os.path.relpath(busy[0], old)))} '
                          f'came into use while the export was written ({busy[1]}); nothing was replaced (export to '
                          f'a new folder)')
  os.rename(new, output)
  shutil.rmtree(old, ignore_errors=True)


def load_model(path: str):
  """A ready model from an export directory (``python -m tpm_jax.export``) or a training workdir."""
  if os.path.isdir(checkpoint.checkpoint_dir(path)) and not checkpoint.is_export(path):
    return restore_from_workdir(path)[0]
  path = checkpoint.check_export(path)
  return load_params_into(model_from_config(read_config(path)), path)


def main(argv=None):
  p = ArgumentParser(prog='python -m tpm_jax.export', description=sys.modules[__package__].__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True)
  p.add_argument('--output', required=True)
  p.add_argument('--step', type=int, default=None, help='default: the newest good checkpoint')
  p.add_argument('--safetensors', default=None, help='also write timm-named weights here')
  p.add_argument('--overwrite', action='store_true',
                 help='replace an --output folder that holds other files, or an existing --safetensors file')
  args = p.parse_args(argv)
  stop_on_signals()
  try:
    try:
      out, step = _export(args.workdir, args.output, step=args.step, safetensors=args.safetensors,
                          overwrite=args.overwrite, before_commit=finished)  # a signal once it is in place: exit 0
    except (CheckpointError, OSError):
      raise_if_stopped()  # a stop that a library turned into a read error is the stop
      raise
  except ConfigError as e:  # bad input, found before anything was written (a file gone at run time: exit 1)
    fail(e, 2)
  except (CheckpointError, OSError, Interrupted) as e:
    fail(e, 1, hard=True)  # hard: Orbax's threads of a failed write would print at the interpreter's exit
  print(f'exported {args.workdir} step {step} to {out}')  # the step this export wrote (another may replace it)

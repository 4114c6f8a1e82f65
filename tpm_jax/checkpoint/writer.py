"""Saving: the named items with Orbax's CheckpointManager (asynchronous; Orbax writes a step into a
temporary directory and renames it when complete, so a half-written step is never listed), then
each committed step's checksums (process 0)."""
from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from tpm_jax.checkpoint.errors import CheckpointWriteError, fs_failure
from tpm_jax.checkpoint.integrity import write_checksums
from tpm_jax.checkpoint.steps import DATA_ITEM, checkpoint_dir


def _write_error(directory, step, e):
  """A CheckpointWriteError for a file-system failure reported by Orbax (often wrapped as ValueError
  or RuntimeError from TensorStore), None for anything else."""
  failure = fs_failure(e)
  if failure is None:
    return None
  reason, code = failure
  return CheckpointWriteError(code, f'checkpoint step {step} could not be written ({reason})', directory)


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

"""Orbax checkpoints under ``workdir/checkpoints``: asynchronous saves, the last ``keep`` plus the
best by eval top-1, the training state next to a JSON record (step, data position, config).

Restores go straight into the current mesh: the caller passes the abstract state (shapes, dtypes
and shardings), so a run saved on 8 devices restores on 1. Orbax writes each step into a temporary
directory and renames it when complete, so a half-written step is never listed; a step that fails
to restore (truncated, corrupted) is reported by number and resumption falls back to the previous
one.
"""
from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint could not be read; the message names the step and the directory."""


def _is_key(x):
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
  """PRNG key arrays (the model's rng streams) are saved as their raw uint32 data."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_for_restore(abstract):
  def conv(a):
    if _is_key(a):
      shape = jax.eval_shape(lambda k: jax.random.key_data(k), a)
      return jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=a.sharding)
    return a
  return jax.tree.map(conv, abstract)


def _data_to_keys(tree, abstract):
  def wrap(x, a):
    impl = getattr(a.dtype, '_impl', None)  # the key dtype knows its PRNG implementation
    return jax.random.wrap_key_data(x, impl=impl) if impl is not None else jax.random.wrap_key_data(x)
  return jax.tree.map(lambda x, a: wrap(x, a) if _is_key(a) else x, tree, abstract)


def abstract_with_shardings(abstract_state, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: m['eval_top1'], n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'meta'))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
    """Start an asynchronous save of ``state`` and ``meta`` (JSON) at ``step``."""
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_keys_to_data(state)),
                                                    meta=ocp.args.JsonSave(meta)),
                      metrics=metrics, force=True)

  def restore(self, step: int, abstract_state):
    """(state, meta) of ``step``, placed with the shardings in ``abstract_state``."""
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract_for_restore(abstract_state)), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - any library failure becomes one clear error
      raise CheckpointError(f'checkpoint step {step} in {self.directory} cannot be restored '
                            f'({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""})') from e
    return _data_to_keys(out.state, abstract_state), dict(out.meta)

  def restore_latest(self, abstract_state):
    """The newest step that restores. A step that does not is reported, moved aside to
    ``checkpoints/<step>.unreadable`` (kept for inspection, no longer listed) and the previous
    one is tried. None if there is none."""
    for step in reversed(self.all_steps()):
      try:
        return (step, *self.restore(step, abstract_state))
      except CheckpointError as e:
        log.error('%s; falling back to the previous checkpoint', e)
        print(f'warning: {e}; falling back to the previous checkpoint', flush=True)
        self._set_aside(step)
    return None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      dst = f'{src}.unreadable'
      n = 1
      while os.path.exists(dst):
        dst, n = f'{src}.unreadable{n}', n + 1
      os.rename(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

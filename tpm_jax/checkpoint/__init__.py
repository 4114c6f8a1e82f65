"""Orbax checkpoints and exports, one concern a file:

  errors.py     CheckpointError (exit 1), CheckpointWriteError, ResumeMismatch and WorkdirBusy (exit 2)
  items.py      the train state <-> named items (params, opt_state, ema, rng, step), by attribute name
  integrity.py  checksums.json (SHA-256 of every file, written last) and the finiteness check
  steps.py      a workdir's steps on disk: listing (set-aside ones too), meta, metadata, restoring items
                and the input position, read-only
  resume.py     the resume policy (all or nothing; see its docstring)
  readonly.py   a workdir's model for export and eval, from the step's own saved config, read-only
  writer.py     Checkpointer: asynchronous saves with Orbax's CheckpointManager, then checksums
  exports.py    reading an export (checked, verified)
  lock.py       one process group per workdir

A step: ``WORKDIR/checkpoints/<step>/{params, opt_state, ema, rng, step, meta, data, checksums.json}``.
"""
from tpm_jax.checkpoint.errors import CheckpointError, CheckpointWriteError, ResumeMismatch, WorkdirBusy
from tpm_jax.checkpoint.exports import (
                                        EXPORT_CONFIG,
                                        EXPORT_INFO,
                                        check_export,
                                        is_export,
                                        load_params_into,
                                        read_export_config,
)
from tpm_jax.checkpoint.integrity import CHECKSUMS, verify_checksums, write_checksums
from tpm_jax.checkpoint.items import (
                                        abstract_items,
                                        abstract_params,
                                        items_into_state,
                                        params_into_model,
                                        state_items,
                                        with_shardings,
)
from tpm_jax.checkpoint.lock import WorkdirLock
from tpm_jax.checkpoint.readonly import newest_saved_config, restore_model
from tpm_jax.checkpoint.resume import Resume, check_config_json, move_run_aside, plan_resume
from tpm_jax.checkpoint.steps import (
    checkpoint_dir,
    list_steps,
    read_meta,
    restore_data,
    restore_items,
    saved_label_names,
    set_aside_steps,
)
from tpm_jax.checkpoint.writer import Checkpointer

__all__ = [
    'CheckpointError', 'CheckpointWriteError', 'ResumeMismatch', 'WorkdirBusy', 'EXPORT_CONFIG', 'EXPORT_INFO',
    'check_export', 'is_export', 'load_params_into', 'read_export_config', 'CHECKSUMS', 'verify_checksums',
    'write_checksums', 'abstract_items', 'abstract_params', 'items_into_state', 'params_into_model', 'state_items',
    'with_shardings', 'WorkdirLock', 'restore_model', 'newest_saved_config', 'Resume', 'check_config_json', 'move_run_aside', 'plan_resume', 'checkpoint_dir',
    'list_steps', 'read_meta', 'restore_data', 'restore_items', 'saved_label_names', 'set_aside_steps', 'Checkpointer',
]

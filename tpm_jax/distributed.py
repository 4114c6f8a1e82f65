"""Multi-host start-up: the same code on one CPU, a TPU pod slice, a SLURM GPU cluster, or several
processes on one machine (MaxText's habit).

- one process: nothing to do;
- TPU pod / SLURM: ``initialize(auto=True)`` calls bare ``jax.distributed.initialize()``, which
  discovers the coordinator and the process ids from the environment;
- explicit (GPU clusters without SLURM, CPU processes): coordinator address, process count and id,
  from arguments or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
  JAX_PROCESS_ID. CPU processes use gloo collectives.
"""
from __future__ import annotations

import importlib.util
import logging
import os

import jax

log = logging.getLogger(__name__)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> None:
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = num_processes or (int(os.environ['JAX_NUM_PROCESSES']) if 'JAX_NUM_PROCESSES' in os.environ else None)
  if process_id is None and 'JAX_PROCESS_ID' in os.environ:
    process_id = int(os.environ['JAX_PROCESS_ID'])
  explicit = bool(coordinator_address or (num_processes or 1) > 1)
  if (explicit or auto) and (os.environ.get('JAX_PLATFORMS', '').startswith('cpu') or not _has_accelerator()):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif auto:
    jax.distributed.initialize()
  else:
    return
  log.info('process %d of %d, %d local / %d global devices', jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())


def _has_accelerator() -> bool:
  return any(importlib.util.find_spec(m) is not None for m in ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'libtpu'))

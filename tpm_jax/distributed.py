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

import errno
import importlib.util
import logging
import os
import re
import socket
import threading
import time

import jax

from tpm_jax.config import ConfigError

log = logging.getLogger(__name__)


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> tuple[str | None, int | None, int | None]:
  """(coordinator_address, num_processes, process_id), each from its flag or else its environment
  variable, checked as JAX would use them (it raises a traceback, or waits its 300 s for a coordinator
  at a port that cannot exist, then aborts): a ConfigError naming the flag or variable and what is
  accepted. Nothing is started."""
  def given(value, flag, var):
    if value is not None:
      return value, f'--{flag}'
    return os.environ.get(var) or None, var

  address, address_from = given(coordinator_address or None, 'coordinator_address', 'JAX_COORDINATOR_ADDRESS')
  numbers = {}
  for name, value, var in (('num_processes', num_processes, 'JAX_NUM_PROCESSES'),
                           ('process_id', process_id, 'JAX_PROCESS_ID')):
    value, where = given(value, name, var)
    if isinstance(value, str):
      try:
        value = int(value)
      except ValueError:
        raise ConfigError(f'{where}={value!r} is not accepted: expected a whole number') from None
    numbers[name] = (value, where)
  (count, count_from), (index, index_from) = numbers['num_processes'], numbers['process_id']
  if count is not None and count < 1:
    raise ConfigError(f'{count_from}={count} is not accepted: expected the number of processes, 1 or more')
  if index is not None and (index < 0 or index >= (count or 1)):
    raise ConfigError(f'{index_from}={index} is not accepted: expected 0 to {(count or 1) - 1} '
                      f'(one number per process, {count_from.lstrip("-")}={count or 1})')
  if (count or 1) > 1 and address is None:
    raise ConfigError(f'{count_from}={count} needs --coordinator_address=HOST:PORT (or JAX_COORDINATOR_ADDRESS): '
                      'where process 0 listens')
  if address is not None and count is None:  # JAX's ValueError, a traceback (hostile pass 22's MP10)
    raise ConfigError(f'{address_from}={address!r} needs --num_processes (or JAX_NUM_PROCESSES): how many processes '
                      f'the run has')
  if address is not None and index is None:
    raise ConfigError(f'{count_from}={count} needs --process_id (or JAX_PROCESS_ID): this process, 0 to {count - 1}')
  if address is not None:
    host, _, port = address.rpartition(':')
    if (not host or re.search(r'\s', host) or not re.fullmatch(r'[0-9]+', port)  # '²' is a digit (MP12); a space in
        or not 1 <= int(port) <= 65535):  # the host waited JAX's 300 s (MP15)
      raise ConfigError(f'{address_from}={address!r} is not accepted: expected HOST:PORT with a port from 1 to 65535 '
                        '(where process 0 listens)')
    if index == 0:  # process 0 runs the coordinator there: a port in use was a segfault (MP18)
      _check_port_free(int(port), address, address_from)
  return address, count, index


def _check_port_free(port: int, address: str, address_from: str) -> None:
  for family, host in ((socket.AF_INET6, '::'), (socket.AF_INET, '')):  # JAX's coordinator binds [::]:PORT
    try:
      with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
      return
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        raise ConfigError(f'{address_from}={address!r} is not accepted: port {port} is in use on this machine '
                          f'(process 0 runs the coordinator there); pick another port') from None
  # neither family could be tried (no IPv6, say): JAX's own bind says what it finds


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> None:
  """Joins the multi-process run the arguments (``resolve``) describe; nothing with one process."""
  coordinator_address, num_processes, process_id = resolve(coordinator_address, num_processes, process_id)
  explicit = bool(coordinator_address or (num_processes or 1) > 1)
  if (explicit or auto) and (os.environ.get('JAX_PLATFORMS', '').startswith('cpu') or not _has_accelerator()):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    _join(coordinator_address, dict(coordinator_address=coordinator_address, num_processes=num_processes,
                                    process_id=process_id))
  elif auto:
    try:
      _join(None, {})
    except ValueError as e:  # JAX's own words, as a traceback (hostile pass 22's MP14)
      raise ConfigError(f'--distributed found no cluster to join ({e}): it is for TPU pods and SLURM; elsewhere give '
                        '--coordinator_address, --num_processes and --process_id') from None
  else:
    return
  log.info('process %d of %d, %d local / %d global devices', jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())


JOIN_TIMEOUT_S = 300  # how long the processes wait for each other at start (JAX's initialization_timeout)


class JoinTimeout(RuntimeError):
  """The run's processes did not all join within ``JOIN_TIMEOUT_S``."""


def _join(coordinator_address: str | None, kwargs: dict) -> None:
  """``jax.distributed.initialize(**kwargs)`` in a thread of its own, waited for here. JAX waits for the
  other processes in C++, where Python's signal handlers do not run: a stop signal went unanswered for
  those 300 s, which then ended in a C++ abort and a stack dump (hostile pass 22's MP15, MP17). Waiting
  here, a stop is handled at once, and processes that have not all joined a few seconds before JAX's
  deadline raise ``JoinTimeout`` (the caller ends the process: JAX's thread cannot be stopped)."""
  done, failed = threading.Event(), []

  def target():
    try:
      jax.distributed.initialize(initialization_timeout=JOIN_TIMEOUT_S, **kwargs)
    except BaseException as e:  # noqa: BLE001 (raised again in the caller's thread)
      failed.append(e)
    finally:
      done.set()
  threading.Thread(target=target, name='jax.distributed.initialize', daemon=True).start()
  deadline = time.monotonic() + JOIN_TIMEOUT_S - 5
  while not done.wait(0.2):
    if time.monotonic() > deadline:
      where = f' at {coordinator_address}' if coordinator_address else ''
      raise JoinTimeout(f'the other processes of the run did not join within {JOIN_TIMEOUT_S} s (coordinator{where}): '
                        f'start every process with the same --num_processes and its own --process_id')
  if failed:
    raise failed[0]


def _has_accelerator() -> bool:
  return any(importlib.util.find_spec(m) is not None for m in ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'libtpu'))

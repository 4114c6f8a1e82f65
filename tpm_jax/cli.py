"""Command-line helpers shared by train.py and eval.py."""
from __future__ import annotations

import argparse
import contextlib
import gc
import logging as std_logging
import os
import re
import signal
import sys
import threading
import time
from typing import NoReturn

from absl import app, flags, logging


def run(main) -> None:
  """``absl.app.run(main)`` with the flags parsed by ``parse_flags_or_exit`` (once)."""
  remaining = parse_flags_or_exit()
  app.run(main, flags_parser=lambda _: remaining)


def quiet_library_logs() -> None:
  """Libraries' absl log lines (JAX's backends, Orbax, TFDS) only when asked for with ``-v``/
  ``--verbosity`` (``-v 0`` shows INFO); tpm_jax's own messages are shown (``show_messages``)."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.FATAL)
  show_messages()


@contextlib.contextmanager
def muted(*loggers: str):
  """The named loggers' records below ERROR dropped for the block, their levels restored after: a library's
  retries (huggingface_hub's) or a note that the caller knows to be moot (the head a resume restores)."""
  saved = [(lg, lg.level) for lg in map(std_logging.getLogger, loggers)]
  for lg, _ in saved:
    lg.setLevel(std_logging.ERROR)
  try:
    yield
  finally:
    for lg, level in saved:
      lg.setLevel(level)


class _Below(std_logging.Filter):
  def __init__(self, level):
    super().__init__()
    self.level = level

  def filter(self, record):
    return record.levelno < self.level


def show_messages() -> None:
  """tpm_jax's log messages as the tools' own output: INFO (progress, resuming, preemption) on stdout,
  warnings and errors on stderr, the bare message. Idempotent; for entry points only."""
  logger = std_logging.getLogger('tpm_jax')
  if getattr(logger, '_tpm_cli', False):
    return
  out, err = std_logging.StreamHandler(sys.stdout), std_logging.StreamHandler(sys.stderr)
  out.addFilter(_Below(std_logging.WARNING))
  err.setLevel(std_logging.WARNING)
  for h in (out, err):
    h.setFormatter(std_logging.Formatter('%(message)s'))
    logger.addHandler(h)
  logger.setLevel(std_logging.INFO)
  logger.propagate = False
  logger._tpm_cli = True


def parse_flags_or_exit(argv=None) -> list[str]:
  """Parse absl flags (and the ``--config.*`` overrides of a config file) up front, so that a bad flag, an
  unknown config field or a bad arg string is one line on stderr and exit code 2, not a traceback."""
  argv = list(sys.argv if argv is None else argv)
  if any(a in ('-h', '--help', '--helpshort', '--helpfull') for a in argv[1:]):
    main = sys.modules.get('__main__')
    print((getattr(main, '__doc__', None) or '').strip() + '\n')
    print(flags.FLAGS.main_module_help(), flush=True)
    sys.exit(0)
  try:
    _check_config_file(argv)
    remaining = flags.FLAGS(argv)
    if len(remaining) > 1:  # a flag without its leading --, say: it would be silently ignored
      raise ValueError(f'unexpected argument {remaining[1]!r}: flags start with -- (for example '
                       f'--{remaining[1].lstrip("-")})')
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      config = flags.FLAGS.config  # a file that failed to load is an error object that raises when read
      if type(config).__name__ == '_ErrorConfig':
        config.to_dict()
    return remaining
  except Exception as e:  # noqa: BLE001 - absl, the config loader and our get_config raise many kinds
    error_line(describe_flag_error(e, argv))
    sys.exit(2)


def _check_config_file(argv) -> None:
  """--config names a regular file (stat first: a FIFO or /dev/zero would be read forever)."""
  for i, a in enumerate(argv):
    if a == '--config' or a.startswith('--config='):
      value = a.split('=', 1)[1] if '=' in a else (argv[i + 1] if i + 1 < len(argv) else '')
      path = os.path.expanduser(value.split(':', 1)[0])
      if path and os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f'--config {value}: not a regular file (expected a configs/*.py file)')


def describe_flag_error(e: Exception, argv) -> str:
  text = str(e)
  if isinstance(e, AttributeError) or 'Did you mean' in text:
    unknown = re.search(r"'\\?'?(\w+)\\?'?", text)
    suggestion = re.search(r'Did you mean "(\w+)"', text)
    key = unknown.group(1) if unknown else '?'
    arg = next((a.split('=')[0] for a in argv if a.startswith('--config.') and a.split('=')[0].endswith('.' + key)),
               f'--config...{key}')
    hint = f' (did you mean {suggestion.group(1)}?)' if suggestion else ''
    return f'{arg[2:]} is not a known config field{hint}'
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  if 'Failed loading config file' in text:  # name the file and the innermost reason
    i = next((j for j, a in enumerate(argv) if a == '--config' or a.startswith('--config=')), None)
    path = None if i is None else (argv[i].split('=', 1)[1] if '=' in argv[i] else argv[i + 1] if i + 1 < len(argv) else None)
    return f'--config {path}: cannot be loaded ({lines[-1] if lines else type(e).__name__})'
  first = lines[0] if lines else type(e).__name__
  if first.endswith(':'):  # "Error whilst parsing config file:" -> add the innermost cause
    cause = e
    while (nxt := cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)) is not None:
      cause = nxt  # the innermost cause ('raise ... from None' ends the chain: its message names the field)
    inner = [l.strip() for l in str(cause).splitlines() if l.strip()]
    first = f'{first} {inner[-1] if inner else type(cause).__name__}'
  return first


def stop_during_start_up(message: str, code: int) -> None:
  """For an entry point, first thing (before JAX and the rest are imported): until the tool takes
  SIGINT and SIGTERM over, either prints ``message`` (``{signal}``: the signal's name) and ends the
  process with ``code``: nothing has started, nothing was written. ``os._exit``, not ``sys.exit``:
  raised inside a garbage-collection callback (JAX has one), SystemExit would be swallowed."""
  def handler(signum, frame):
    del frame
    print(message.format(signal=signal.Signals(signum).name), file=sys.stderr, flush=True)
    os._exit(code)
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, handler)


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM reached a tool that has nothing to save (``stop_on_signals``); ``signal_name``
  is the signal's ('SIGINT'). A ``KeyboardInterrupt``, which libraries let through: code that turns
  any ``Exception`` of a library into its own error (a file "is unreadable", an export "is not of
  this model") does not blame the file for it, and asyncio (Orbax's restores) re-raises it instead of
  logging it and going on (both found by the hostile pass)."""

  def __init__(self, signal_name: str):
    super().__init__(f'stopped by {signal_name}; nothing was written')
    self.signal_name = signal_name


def _in_finalizer(frame) -> bool:
  """Whether the interrupted code runs inside a garbage-collection callback (JAX registers one) or a
  ``__del__``: Python reports an exception raised there as 'ignored' and the program goes on."""
  codes = {getattr(cb, '__code__', None) for cb in gc.callbacks}
  while frame is not None:
    if frame.f_code in codes or frame.f_code.co_name == '__del__':
      return True
    frame = frame.f_back
  return False


def raise_from_signal(signum: int, frame, error: BaseException) -> None:
  """Raise ``error`` from a signal handler where the program will see it: when the signal landed in a
  garbage-collection callback or a ``__del__`` (where it would be swallowed), the same signal is sent
  again 50 ms later instead, to land in the program's own code."""
  if _in_finalizer(frame):
    _send_again(signum)
    return
  raise error


def _send_again(signum: int) -> None:
  """The same signal to this process 50 ms from now, to land in the program's own code."""
  threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()


# After a signal was raised as ``Interrupted``, more signals within this many seconds are the same
# request (Ctrl-C pressed again while the tool stops, JAX's exit clean-up running): not raised again.
REPEAT_S = 2.0


# The signals ``stop_on_signals``' handlers raised as ``Interrupted`` in this process (for ``exit_process``).
_RAISED: list[int] = []
# While ``stops_deferred`` blocks run: the signals taken meanwhile (innermost block last).
_DEFERRING: list[list[int]] = []


@contextlib.contextmanager
def stops_deferred():
  """For a write a stop must not cut short: an Orbax save, whose TensorStore writes go on in their own
  threads after an exception and would leave files behind the tool's clean-up (the hostile pass's
  S1). A SIGINT or SIGTERM that ``stop_on_signals`` takes during the block is raised as
  ``Interrupted`` when the block ends."""
  taken = []
  _DEFERRING.append(taken)
  try:
    yield
  finally:
    _DEFERRING.remove(taken)
  if taken:
    _RAISED.append(taken[0])
    raise Interrupted(signal.Signals(taken[0]).name)


def _closed_event_loop(exc) -> bool:
  return isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc)


def quiet_closed_event_loop() -> None:
  """For the tools: TensorStore's callbacks into Orbax's event loop after that loop was closed (a
  failed save, a restore cut short by a stop signal) print nothing; they would print a traceback
  from a background thread after the tool's one line."""
  unraisable, excepthook = sys.unraisablehook, sys.excepthook

  def quiet_unraisable(u):
    if not _closed_event_loop(u.exc_value):
      unraisable(u)

  def quiet_excepthook(kind, value, tb):
    if not _closed_event_loop(value):
      excepthook(kind, value, tb)
  sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook


def stop_on_signals() -> None:
  """For the read-only tools (eval.py, export, the sweep): SIGINT and SIGTERM raise ``Interrupted``
  where the tool is, so its ``finally`` clauses clean up and it ends with one line instead of a
  traceback (then ``exit_process``); signals that follow within ``REPEAT_S`` seconds are taken as the
  same request."""
  quiet_closed_event_loop()
  raised = []

  def handler(signum, frame):
    if raised and time.monotonic() - raised[-1] < REPEAT_S:
      return
    if _DEFERRING:  # raised when the write ends (``stops_deferred``)
      _DEFERRING[-1].append(signum)
      return
    if not _in_finalizer(frame):
      raised.append(time.monotonic())
      _RAISED.append(signum)
    raise_from_signal(signum, frame, Interrupted(signal.Signals(signum).name))
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, handler)
  swallowed = sys.unraisablehook

  def unraisable(u):
    """``Interrupted`` raised where Python swallows exceptions that ``_in_finalizer`` does not
    recognise (a weakref callback during a garbage collection, say): the signal is sent again."""
    if not isinstance(u.exc_value, Interrupted):
      return swallowed(u)
    raised.clear()
    if _RAISED:
      _RAISED.pop()
    _send_again(signal.Signals[u.exc_value.signal_name])
  sys.unraisablehook = unraisable


def finished() -> None:
  """For a tool whose work is done, just before it puts its output in place (a rename, a small JSON
  written whole): SIGINT and SIGTERM are ignored from now on (nothing is left to stop or to lose; the
  tool ends by itself with its exit code; a stop between the output appearing and this call was
  reported as "nothing was written"). Ignored, not handled: Python's
  shutdown resets a signal it handles to the default before it tears JAX down (0.1-0.5 s), where a
  stop signal then killed the finished tool with exit code 143 and no line; an ignored one it leaves
  ignored. (A handler was a traceback raised inside absl's exit, or that 143.)"""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError, RuntimeError):  # closed, or a write a signal interrupted
      pass
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)


def raise_if_stopped() -> None:
  """For a tool's handler of a run-time error (a damaged checkpoint, an unreadable file): when a stop
  signal was raised as ``Interrupted`` and a library turned it into an error of its own (a TensorStore
  read cut short: 'Encountered error while reading ...'), the stop is what happened: it is raised
  again, for the tool's own stop line."""
  if _RAISED:
    raise Interrupted(signal.Signals(_RAISED[-1]).name)


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser for the ``python -m tpm_jax.*`` tools, whose bad command line is one line (``error:
  <what>; <prog> --help lists the flags``, exit 2) as every other refusal is, not argparse's usage block
  (hostile pass 19's PR01, PR02, SW14). Abbreviated flags are not accepted (``--work`` is no ``--workdir``)."""

  def __init__(self, **kwargs):
    super().__init__(allow_abbrev=False, **kwargs)

  def error(self, message: str) -> NoReturn:
    error_line(f'{message}; {self.prog} --help lists the flags')
    sys.exit(2)

  def parse_args(self, args=None, namespace=None):
    """Flags it does not know are named first (before a missing required one: ``--nme`` for ``--name``)."""
    required = [a for a in self._actions if a.required]
    for a in required:
      a.required = False
    try:
      unknown = super().parse_known_args(args, namespace)[1]
    finally:
      for a in required:
        a.required = True
    if unknown:
      self.error(f'unrecognized arguments: {" ".join(unknown)}')
    return super().parse_args(args, namespace)


def error_line(message) -> None:
  """A tool's one line for a failure: ``error: <message>`` on stderr, flushed (the one format)."""
  print(f'error: {message}', file=sys.stderr, flush=True)


def fail(message, code: int, *, hard: bool = False) -> NoReturn:
  """``error_line(message)``, then the process ends with ``code``: at once (``os._exit``) when
  ``hard`` (no waiting on the input pipeline's, the checkpointer's or the runtime's threads at
  shutdown), otherwise as ``exit_process`` ends it."""
  error_line(message)
  if hard:
    sys.stdout.flush()
    os._exit(code)
  exit_process(code)


def exit_process(code: int) -> NoReturn:
  """End a tool's process with ``code``, its output flushed. After ``stop_on_signals`` raised
  ``Interrupted``, with ``os._exit``: the signal may have cut short a wait on a compile that JAX goes
  on running in its own threads, and the interpreter's clean-up would destroy the backend under it (a
  segmentation fault after the tool's last line). Otherwise ``sys.exit``."""
  sys.stdout.flush()
  sys.stderr.flush()
  if _RAISED:
    os._exit(code)
  sys.exit(code)

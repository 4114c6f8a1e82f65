"""One process group per workdir: process 0 holds an exclusive ``flock`` on the workdir directory
itself for the life of the run (no lock file is needed to hold it). The kernel drops it when the
process ends, kill -9 included, so a stale lock never blocks. Once the run goes ahead, the holder's
pid, host and command go into ``WORKDIR/.lock``, for the message a second process gets."""
from __future__ import annotations

import fcntl
import os
import re
import socket
import stat
import sys
import time

from tpm_jax.checkpoint.errors import WorkdirBusy
from tpm_jax.files import process_running, written_whole

HOLDER = '.lock'


class WorkdirLock:
  def __init__(self, directory: str, what: str = 'workdir'):
    self.directory = os.path.abspath(os.path.expanduser(directory))
    self.what = what
    self.fd = None
    self.created = False

  def acquire(self) -> 'WorkdirLock':
    """Take the lock (creating the directory if needed); WorkdirBusy naming the holder if another
    process has it. Writes nothing in an existing directory (``record_holder`` does, later); a
    directory it creates is removed again on ``release`` if nothing was written into it (a run
    refused or stopped before it wrote anything leaves no trace)."""
    self.created = not os.path.lexists(self.directory)
    os.makedirs(self.directory, exist_ok=True)
    fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      os.close(fd)
      holder = _holder(self.directory)
      raise WorkdirBusy(f'{self.what} {self.directory} is in use by {holder}: wait for it to finish, stop it, or use '
                        f'another {self.what}') from None
    self.fd = fd
    return self

  def record_holder(self) -> None:
    """``WORKDIR/.lock``: who holds the lock (read by the message of a refused second process)."""
    spec = getattr(sys.modules.get('__main__'), '__spec__', None)  # python -m <package>: its name, not __main__.py
    prog = f'python -m {spec.name.removesuffix(".__main__")}' if spec is not None else os.path.basename(sys.argv[0])
    command = ' '.join([prog] + sys.argv[1:])[:300] if sys.argv else ''
    path = os.path.join(self.directory, HOLDER)
    with written_whole(path) as tmp, open(tmp, 'w') as f:
      f.write(f'pid {os.getpid()} on {socket.gethostname()} since {time.strftime("%Y-%m-%d %H:%M:%S")} ({command})\n')

  def release(self) -> None:
    if self.fd is not None:
      os.close(self.fd)  # closing drops the flock
      self.fd = None
      if self.created:
        self.created = False
        try:
          os.rmdir(self.directory)  # only if still empty: nothing was written
        except OSError:
          pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False


def _holder(directory: str) -> str:
  """Who holds ``directory``'s lock: its ``.lock`` record when that names the process holding the flock
  (the kernel's /proc/locks, where it can be read) or, without that, a process still running on this
  host; otherwise the flock holder's pid, or 'another process'. The holder writes ``.lock`` only once it
  goes ahead, so while it starts up the file may still name an earlier, ended run or a pid since
  reused (hostile passes 10 and 11: C1, L_pid1); a file that is not such a record is not printed."""
  path, holder = os.path.join(directory, HOLDER), _flock_holder(directory)
  try:
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open
      raise OSError
    with open(path) as f:
      text = f.read(1000).strip()
  except (OSError, UnicodeDecodeError):
    text = ''
  named = re.fullmatch(r'pid (\d+) on (\S+) since [^\n]*', text)
  if named and (int(named[1]) == holder if holder is not None else
                named[2] != socket.gethostname() or process_running(int(named[1]))):
    return text
  return f'pid {holder} (starting up)' if holder is not None else 'another process'


def held_by_another(directory: str) -> bool:
  """Whether a running process holds a flock on ``directory`` (a tool's lock, held before its ``.lock`` record is
  written), read from /proc/locks without taking a lock: no race with a process taking it now."""
  return _flock_holder(directory) is not None


def _flock_holder(directory: str) -> int | None:
  """The pid holding a flock on ``directory``, as /proc/locks lists it (Linux); None where it cannot be read."""
  try:
    st = os.stat(directory)
    with open('/proc/locks') as f:
      for line in f:
        parts = line.split()
        if len(parts) > 5 and parts[1] == 'FLOCK' and parts[5].split(':')[-1] == str(st.st_ino):
          pid = int(parts[4])
          return pid if process_running(pid) else None
  except (OSError, ValueError):
    pass
  return None

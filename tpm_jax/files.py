"""Small file rules used across the package, each once: a file's SHA-256, writing a file whole
(beside it, then renamed: a reader sees the old file or the new one, never half of one), and whether
the process a file names (its writer, a lock's holder) still runs."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat


def nearest_existing(path: str) -> str:
  """The absolute ``path`` itself if something is there (a link to nothing included), else its nearest ancestor that is."""
  while not os.path.lexists(path):
    path = os.path.dirname(path)
  return path


def blocked_at(path: str) -> tuple[str, str] | None:
  """Why no folder can be at or made at the absolute ``path``: (the path in the way, 'file' or 'dangling link') for
  ``path`` itself, or for its nearest existing ancestor, when that is not a folder; None when nothing is in the way."""
  existing = nearest_existing(path)
  if os.path.isdir(existing):
    return None
  return existing, 'dangling link' if os.path.islink(existing) and not os.path.exists(existing) else 'file'


def unwritable_at(path: str) -> str | None:
  """The nearest existing folder at or above the absolute ``path`` when nothing can be made in it (a read-only
  file system, permissions), else None."""
  existing = nearest_existing(path)
  return None if os.access(existing, os.W_OK | os.X_OK) else existing


def sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def writing_name(path: str, pid: int | None = None, ext: str = '') -> str:
  """What a process (this one by default) writes beside ``path`` until it is whole: ``<path>.writing-<pid><ext>``."""
  return f'{path}.writing-{os.getpid() if pid is None else pid}{ext}'


def writing_pid(name: str, base: str | None = None, ext: str | None = None) -> int | None:
  """The pid in ``name`` where ``writing_name`` gives it (of ``base``, with ``ext``, where given), else None."""
  match = re.fullmatch(r'(.*)\.writing-(\d+)(\.[^.]*)?', name)
  if not match or base is not None and match[1] != base or ext is not None and (match[3] or '') != ext:
    return None
  return int(match[2])


def give_new_file_mode(path: str) -> None:
  """Give ``path`` the permissions of a file this process creates (0666 less the umask): safetensors'
  ``save_file`` writes 0600, which other users (a serving job under another account) cannot read."""
  probe = writing_name(path, ext='.mode')
  os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o666))
  try:
    os.chmod(path, stat.S_IMODE(os.stat(probe).st_mode))
  finally:
    os.remove(probe)


@contextlib.contextmanager
def written_whole(path: str):
  """``with written_whole(path) as tmp:`` write to ``tmp`` (beside ``path``, same extension), renamed
  to ``path`` when the block ends without an error; removed otherwise (a full disk, a stop signal): a
  reader sees the old file or the new one, never half of one."""
  root, ext = os.path.splitext(path)
  tmp = writing_name(root, ext=ext)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, value, *, indent: int | None = 2) -> None:
  """``value`` as JSON at ``path``, written beside and renamed into place (``written_whole``)."""
  with written_whole(path) as tmp, open(tmp, 'w') as f:
    json.dump(value, f, indent=indent)
    f.flush()
    os.fsync(f.fileno())


def read_json_object(path: str) -> dict:
  """The JSON object in ``path``; OSError or ValueError (also for JSON that is not an object). A path
  that is not a regular file (a FIFO, whose open would wait for a writer forever; a device; a
  directory) is an OSError without being opened."""
  if not stat.S_ISREG(os.stat(path).st_mode):
    raise OSError(errno.EINVAL, 'not a regular file', path)
  with open(path) as f:
    value = json.load(f)
  if not isinstance(value, dict):
    raise ValueError('not a JSON object')
  return value


def process_running(pid: int) -> bool:
  """Whether process ``pid`` exists on this host (no signal is sent)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, another user's
    pass
  return True

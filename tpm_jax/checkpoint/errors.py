"""The checkpoint errors, each with its exit code in the command-line tools."""
from __future__ import annotations

from tpm_jax.config import ConfigError


class CheckpointError(RuntimeError):
  """A checkpoint could not be used (exit 1); the message names the step, the file or directory, and why."""


class CheckpointWriteError(OSError):
  """The file system refused a checkpoint (disk full, read-only, permissions): the run stops (exit 1)."""


class ResumeMismatch(ConfigError):
  """The workdir holds another run than the config describes, or one that cannot continue as asked (exit 2)."""


class WorkdirBusy(ConfigError):
  """Another process holds the workdir (exit 2); the message names it."""


def first_line(e: BaseException, limit: int = 200) -> str:
  """'<type>: <first line of the message>' of a library exception, for one-line errors; of an OSError, its
  reason alone ('No such file or directory'): the caller's line names the path (hostile pass 19's CK02, D12: an
  errno dump, the path said twice)."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  text = str(e).strip().split(' See full TensorStore details')[0]  # then a pybind repr, no detail
  return f'{type(e).__name__}: {text.splitlines()[0][:limit]}' if text else type(e).__name__


FS_ERRORS = (('No space left on device', 28), ('Read-only file system', 30), ('Permission denied', 13),
             ('Disk quota exceeded', 122), ('File too large', 27))


def fs_failure(e: BaseException) -> tuple[str, int] | None:
  """(reason, errno) of a file-system failure a library reports (an OSError, or Orbax's and TensorStore's
  ValueError/RuntimeError whose text names it: a full disk is RESOURCE_EXHAUSTED there), else None."""
  if isinstance(e, OSError) and e.errno:
    return e.strerror or str(e), e.errno
  text = f'{type(e).__name__}: {e}'
  return next(((reason, code) for reason, code in FS_ERRORS if reason in text), None)

"""Preparing a TFDS dataset once, in ArrayRecord (the random-access format Grain reads): the one
step that needs TensorFlow, which TFDS writes its files with (``pip install -e .[prepare]``).

Training prepares ``config.dataset`` on first use; to prepare ahead of time (e.g. on one machine,
then copy ``data_dir`` to a bucket the pod reads)::

  python -m tpm_jax.data.prepare --name imagenet2012 --manual_dir /data/imagenet --data_dir /data/tfds

``imagenet2012`` reads ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from ``manual_dir``;
``fashion_mnist`` Debian's dataset-fashion-mnist files (``local_sources``). A dataset prepared
earlier in TFRecord only (tf.data's format) is moved aside (``<version>.tfrecord``, nothing
deleted) and prepared again in ArrayRecord from the same downloads or manual dir.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os

import tensorflow_datasets as tfds

from tpm_jax.checkpoint.errors import first_line
from tpm_jax.cli import ArgumentParser, Interrupted, error_line, fail, finished, stop_on_signals
from tpm_jax.config import ConfigError, DataConfig
from tpm_jax.data.local_sources import is_prepared, prepare_fashion_mnist
from tpm_jax.files import blocked_at, unwritable_at
from tpm_jax.network import unreachable

log = logging.getLogger(__name__)

ARRAY_RECORD = tfds.core.file_adapters.FileFormat.ARRAY_RECORD


def prepare(dcfg):
  """The TFDS builder of ``config.dataset`` (name, data_dir, manual_dir), prepared in ArrayRecord. Two
  processes preparing in one data dir take turns (a flock on it): the second finds the dataset prepared."""
  builder = tfds.builder(dcfg.name, data_dir=dcfg.get('data_dir'))
  if is_prepared(builder):
    return builder
  root = str(builder.data_dir_root)
  _check_folders(root, os.path.join(root, dcfg.name))
  mocked = builder.download_and_prepare.__module__.startswith('tensorflow_datasets.testing')  # tfds.testing's
  if not (_from_debian(builder) or getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None) or mocked):  # mock_data:
    _check_network(dcfg.name)  # nothing is downloaded. Before the data dir is made (hostile pass 21's PR25)
  with _preparing(root):
    builder = tfds.builder(dcfg.name, data_dir=dcfg.get('data_dir'))
    builder = builder if is_prepared(builder) else _prepare(dcfg, builder)
  # An empty version folder was said to be prepared, and train.py then ended in a traceback (hostile pass 19's PR08,
  # PR08b). TFDS's mock_data makes no folder (its data is made when read): not refused.
  if os.path.isdir(builder.data_dir) and not builder.info.splits:
    raise ConfigError(f'{dcfg.name}: {builder.data_dir} holds no prepared dataset (no splits); remove it to prepare '
                      f'it again')
  return builder


def _check_folders(root: str, dataset_folder: str) -> None:
  """The data dir, and the dataset's folder in it, are folders or do not exist yet: a file or a link to nothing there
  was an errno dump (hostile pass 18's G06; 19's PR03, PR04, PR09, the last naming a folder TFDS makes inside)."""
  for path in (root, dataset_folder):
    blocked = blocked_at(os.path.abspath(path))
    if blocked is not None:
      kind = 'a link to nothing' if blocked[1] == 'dangling link' else 'a file'
      what = kind if blocked[0] == os.path.abspath(path) else f'inside {blocked[0]}, {kind}'
      it = 'it' if path == root else f'{os.path.basename(path)} in it'
      raise ConfigError(f'dataset.data_dir={root} is not accepted: {it} is {what}; expected a folder (TFDS prepares '
                        f'the dataset in it)')
  locked = unwritable_at(os.path.abspath(root))  # an errno line, exit 1 after start-up (hostile pass 21's OP22, OP25)
  if locked is not None:
    raise ConfigError(f'dataset.data_dir={root} is not accepted: {locked} is not writable (read-only file system or '
                      f'permissions), and the dataset is not prepared there yet; prepare it where you can write')


@contextlib.contextmanager
def _preparing(root: str):
  """An exclusive flock on the TFDS data dir ``root`` while a dataset is prepared there: two first runs started
  together prepared it both, and the slower one failed renaming its copy into place (hostile pass 17's PREP)."""
  os.makedirs(root, exist_ok=True)
  fd = os.open(root, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log.warning('%s: another process is preparing a dataset there; waiting for it to finish', root)
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # closing drops the flock


def _prepare(dcfg, builder):
  """``prepare``'s work, under its lock."""
  try:
    import tensorflow  # noqa: F401 (TFDS writes with it)
  except ImportError:
    where = builder.data_dir if builder.is_prepared() else dcfg.get('data_dir') or '~/tensorflow_datasets'
    raise ConfigError(f'dataset.name={dcfg.name!r} is not prepared in ArrayRecord in {where}; preparing it needs '
                      f'TensorFlow: pip install -e .[prepare] (or bash quickstart.sh), then run again') from None
  if builder.is_prepared():  # TFRecord only (TFDS cannot add a format in place): kept aside, prepared anew
    old = str(builder.data_dir)
    aside, n = f'{old}.tfrecord', 1
    while os.path.exists(aside):
      aside, n = f'{old}.tfrecord{n}', n + 1
    os.rename(old, aside)
    log.warning('%s: %s holds TFRecord files only; moved to %s (delete it when done) and preparing ArrayRecord files '
                'from the same sources', dcfg.name, old, aside)
    builder = tfds.builder(dcfg.name, data_dir=dcfg.get('data_dir'))
  if _from_debian(builder):
    prepare_fashion_mnist(dcfg.get('data_dir'))
  else:
    manual = dcfg.get('manual_dir')
    builder.download_and_prepare(file_format=ARRAY_RECORD, download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual) if manual else None))
  return tfds.builder(dcfg.name, data_dir=dcfg.get('data_dir'))


def _from_debian(builder) -> bool:
  """Whether ``builder`` is the fashion_mnist that ``prepare_fashion_mnist`` prepares from Debian's files
  (however the name was spelled: ``Fashion_MNIST``, ``fashion_mnist:3.0.1``; hostile pass 21's PR25, PR26)."""
  return builder.name == 'fashion_mnist' and builder.version == tfds.builder_cls('fashion_mnist').VERSION


TFDS_HOST = 'storage.googleapis.com'  # where TFDS looks for a prepared copy first, before the dataset's own URLs


def _check_network(name: str) -> None:
  """A dataset TFDS downloads, on a machine without a name server (and no proxy): one line at once. TFDS retried
  each URL ten times with back-off, for minutes (hostile pass 19's PR11)."""
  why = unreachable(TFDS_HOST)
  if why is not None:
    raise ConfigError(f'{name}: preparing it downloads its files, and this machine cannot reach the network '
                      f'({TFDS_HOST}: {why}); prepare it on a machine that can (python -m '
                      f'tpm_jax.data.prepare --name {name} --data_dir DIR) and copy DIR here')


def main(argv=None) -> int:
  p = ArgumentParser(prog='python -m tpm_jax.data.prepare', description=__doc__.split('\n\n')[0])
  p.add_argument('--name', required=True, help='a TFDS dataset name, e.g. imagenet2012, fashion_mnist')
  p.add_argument('--data_dir', default=None, help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)')
  p.add_argument('--manual_dir', default=None, help='where the dataset\'s manual downloads are (imagenet2012: the tars)')
  a = p.parse_args(argv)
  stop_on_signals()  # a stop while TFDS writes: its unfinished folder removed, one line (not a traceback)
  try:
    builder = prepare(DataConfig(name=a.name, data_dir=a.data_dir, manual_dir=a.manual_dir).validated())
  except Interrupted as e:
    fail(f'stopped by {e.signal_name}; the dataset was not prepared (run the same command again)', 1)
  except (ConfigError, tfds.core.registered.DatasetNotFoundError, AssertionError, OSError) as e:
    error_line(str(e).strip().splitlines()[0])
    return 2
  except Exception as e:  # noqa: BLE001 - TFDS over damaged data (protobuf's ParseError: hostile pass 19's PR07)
    fail(f'{a.name} in {a.data_dir or "~/tensorflow_datasets"}: preparing it failed ({first_line(e)}); remove its '
         f'folder there to prepare it again', 1)
  finished()  # prepared: a stop from now on changes nothing (hostile pass 18's S01: exit 130, no line)
  splits = ', '.join(f'{k} ({v.num_examples} examples)' for k, v in sorted(builder.info.splits.items()))
  print(f'{a.name}: prepared in ArrayRecord in {builder.data_dir}: {splits}')
  return 0


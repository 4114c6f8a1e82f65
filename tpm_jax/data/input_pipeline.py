"""The input pipeline: Grain over random-access sources (``tpm_jax.data.sources``), no TensorFlow.

Images leave the host as uint8; normalisation, random erasing's noise, mixup and cutmix happen on
the device (``tpm_jax.augment``). Each process reads every ``process_count``-th example of the split
(no example lost or repeated); the train stream shuffles each epoch differently, and every random
choice of an example's augmentation comes from ``(seed, process, position in the stream)``, so a
pipeline is a pure function of its seed. ``workers`` > 0 decodes and augments in that many worker
processes (Grain's ``mp_prefetch``); 0 uses threads of this process. The train iterator's state
(a few integers per process) goes into every checkpoint, and a resumed run continues at the same
example.

An image that cannot be decoded stops the iterators with ``DataError``, one line naming the file.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import signal
import threading
import time
from multiprocessing import resource_tracker

import grain
import numpy as np
from absl import flags
from PIL import Image, UnidentifiedImageError

from tpm_jax.config import AugConfig, DataConfig
from tpm_jax.data import transforms
from tpm_jax.data.sources import IMAGE_EXTENSIONS, DataError, get_dataset  # noqa: F401 (re-exported)


def undecodable_reason(encoded: bytes, channels: int = 3) -> str | None:
  """Why ``encoded`` cannot be an image of the pipeline (as its own decoder, ``transforms.decode``,
  reads it), or None."""
  if not encoded:
    return 'an empty file'
  try:
    with Image.open(io.BytesIO(encoded)) as im:
      im.load()
    transforms.decode(encoded, channels)  # 16-bit scaled; float and 32-bit images refused
  except DataError as e:
    return str(e)
  except UnidentifiedImageError:
    return 'not JPEG, PNG, GIF or BMP data'
  except OSError as e:
    text = str(e).strip()
    return 'the file is truncated' if 'truncated' in text.lower() else (text.splitlines()[0] if text else 'OSError')
  except Exception as e:  # noqa: BLE001 (any decoder failure is the file's)
    return f'{type(e).__name__}: {e}'.splitlines()[0]
  return None


def _transformed(transform, example, channels: int, *args):
  """``transform(example['image'], *args)``; an image that does not decode raises ``DataError`` naming its file."""
  try:
    return transform(example['image'], *args)
  except Exception:
    data = example['image']
    reason = undecodable_reason(bytes(data), channels) if isinstance(data, (bytes, np.bytes_)) else None
    if reason is None:  # the image decodes: not the file's fault
      raise
    raise DataError(f'{example["name"]}: not a decodable image ({reason})') from None


def _label(example, num_classes: int | None):
  """The example's label; DataError naming its file when it is outside [0, num_classes) (a model
  with fewer classes than the data: cross-entropy would silently train on nothing)."""
  label = int(example['label'])
  if num_classes is not None and not 0 <= label < num_classes:
    raise DataError(f'{example["name"]}: label {label} is outside the model\'s {num_classes} classes '
                    f'(model.num_classes={num_classes})')
  return np.int32(label)


class _TrainExample:
  """(position, example) -> {'image', 'erase', 'label'}; its randomness is (seed, process, position)."""

  def __init__(self, aug, img_size, channels, seed, process_index, num_classes=None):
    self.transform = transforms.train_transform(aug, img_size, channels)
    self.channels, self.seed, self.process_index = channels, int(seed), int(process_index)
    self.num_classes = num_classes

  def __call__(self, position, example):
    label = _label(example, self.num_classes)
    rnd = transforms.example_randomness(self.seed, self.process_index, position)
    out = _transformed(self.transform, example, self.channels, rnd)
    return {'image': out['image'], 'erase': np.asarray(out['erase'], np.int32), 'label': label}


class _EvalExample:
  """index -> {'image', 'label', 'mask'}: the process's examples, then zero padding with mask 0."""

  def __init__(self, source, aug, img_size, channels, num_classes=None):
    self.source, self.channels, self.size, self.num_classes = source, channels, img_size, num_classes
    self.transform = transforms.eval_transform(aug, img_size, channels)

  def __call__(self, index):
    if index >= len(self.source):
      return {'image': np.zeros((self.size, self.size, self.channels), np.uint8), 'label': np.int32(0),
              'mask': np.int32(0)}
    example = self.source[index]
    label = _label(example, self.num_classes)
    return {'image': _transformed(self.transform, example, self.channels), 'label': label, 'mask': np.int32(1)}


def _prefetched(ds, data):
  """``ds`` (a MapDataset of whole batches) read by ``data.threads`` threads, ``2 x threads``
  batches ahead, in each of ``data.workers`` worker processes (or in this one)."""
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.threads, prefetch_buffer_size=2 * data.threads))
  if data.workers > 0:
    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags; a caller without absl.app has not parsed them
      flags.FLAGS.mark_as_parsed()
    # The resource tracker that Grain's shared memory needs, started now rather than by the first
    # worker's start: starting it unblocks SIGINT in the thread that starts it (multiprocessing's
    # own code), which would undo ``_sigint_held`` for that worker.
    resource_tracker.ensure_running()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers, per_worker_buffer_size=2),
                        worker_init_fn=functools.partial(_worker_init, os.getpid()))
  return it


@contextlib.contextmanager
def _sigint_held():
  """SIGINT held back (blocked) in this thread while Grain may start its worker processes and threads
  from it: they inherit the block, so a Ctrl-C to the process group cannot interrupt a worker that is
  still starting up, before ``_worker_init`` ignores it (a KeyboardInterrupt traceback per worker).
  This process still gets the Ctrl-C: through another of its threads, or as the block is lifted."""
  held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, held)


def next_batch(iterator):
  """``next(iterator)`` for an iterator of this module: Grain starts its worker processes on the first
  calls, so they are made with SIGINT held back (``_sigint_held``)."""
  with _sigint_held():
    return next(iterator)


def _worker_init(parent: int, worker_index: int, worker_count: int) -> None:
  """In each of the input pipeline's worker processes (ours, not the caller's): Ctrl-C, which the
  terminal sends to the whole process group, is left to ``parent``, which saves or stops and then
  closes its workers (each worker would otherwise print a KeyboardInterrupt traceback); and the worker
  exits when ``parent`` is gone (killed with -9, say), instead of living on as an orphan (Grain's
  workers do not watch their parent)."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(0)
  threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


def train_dataset(data: DataConfig, aug: AugConfig, dataset, *, img_size: int, channels: int = 3,
                  num_classes: int | None = None, seed: int = 0, local_batch: int, process_index: int = 0,
                  process_count: int = 1):
  """The endless train stream of this process as a Grain ``IterDataset`` of batches
  {'image': uint8 (local_batch, H, W, C), 'erase': int32 (local_batch, 4), 'label': int32}."""
  source = dataset.source(data.train_split)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.shuffle(seed=(seed * 1009 + process_index) % 2**32).repeat()
  ds = ds.map_with_index(_TrainExample(aug, img_size, channels, seed, process_index, num_classes))
  return _prefetched(ds.batch(local_batch, drop_remainder=True), data)


def train_iterator(data: DataConfig, aug: AugConfig, dataset, **kw):
  """An iterator over ``train_dataset`` (same arguments), read with ``next_batch``; its
  ``get_state()``/``set_state()`` (Grain's) go into checkpoints, so a resumed run continues where it
  stopped."""
  ds = train_dataset(data, aug, dataset, **kw)
  with _sigint_held():  # Grain may make the threads that start its workers here
    return iter(ds)


def close(iterator) -> None:
  """Stop an iterator's worker processes (Grain's ``mp_prefetch``), if it has any."""
  stop = getattr(iterator, 'close', None)
  if stop is not None:
    stop()


def process_examples(n: int, process_index: int, process_count: int) -> int:
  """How many of ``n`` examples process ``process_index`` reads (every ``process_count``-th)."""
  return len(range(process_index, n, process_count))


def eval_batches(data: DataConfig, aug: AugConfig, dataset, split: str, *, img_size: int, channels: int = 3,
                 num_classes: int | None = None, local_batch: int, process_index: int = 0, process_count: int = 1):
  """The split once, as fixed-size batches with a 'mask' (1 for real examples, 0 for padding);
  every process yields the same number of batches, so every example counts exactly once."""
  source = dataset.source(split)
  n_batches = max(1, math.ceil(process_examples(len(source), 0, process_count) / local_batch))
  mine = grain.MapDataset.source(source)[process_index::process_count]
  fn = _EvalExample(mine, aug, img_size, channels, num_classes)
  ds = grain.MapDataset.range(n_batches * local_batch).map(fn).batch(local_batch)
  ds = _prefetched(ds, data)
  with _sigint_held():
    it = iter(ds)
  try:
    while True:
      try:
        batch = next_batch(it)
      except StopIteration:
        return
      yield batch
  finally:
    close(it)

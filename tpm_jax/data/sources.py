"""Where examples come from: random-access sources that Grain reads, without TensorFlow.

* A TFDS image-classification dataset by name (``imagenet2012`` from its manual dir,
  ``fashion_mnist`` from Debian's files, ``cifar10``, ...), read through its ArrayRecord data source
  (``builder.as_data_source``). Preparing a dataset is the one step that needs TensorFlow (TFDS
  writes its files with it): ``tpm_jax.data.prepare`` does it once, in ArrayRecord, on first use
  or ahead of time (``python -m tpm_jax.data.prepare``).
* A local image folder, root/split/class/image (``.jpg``, ``.jpeg``, ``.png``), classes numbered in
  sorted order across the splits (``tfds.ImageFolder``'s layout and labels).

Both give ``Dataset``: ``.info.splits`` (a ``tfds.core.SplitDict``: sizes, and TFDS's slicing:
``train[:50%]``, ``test[:100]+train[:10]``), ``.label_names``, and ``.source(split)``, a sequence of
``{'image': encoded bytes or uint8 array, 'label': int, 'name': str}`` for a split spec.

Damaged data is one line naming the file: a folder that cannot be listed (permissions, a symlink loop)
and a TFDS dataset whose ``dataset_info.json`` cannot be read are ``ConfigError``; a record that cannot
be read is ``DataError`` naming its shard and how to prepare the dataset again; ``check_readable`` opens
every shard of a split at start-up, ``sample_labels`` reads the first labels of a split.
"""
from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import os
import re
import stat

import tensorflow_datasets as tfds

from tpm_jax.config import ConfigError
from tpm_jax.data.local_sources import is_prepared
from tpm_jax.data.prepare import prepare
from tpm_jax.data.transforms import DataError  # noqa: F401 (defined beside the decoder, which raises it too)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')  # what an image folder holds (case-insensitive)


def _absolute(splits, spec: str):
  """[(split name, start, stop)] for a TFDS split spec ('train', 'test[:100]', 'a[:50%]+b')."""
  out = []
  for part in tfds.core.ReadInstruction.from_spec(spec).to_absolute(splits):
    n = int(splits[part.splitname].num_examples)
    out.append((part.splitname, part.from_ or 0, n if part.to is None else part.to))
  return out


class _Concat:
  """Random access over slices of per-split sequences, in order."""

  def __init__(self, parts):  # [(sequence, start, stop)]
    self.parts = [(seq, start, max(start, stop)) for seq, start, stop in parts]
    self.n = sum(stop - start for _, start, stop in self.parts)

  def __len__(self):
    return self.n

  def __getitem__(self, i: int):
    i = int(i)
    if not 0 <= i < self.n:
      raise IndexError(i)
    for seq, start, stop in self.parts:
      if i < stop - start:
        return seq[start + i]
      i -= stop - start
    raise IndexError(i)


class _FolderSplit:
  def __init__(self, files):  # [(path, label)]
    self.files = files

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i: int):
    path, label = self.files[i]
    try:
      with open(path, 'rb') as f:
        return {'image': f.read(), 'label': label, 'name': path}
    except OSError as e:  # gone, or no longer a file, since the run started
      raise DataError(f'{path}: cannot be read ({e.strerror or e})') from None


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _reprepare_text(folder: str, name: str, data_dir: str, manual) -> str:
  """How to replace a damaged prepared TFDS dataset (``folder``: its version folder)."""
  return (f'the prepared dataset is damaged: delete {folder} and prepare it again (python -m tpm_jax.data.prepare '
          f'--name {name} --data_dir {data_dir}{" --manual_dir DIR" if manual else ""})')


def _reprepare(builder) -> str:
  return _reprepare_text(builder.data_dir, builder.name, os.fspath(builder.data_dir_root),
                         getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))


class _Named:
  """A TFDS data source's records, with the name of each example ('file_name' where the dataset
  records one, else its position). ``shards``: the split spec's ``FileInstruction``s, in the data
  source's order; a record that cannot be read is a ``DataError`` naming its shard."""

  def __init__(self, data_source, where: str, shards=(), advice: str = ''):
    self.data_source, self.where, self.shards, self.advice = data_source, where, list(shards), advice
    self.ends, n = [], 0
    for shard in self.shards:
      n += int(shard.take)
      self.ends.append(n)

  def __len__(self):
    return len(self.data_source)

  def shard_of(self, i: int) -> str | None:
    k = bisect.bisect_right(self.ends, int(i))
    return os.fspath(self.shards[k].filename) if k < len(self.shards) else None

  def damaged(self, what: str, e: BaseException) -> DataError:
    reason = _first_line(e)
    if 'No such file' in reason or isinstance(e, FileNotFoundError):
      reason = 'no such file'
    return DataError(f'{what} cannot be read ({reason}); {self.advice}')

  def __getitem__(self, i: int):
    try:
      record = self.data_source[int(i)]
    except IndexError:
      raise
    except Exception as e:  # noqa: BLE001 (a truncated, missing or corrupt shard: any reader error is the file's)
      shard = self.shard_of(i)
      raise self.damaged(f'{self.where} example {int(i)}' + (f': {shard}' if shard else ''), e) from None
    name = record.get('file_name')
    if isinstance(name, bytes):
      name = name.decode('utf-8', 'replace')
    return {'image': record['image'], 'label': int(record['label']),
            'name': f'{self.where} file {name}' if name else f'{self.where} example {int(i)}'}


@dataclasses.dataclass
class Dataset:
  """A dataset's splits and labels, and random access to its examples (see the module's doc)."""
  where: str                      # for messages: 'image folder /x' or the TFDS name
  splits: object                  # tfds.core.SplitDict (empty for TFDS's mock data)
  label_names: list
  source: object                  # split spec -> sequence of examples
  files: dict | None = None       # an image folder's {split: {class: [image paths]}}

  @property
  def info(self):
    return self  # so that `dataset.info.splits` reads as it does on a TFDS builder

  def num_examples(self, spec: str) -> int:
    return int(self.splits[spec].num_examples) if self.splits else len(self.source(spec))

  def fingerprint(self, spec: str) -> str:
    """SHA-256 of which examples a split spec names: the class names (which label means what), and an
    image folder's files by class, or a TFDS split's shards (files, ranges), by name: the files'
    contents are not read (a start-up of ImageNet would read 140 GB). A resumed run's saved input
    position indexes these examples, so a changed fingerprint means other data."""
    parts = [list(self.label_names), spec]
    if self.files is not None:
      root = self.where.removeprefix('image folder ')
      for name in sorted({p.split('[')[0].strip() for p in spec.split('+')}):
        parts.append([(cls, sorted(os.path.relpath(f, root) for f in paths))
                      for cls, paths in sorted(self.files.get(name, {}).items())])
    elif self.splits:
      parts.append([(os.path.basename(os.fspath(f.filename)), int(f.skip), int(f.take))
                    for f in self.splits[spec].file_instructions])
    else:
      parts.append(self.num_examples(spec))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _check_shard(shard) -> str | None:
  """Why an ArrayRecord shard's records [skip, skip + take) cannot be read (its first and last), or None."""
  from array_record.python import array_record_module
  reader = None
  try:
    reader = array_record_module.ArrayRecordReader(os.fspath(shard.filename), options='readahead_buffer_size:0')
    if not reader.ok():  # (missing or truncated: the reader's error comes with closing it)
      reader, failed = None, reader
      failed.close()
      return 'the ArrayRecord reader fails'
    n, expected = reader.num_records(), getattr(shard, 'examples_in_shard', None)
    if expected is not None and n != int(expected):
      return f'it holds {n} records, not the {expected} of dataset_info.json'
    if int(shard.take) > 0:
      reader.read([int(shard.skip), int(shard.skip) + int(shard.take) - 1])
  except Exception as e:  # noqa: BLE001 (any reader error is the file's)
    return _first_line(e)
  finally:
    if reader is not None:
      try:
        reader.close()
      except Exception:  # noqa: BLE001, S110 (a reader that failed also fails to close: its error is reported)
        pass
  return None


def check_readable(dataset: Dataset, spec: str) -> None:
  """Split ``spec`` of ``dataset`` can be read, cheaply: for a TFDS dataset, every ArrayRecord shard it
  covers is opened (a truncated shard fails there) and its first and last record of the split read, in
  threads; then the split's first and last examples are read as the pipeline reads them. Raises
  ``ConfigError``, one line naming the file (and, for TFDS, how to prepare the dataset again)."""
  source = dataset.source(spec)
  shards = getattr(source, 'shards', None)
  if shards:
    with concurrent.futures.ThreadPoolExecutor(min(16, len(shards))) as pool:
      reasons = list(pool.map(_check_shard, shards))
    for shard, reason in zip(shards, reasons):
      if reason:
        raise ConfigError(str(source.damaged(f'{dataset.where} {spec}: {os.fspath(shard.filename)}',
                                             OSError(reason))))
  try:
    for i in sorted({0, len(source) - 1} - {-1}):
      source[i]
  except DataError as e:
    raise ConfigError(str(e)) from None


def sample_labels(dataset: Dataset, spec: str, limit: int = 1000) -> list[int]:
  """The labels of the first ``limit`` examples of split ``spec`` (a TFDS dataset is shuffled when
  prepared: a sample of its labels). Reads each example whole; ``DataError`` where one cannot be read."""
  source = dataset.source(spec)
  return [int(source[i]['label']) for i in range(min(limit, len(source)))]


class _FolderSource:
  def __init__(self, splits, examples):
    self.splits, self.examples = splits, examples

  def __call__(self, spec: str):
    return _Concat([(_FolderSplit(self.examples[name]), start, stop) for name, start, stop in _absolute(self.splits, spec)])


class _TfdsSource:
  def __init__(self, builder):
    self.builder = builder

  def __call__(self, spec: str):
    data_source = self.builder.as_data_source(spec, decoders={'image': tfds.decode.SkipDecoding()})
    try:
      shards = self.builder.info.splits[spec].file_instructions
    except Exception:  # noqa: BLE001 (no shard list, e.g. TFDS's mock data: examples are named by position only)
      shards = ()
    return _Named(data_source, self.builder.name, shards, _reprepare(self.builder))


def _listed(field_value: str, path: str, keep) -> list:
  """The entries of folder ``path`` for which ``keep(entry)``, sorted by name. A folder or an entry that
  cannot be read (permissions, a symlink loop) is a ``ConfigError`` naming it."""
  try:
    with os.scandir(path) as entries:
      return sorted((e for e in entries if keep(e)), key=lambda e: e.name)
  except OSError as e:
    raise ConfigError(f'dataset.image_folder={field_value!r} is not accepted: expected a folder of <split>/<class>/ '
                      f'folders holding {", ".join(IMAGE_EXTENSIONS)} images ({e.filename or path} cannot be read '
                      f'({e.strerror or e}))') from None


def _subdirs(field_value: str, path: str) -> list[str]:
  """Sub-folders, sorted (hidden ones included: they are splits or classes, as in tfds.ImageFolder)."""
  return [e.name for e in _listed(field_value, path, lambda e: e.is_dir())]


def image_folder(root: str) -> Dataset:
  """root/split/class/image; labels numbered over the sorted class names of all splits. Images are
  the files (symlinks followed) named like images; dangling links and folders so named are not. A
  folder or link that cannot be read (permissions, a symlink loop) raises ``ConfigError`` naming it."""
  given, root = root, os.path.expanduser(root)
  is_image = lambda e: e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
  files = {split: {cls: [e.path for e in _listed(given, os.path.join(root, split, cls), is_image)]
                   for cls in _subdirs(given, os.path.join(root, split))}
           for split in _subdirs(given, root)}
  classes = sorted({cls for per_split in files.values() for cls in per_split})
  label = {cls: i for i, cls in enumerate(classes)}
  examples = {split: [(path, label[cls]) for cls, paths in per_split.items() for path in paths]
              for split, per_split in files.items()}
  template = lambda split: tfds.core.naming.ShardedFileTemplate(  # (TFDS's split arithmetic wants file names)
      data_dir=root, dataset_name='image_folder', split=split, filetype_suffix='image')
  splits = tfds.core.SplitDict([tfds.core.SplitInfo(name=s, shard_lengths=[len(e)], num_bytes=0,
                                                    filename_template=template(s)) for s, e in examples.items()])
  return Dataset(f'image folder {root}', splits, classes, _FolderSource(splits, examples), files)


def tfds_dataset(builder) -> Dataset:
  """A prepared TFDS builder's ArrayRecord data source (TFDS slices it: 'train[:10%]+test');
  images stay encoded (decoded by the pipeline)."""
  label = builder.info.features['label']
  return Dataset(builder.name, builder.info.splits, list(getattr(label, 'names', []) or []), _TfdsSource(builder))


def _damaged_info(name: str, data_dir, error: BaseException) -> ConfigError | None:
  """The one-line error for a TFDS builder that failed on a prepared dataset's ``dataset_info.json``
  (unreadable, truncated, not JSON, not TFDS's): ``error`` is what ``tfds.builder`` raised. None if the
  dataset's ``dataset_info.json`` files read as JSON and ``error`` does not speak of them."""
  base = name.split(':')[0]
  try:
    cls = tfds.builder_cls(base.split('/')[0])
  except Exception:  # noqa: BLE001
    return None
  root = os.path.expanduser(os.fspath(data_dir or tfds.core.constants.DATA_DIR))
  found = sorted(glob.glob(os.path.join(root, base, '*', 'dataset_info.json'))
                 + glob.glob(os.path.join(root, base, '*', '*', 'dataset_info.json')))
  found.sort(key=lambda f: os.path.basename(os.path.dirname(f)) != str(cls.VERSION))  # the builder's version first
  bad = why = None
  for path in found:
    try:
      with open(path) as f:
        json.load(f)
    except OSError as e:
      bad, why = path, f'cannot be read ({e.strerror or e})'
      break
    except ValueError as e:  # truncated, not JSON
      bad, why = path, f'is not valid JSON ({e})'
      break
  if bad is None and found and any(w in str(error) for w in ('DatasetInfo', 'dataset_info', 'JSON', 'proto')):
    reason = re.sub(r'^Failed to construct dataset "[^"]*", builder_kwargs "[^"]*": ', '', _first_line(error))
    bad, why = found[0], f'does not describe a prepared {base} ({reason[:200]})'
  if bad is None:
    return None
  return ConfigError(f'dataset.name={name!r}: {bad} {why}; '
                     + _reprepare_text(os.path.dirname(bad), base.split('/')[0], root, cls.MANUAL_DOWNLOAD_INSTRUCTIONS))


def _refuse_special_files(name: str, data_dir) -> None:
  """ConfigError for a ``data_dir`` that is not a directory, or a FIFO, device or socket among the
  dataset's files (TFDS would block opening a FIFO ``dataset_info.json``, and no signal reaches it):
  stat before anything is opened."""
  if data_dir is not None:
    p = os.path.expanduser(os.fspath(data_dir))
    if os.path.exists(p) and not os.path.isdir(p):
      raise ConfigError(f'dataset.data_dir={data_dir!r} is not accepted: it is not a directory (a TFDS data dir)')
  root = os.path.expanduser(os.fspath(data_dir) if data_dir is not None else tfds.core.constants.DATA_DIR)
  folder = os.path.join(root, name.split(':')[0].split('/')[0])
  for dirpath, _, files in os.walk(folder):
    for f in files:
      path = os.path.join(dirpath, f)
      try:
        mode = os.lstat(path).st_mode
      except OSError:
        continue
      if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise ConfigError(f'dataset {name}: {path} is not a regular file (a FIFO, device or socket) and would not be '
                          f'read; prepare the dataset again (python -m tpm_jax.data.prepare)')


def _tfds_call(fn, name: str, data_dir):
  """``fn()``, a call that builds ``name``'s TFDS builder; a damaged ``dataset_info.json`` is a ``ConfigError``."""
  _refuse_special_files(name, data_dir)
  try:
    return fn()
  except (ConfigError, tfds.core.registered.DatasetNotFoundError):
    raise
  except Exception as e:
    damaged = _damaged_info(name, data_dir, e)
    if damaged is None:
      raise
    raise damaged from None


def tfds_builder(name: str, data_dir=None):
  """``tfds.builder(name, data_dir=data_dir)``; a prepared dataset whose ``dataset_info.json`` cannot be
  read raises ``ConfigError``, one line naming the file and how to prepare it again."""
  return _tfds_call(lambda: tfds.builder(name, data_dir=data_dir), name, data_dir)


def get_dataset(dcfg) -> Dataset:
  """``config.dataset`` as a ``Dataset``: its image folder, or its TFDS dataset (prepared if needed).
  Damaged data (a folder that cannot be listed, an unreadable ``dataset_info.json``) is ``ConfigError``."""
  if dcfg.get('image_folder'):
    return image_folder(dcfg.image_folder)
  return tfds_dataset(_tfds_call(lambda: prepare(dcfg), dcfg.name, dcfg.get('data_dir')))


def known_split_size(dcfg, spec: str) -> int | None:
  """The examples split ``spec`` of ``config.dataset`` selects, where that is known without preparing or
  reading the data (an image folder's listing, a prepared TFDS dataset's recorded split sizes); None
  otherwise (not prepared, missing, damaged: a run's own start-up says why)."""
  try:
    if dcfg.get('image_folder'):
      return image_folder(dcfg.image_folder).num_examples(spec)
    builder = tfds_builder(dcfg.name, data_dir=dcfg.get('data_dir'))
    return int(builder.info.splits[spec].num_examples) if builder.info.splits and is_prepared(builder) else None
  except Exception:  # noqa: BLE001 (any reason it is not known: the question is only whether it is)
    return None

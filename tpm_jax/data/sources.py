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
"""
from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from tpm_jax.data.prepare import prepare

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')  # what an image folder holds (case-insensitive)


class DataError(ValueError):
  """An example cannot be read at run time. The message is one line naming the file."""


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


class _Named:
  """A TFDS data source's records, with the name of each example ('file_name' where the dataset
  records one, else its position)."""

  def __init__(self, data_source, where: str):
    self.data_source, self.where = data_source, where

  def __len__(self):
    return len(self.data_source)

  def __getitem__(self, i: int):
    record = self.data_source[int(i)]
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
    return _Named(data_source, self.builder.name)


def _subdirs(path: str) -> list[str]:
  """Sub-folders, sorted (hidden ones included: they are splits or classes, as in tfds.ImageFolder)."""
  return sorted(e.name for e in os.scandir(path) if e.is_dir())


def image_folder(root: str) -> Dataset:
  """root/split/class/image; labels numbered over the sorted class names of all splits. Images are
  the files (symlinks followed) named like images; dangling links and folders so named are not."""
  root = os.path.expanduser(root)
  files = {split: {cls: sorted(e.path for e in os.scandir(os.path.join(root, split, cls))
                               if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())
                   for cls in _subdirs(os.path.join(root, split))}
           for split in _subdirs(root)}
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


def get_dataset(dcfg) -> Dataset:
  """``config.dataset`` as a ``Dataset``: its image folder, or its TFDS dataset (prepared if needed)."""
  if dcfg.get('image_folder'):
    return image_folder(dcfg.image_folder)
  return tfds_dataset(prepare(dcfg))

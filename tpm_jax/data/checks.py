"""Start-up checks of ``config.dataset`` against the data itself (``validate_train_config`` runs them
before anything is written or compiled): split names and slices against the real split sizes, an
image folder's layout, and one image per class decoded as the pipeline decodes it.

Each failure is one ``ConfigError`` line naming the field or file and what is accepted. A TFDS
dataset not prepared yet has no recorded splits: the trainer checks its splits right after
preparing it (still before the workdir is written). A prepared one is also read: every shard of the
train and eval splits opened (``sources.check_readable``), and, where its label space is larger than
the model's, the labels of the first examples of both splits compared with ``model.num_classes``.
"""
from __future__ import annotations

import os

from tpm_jax.config import ConfigError, refuse
from tpm_jax.data import sources, transforms
from tpm_jax.data.input_pipeline import undecodable_reason
from tpm_jax.data.prepare import is_prepared
from tpm_jax.data.sources import IMAGE_EXTENSIONS, DataError, image_folder

SAMPLED_LABELS = 1000  # labels read per split where a TFDS dataset declares more classes than the model

SPLIT_FIELDS = ('train_split', 'eval_split')


def check_dataset(dcfg, *, num_classes: int | None = None) -> None:
  """``config.dataset`` against its data. ``num_classes``: the model's; an image folder must not have more classes."""
  if dcfg.get('image_folder'):
    builder = dataset = _check_image_folder(dcfg)
    where = f'image folder {os.path.expanduser(dcfg.image_folder)}'
  else:
    builder = sources.tfds_builder(dcfg.name, data_dir=dcfg.get('data_dir'))  # (a damaged dataset_info.json: one line)
    where = dcfg.name
    features = builder.info.features
    if 'image' not in features or 'label' not in features:
      refuse('dataset.name', dcfg.name, "an image classification dataset (features 'image' and 'label')")
    dataset = sources.tfds_dataset(builder) if builder.info.splits and is_prepared(builder) else None
  check_splits(builder, dcfg, where)
  if dataset is not None:
    for field in SPLIT_FIELDS:  # truncated or missing shards: one line naming the file, before anything is written
      sources.check_readable(dataset, dcfg.get(field))
  if num_classes is not None and dataset is not None and not dcfg.get('image_folder'):
    _check_labels(dataset, dcfg, builder.info.features['label'], num_classes)
  if num_classes is not None and dcfg.get('image_folder'):
    # (An image folder's classes are its class folders. A TFDS dataset declares its label space, which a run on
    # part of it may exceed (the tiny imagenet2012 of the tests: 4 of 1000 classes): _check_labels samples its labels.)
    names = builder.label_names
    if len(names) > num_classes:
      refuse('model.num_classes', num_classes, f'at least the {len(names)} classes of {where} '
            f'({", ".join(names[:3])}{", ..." if len(names) > 3 else ""})')


def _check_labels(dataset, dcfg, label_feature, num_classes: int) -> None:
  """Labels outside 0..num_classes-1 (a model with fewer classes than the data uses). Only where the dataset
  declares more classes than the model (else every label fits): the first ``SAMPLED_LABELS`` examples of the
  train and eval splits are read (TFDS shuffles examples when preparing: a sample of the labels)."""
  declared = getattr(label_feature, 'num_classes', None)
  if declared is not None and int(declared) <= num_classes:
    return
  for field in SPLIT_FIELDS:
    spec = dcfg.get(field)
    try:
      labels = sources.sample_labels(dataset, spec, SAMPLED_LABELS)
    except DataError as e:
      raise ConfigError(str(e)) from None
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
      refuse('model.num_classes', num_classes, f'more than the largest label of {dataset.where} {spec} (label '
            f'{max(bad, key=abs)} among its first {len(labels)} examples; the dataset declares '
            f'{declared if declared is not None else "an unknown number of"} classes)')


def check_splits(builder, dcfg, where: str, fields=SPLIT_FIELDS) -> None:
  """dataset.train_split and dataset.eval_split (or ``fields``): existing split names, slices within
  them, and at least one example each. Skipped where the sizes are not known (a TFDS dataset not
  prepared yet)."""
  splits = builder.info.splits
  sizes = {name: int(info.num_examples) for name, info in splits.items()}
  if not sizes:
    return
  for field in fields:
    spec = dcfg.get(field)
    listing = ', '.join(f'{k} ({v} examples)' for k, v in sorted(sizes.items()))
    accepted = f'a split of {where}: {listing}; or a slice of one, like {sorted(sizes)[0]}[:50%]'
    if not isinstance(spec, str) or not spec.strip():
      refuse(f'dataset.{field}', spec, accepted)
    try:
      n = int(splits[spec].num_examples)
    except (KeyError, ValueError, TypeError, AssertionError) as e:
      reason = str(e).strip().splitlines()[0].strip('"') if str(e).strip() else type(e).__name__
      if reason.startswith('Unknown split'):
        reason = ''
      refuse(f'dataset.{field}', spec, accepted + (f' ({reason})' if reason else ''))
    if n < 1:
      refuse(f'dataset.{field}', spec, accepted + f' ({spec} selects {max(n, 0)} examples)')


def _check_image_folder(dcfg):
  """root/split/class/image: the splits the config uses have class folders, each with at least one
  image that decodes. Returns its ``sources.Dataset``."""
  root = os.path.expanduser(dcfg.image_folder)
  layout = f'a folder of <split>/<class>/ folders holding {", ".join(IMAGE_EXTENSIONS)} images'
  if not os.path.isdir(root):
    refuse('dataset.image_folder', dcfg.image_folder, f'{layout} (no such folder)')
  dataset = image_folder(root)  # the listing the pipeline reads
  if not dataset.files:
    refuse('dataset.image_folder', dcfg.image_folder, f'{layout} ({root} has no split folders)')
  checked = set()
  for field in SPLIT_FIELDS:
    spec = dcfg.get(field)
    names = [part.split('[')[0].strip() for part in str(spec).split('+')]
    for name in names:
      if name in dataset.files and name not in checked:
        checked.add(name)
        _check_folder_split(dcfg.image_folder, os.path.join(root, name), dataset.files[name], layout)
  return dataset


def _check_folder_split(field_value, split_dir: str, classes: dict, layout: str) -> None:
  """``classes``: the split's {class: [image paths]}; each class's first image is decoded."""
  if not classes:
    refuse('dataset.image_folder', field_value, f'{layout} ({split_dir} has no class folders)')
  for cls, images in classes.items():
    if not images:
      refuse('dataset.image_folder', field_value, f'{layout} ({os.path.join(split_dir, cls)} has no images)')
    path = images[0]
    try:
      with open(path, 'rb') as f:
        encoded = f.read()
    except OSError as e:
      raise ConfigError(f'dataset.image_folder={field_value!r} is not accepted: {path} cannot be read '
                        f'({e.strerror or e})') from None
    reason = undecodable_reason(encoded) or _decode_refusal(encoded)
    if reason:
      refuse('dataset.image_folder', field_value,
            f'decodable {", ".join(IMAGE_EXTENSIONS)} images ({path}: not a decodable image ({reason}))')


def _decode_refusal(encoded: bytes) -> str | None:
  """Why the pipeline's decoder (``transforms.decode``) refuses an image PIL decodes (a 32-bit integer or
  float image, whose range is not known), or None."""
  try:
    transforms.decode(encoded, 3)
  except DataError as e:
    return str(e)
  return None

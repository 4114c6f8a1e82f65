"""TFDS + tf.data input pipeline. Images leave the host as uint8; normalisation, mixup and cutmix
happen on the device (``tpm_jax.augment``).

Any TFDS image-classification dataset by name (``imagenet2012`` with ``manual_dir``,
``fashion_mnist``, ``cifar10``, ...) or a local folder in ``tfds.ImageFolder`` layout
(root/split/class/*.jpg). Each process reads its own shard (``tfds.split_for_jax_process``).
Every random choice is a stateless op seeded by (seed, example position), so a pipeline is
deterministic given its seed and can be resumed by position.

An image that cannot be decoded at run time stops the iterators with ``DataError``, one line
naming the file (found by decoding the failing batch's examples again, one by one).
"""
from __future__ import annotations

import io
import math
import os
import re

from PIL import Image, UnidentifiedImageError

from tpm_jax.data.local_sources import prepare_fashion_mnist

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')  # what tfds.ImageFolder reads (case-insensitive)


class DataError(ValueError):
  """An example cannot be read at run time. The message is one line naming the file."""


def _tf():
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass
  return tf


def get_builder(dcfg):
  """The TFDS builder for ``config.dataset``, prepared (from manual_dir where needed)."""
  import tensorflow_datasets as tfds
  if dcfg.get('image_folder'):
    return tfds.ImageFolder(os.path.expanduser(dcfg.image_folder))
  if dcfg.name == 'fashion_mnist':
    prepare_fashion_mnist(dcfg.get('data_dir'))
  builder = tfds.builder(dcfg.name, data_dir=dcfg.get('data_dir'))
  if not builder.is_prepared():
    manual = dcfg.get('manual_dir')
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual) if manual else None))
  return builder


def num_examples(builder, split: str) -> int:
  try:
    return int(builder.info.splits[split].num_examples)
  except KeyError:  # no recorded split sizes (e.g. tfds.testing.mock_data): count
    _tf()  # TensorFlow kept off the accelerators before it runs
    ds = builder.as_dataset(split=split, decoders={'image': tfds_skip()})
    n = int(ds.cardinality())
    return n if n >= 0 else int(ds.reduce(0, lambda c, _: c + 1))


def tfds_skip():
  import tensorflow_datasets as tfds
  return tfds.decode.SkipDecoding()


def _folder_split(builder, split: str):
  """An ImageFolder split with TFDS's slicing ('test[:100]', 'train[:50%]+test'), which
  tfds.ImageFolder itself does not do: each named split read whole, then skip/take."""
  import tensorflow_datasets as tfds
  out = None
  for part in tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits):
    ds = builder.as_dataset(split=part.splitname, shuffle_files=False, decoders={'image': tfds_skip()})
    n = int(builder.info.splits[part.splitname].num_examples)
    start, stop = part.from_ or 0, n if part.to is None else part.to
    if (start, stop) != (0, n):
      ds = ds.skip(start).take(max(0, stop - start))
    out = ds if out is None else out.concatenate(ds)
  return out


def _process_split(builder, split: str, process_index: int, process_count: int):
  """(dataset of this process's examples, their count). TFDS builders read their shard of the
  files (``tfds.split_for_jax_process``); an ImageFolder, which has no sub-splits, is sharded by
  example. Images stay encoded (decoded after cropping)."""
  import tensorflow_datasets as tfds
  if isinstance(builder, tfds.ImageFolder):
    n = num_examples(builder, split)
    ds = _folder_split(builder, split)
    return ds.shard(process_count, process_index), n // process_count + int(process_index < n % process_count)
  sub = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
  ds = builder.as_dataset(split=sub, shuffle_files=False, decoders={'image': tfds_skip()})
  return ds, num_examples(builder, sub)


def _decode(tf, data, channels):
  image = data['image']
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=0, expand_animations=False)
  image.set_shape([None, None, None])
  # 1 channel: grayscale, 2: grayscale + alpha, 3: RGB, 4: RGBA; alpha is dropped.
  gray = tf.shape(image)[-1] < 3
  if channels == 3:
    image = tf.cond(gray, lambda: tf.image.grayscale_to_rgb(image[..., :1]), lambda: image[..., :3])
    image.set_shape([None, None, 3])
  else:
    image = tf.cond(gray, lambda: image[..., :1], lambda: tf.image.rgb_to_grayscale(image[..., :3]))
    image.set_shape([None, None, 1])
  return image


def _to_uint8(tf, image):
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def parse_randaugment(spec: str) -> dict | None:
  """timm's config string ('rand-m9-mstd0.5-inc1', 'rand-m9-n2') -> randaugment() kwargs."""
  if not spec:
    return None
  parts = spec.split('-')
  if parts[0] != 'rand':
    raise ValueError(f'aug.randaugment={spec!r}: expected a timm RandAugment string like rand-m9-mstd0.5-inc1, or empty')
  kw = dict(num_layers=2, magnitude=9, magnitude_std=0.0, increasing=False)
  for part in parts[1:]:
    if part.startswith('mstd'):
      kw['magnitude_std'] = float(part[4:])
    elif part.startswith('inc'):
      kw['increasing'] = bool(int(part[3:]))
    elif part.startswith('m'):
      kw['magnitude'] = int(part[1:])
    elif part.startswith('n'):
      kw['num_layers'] = int(part[1:])
    else:
      raise ValueError(f'aug.randaugment={spec!r}: unknown part {part!r}')
  return kw


def train_preprocess(config, channels):
  """DeiT training augmentation on one example: random resized crop (bicubic), flip, RandAugment,
  random erasing; uint8 throughout."""
  from tpm_jax.data.randaugment import randaugment, random_erasing
  tf = _tf()
  size = config.model.img_size
  aug = config.aug
  ra = parse_randaugment(aug.randaugment)
  fill = tuple(int(round(255 * m)) for m in aug.mean)

  def fn(index, data):
    seed = tf.stack([tf.cast(config.seed, tf.int64), index])
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = _decode(tf, data, channels)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        area_range=tuple(aug.crop_scale), aspect_ratio_range=(3 / 4, 4 / 3), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, (size, size), method='bicubic')
    if aug.hflip:
      image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    image = _to_uint8(tf, image)
    if ra and channels == 3:
      image = randaugment(image, seeds[2], fill=fill, **ra)
    if aug.random_erasing > 0:
      image = random_erasing(image, seeds[3], probability=aug.random_erasing)
    return {'image': image, 'label': tf.cast(data['label'], tf.int32)}
  return fn


def eval_preprocess(config, channels):
  """Resize the shorter side to img_size / eval_crop_pct (bicubic), centre crop img_size."""
  tf = _tf()
  size = config.model.img_size
  resize_to = int(math.floor(size / config.aug.eval_crop_pct))

  def fn(data):
    image = tf.cast(_decode(tf, data, channels), tf.float32)
    h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    scale = resize_to / tf.minimum(h, w)
    new = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    image = tf.image.resize(image, new, method='bicubic')
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    image = image[top:top + size, left:left + size]
    image.set_shape([size, size, channels])
    return {'image': _to_uint8(tf, image), 'label': tf.cast(data['label'], tf.int32)}
  return fn


def _options(tf):
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(2, os.cpu_count() or 2)
  return options


def train_iterator(config, builder, *, local_batch: int, process_index: int = 0, process_count: int = 1,
                   start_batch: int = 0, channels: int = 3):
  """Endless iterator of {'image': uint8 (local_batch, H, W, C), 'label': int32} for this process.
  ``start_batch`` skips that many batches (resume at the same position of the same sequence)."""
  tf = _tf()
  split = config.dataset.train_split

  def source():  # (position, encoded example), endless and shuffled: the same sequence every time
    ds, _ = _process_split(builder, split, process_index, process_count)
    ds = ds.repeat().shuffle(config.dataset.shuffle_buffer, seed=config.seed * 1009 + process_index,
                             reshuffle_each_iteration=True)
    return ds.enumerate()

  ds = source().map(train_preprocess(config, channels), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True)
  if start_batch:
    ds = ds.skip(start_batch)
  ds = ds.prefetch(2).with_options(_options(tf))
  examples_of = lambda i: source().skip((start_batch + i) * local_batch).take(local_batch)
  return _naming_bad_files(ds.as_numpy_iterator(), examples_of, channels, _where(config, split))


def eval_batches(config, builder, split: str, *, local_batch: int, process_index: int = 0, process_count: int = 1,
                 channels: int = 3):
  """The split once, as fixed-size batches with a 'mask' (1 for real examples, 0 for padding);
  every process yields the same number of batches, so every example counts exactly once."""
  tf = _tf()
  per_process = [_process_split(builder, split, i, process_count)[1] for i in range(process_count)]
  n_batches = max(1, math.ceil(max(per_process) / local_batch))
  ds, _ = _process_split(builder, split, process_index, process_count)
  ds = ds.map(eval_preprocess(config, channels), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.map(lambda d: dict(d, mask=tf.constant(1, tf.int32)))
  size = config.model.img_size
  pad = tf.data.Dataset.from_tensors({'image': tf.zeros([size, size, channels], tf.uint8),
                                      'label': tf.constant(0, tf.int32), 'mask': tf.constant(0, tf.int32)})
  ds = ds.concatenate(pad.repeat()).take(n_batches * local_batch)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(2).with_options(_options(tf))
  examples_of = lambda i: _process_split(builder, split, process_index, process_count)[0].enumerate().skip(
      i * local_batch).take(local_batch)
  return _naming_bad_files(ds.as_numpy_iterator(), examples_of, channels, _where(config, split))


# ----------------------------------------------------------------------------------------------
# Run-time read errors -> DataError naming the file
# ----------------------------------------------------------------------------------------------
def _where(config, split: str) -> str:
  d = config.dataset
  return f'{d.image_folder if d.get("image_folder") else d.name} split {split!r}'


def _tf_reason(e) -> str:
  """TensorFlow's error message, first line, without its op and node decorations."""
  text = (getattr(e, 'message', None) or str(e)).strip()
  msg = text.splitlines()[0] if text else ''
  msg = re.sub(r'\{\{[^}]*\}\}\s*', '', msg)
  return re.sub(r'\s*(\[Op:|\[\[).*$', '', msg).strip() or type(e).__name__


def undecodable_reason(encoded: bytes, channels: int = 3) -> str | None:
  """Why ``encoded`` cannot be an image of the pipeline, or None. PIL looks first and its plain
  verdicts (no known format, truncated) are taken, quietly; anything else is decoded as the
  pipeline decodes (TensorFlow), which has the last word."""
  if not encoded:
    return 'an empty file'
  try:
    with Image.open(io.BytesIO(encoded)) as im:
      im.load()
  except UnidentifiedImageError:
    return 'not JPEG, PNG, GIF or BMP data'
  except OSError as e:
    if 'truncated' in str(e).lower():  # 'image file is truncated (n bytes not processed)', 'Truncated File Read'
      return 'the file is truncated'
  except Exception:  # noqa: BLE001 (PIL is only a first look; TensorFlow decides below)
    pass
  tf = _tf()
  try:
    _decode(tf, {'image': tf.constant(encoded)}, channels)
  except tf.errors.OpError as e:
    return _tf_reason(e)
  return None


def _example_name(position: int, example: dict, where: str) -> str:
  """An ImageFolder example's path; else the file name TFDS recorded, or its position."""
  text = lambda v: v.decode('utf-8', 'replace') if isinstance(v, bytes) else str(v)
  if 'image/filename' in example:
    return text(example['image/filename'])
  if 'file_name' in example:
    return f'{where} file {text(example["file_name"])}'
  return f'{where} example {position}'


def _naming_bad_files(it, examples_of, channels: int, where: str):
  """Yield ``it``'s batches; an example that cannot be read or decoded becomes one ``DataError``
  naming its file. ``examples_of(i)``: batch i's (position, encoded example) pairs, re-read (no
  decoding) to find the culprit, only after a failure."""
  tf = _tf()
  i = 0
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf.errors.NotFoundError as e:  # a file gone since the start (the message names it)
      raise DataError(_tf_reason(e)) from None
    except tf.errors.InvalidArgumentError as e:
      bad = None
      try:
        for position, example in examples_of(i).as_numpy_iterator():
          reason = undecodable_reason(example['image'], channels)
          if reason:
            bad = f'{_example_name(position, example, where)}: not a decodable image ({reason})'
            break
      except tf.errors.OpError:
        pass
      raise DataError(bad or f'{where}: an example could not be read ({_tf_reason(e)})') from None
    yield batch
    i += 1

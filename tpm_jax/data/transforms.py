"""DeiT's host-side image transforms: timm 1.0's ``transforms_imagenet_train`` / ``transforms_imagenet_eval`` on
PIL images, without TensorFlow or torch.

Every random draw goes through a ``Randomness``, with the calls timm and torchvision make, in their order, so that
drawing from timm's generators (tests/test_transforms.py) gives timm's pixels. Random erasing draws only its box
here; ``tpm_jax.augment.random_erasing`` fills it on the device, after normalisation. The transforms are small
classes, so they pickle (Grain sends them to its worker processes).
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from tpm_jax.data.randaugment import parse_randaugment, rand_augment


class Randomness:
  """Every random draw DeiT's augmentation makes, named as timm/torchvision make them."""

  def __init__(self, generator: np.random.Generator):
    self.generator = generator

  def random(self) -> float:  # random.random()
    return float(self.generator.random())

  def uniform(self, a, b) -> float:  # random.uniform
    return a + (b - a) * self.random()

  def gauss(self, mu, sigma) -> float:  # random.gauss
    return mu + sigma * float(self.generator.standard_normal())

  def randint(self, a, b) -> int:  # random.randint: both ends inclusive
    return int(self.generator.integers(a, b, endpoint=True))

  def choice(self, n: int, size: int, replace: bool, p=None) -> np.ndarray:  # np.random.choice(range(n), ...)
    return self.generator.choice(n, size, replace=replace, p=p)

  def flip(self, p: float) -> bool:  # torchvision's torch.rand(1) < p
    return self.random() < p


def example_randomness(seed: int, *position: int) -> Randomness:
  """The draws for one example: a pure function of (seed, position), e.g. (seed, epoch, index)."""
  return Randomness(np.random.default_rng([seed, *position]))


class DataError(ValueError):
  """An example cannot be read at run time. The message is one line naming the file (``decode``'s own
  message names the image's kind; the pipeline adds the file). Re-exported by ``sources`` and ``input_pipeline``."""


def _eight_bit(img: Image.Image) -> Image.Image:
  """``img`` with 8-bit samples. PIL's 16-bit grayscale ('I;16', 'I;16B', 'I;16L', 'I;16N'; and 'I' for a
  PNG, which holds at most 16 bits, as Pillow before 10 opened them) becomes 'L' with each value >> 8:
  ``convert('L')`` would clip it at 255 (a 0..65535 ramp comes out white). (16-bit RGB and RGBA PNGs are
  opened by PIL as 8-bit 'RGB' / 'RGBA', high bytes kept.) A 32-bit integer ('I', from TIFF) or float ('F')
  image has no range that says which value is white: refused with ``DataError``."""
  mode = img.mode
  if mode.startswith('I;16') or mode == 'I' and img.format == 'PNG':
    return Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8), 'L')
  if mode in ('I', 'F') or mode.startswith(('I;', 'F;')):
    kind = 'floating-point' if mode.startswith('F') else '32-bit integer'
    raise DataError(f'a {kind} image (PIL mode {mode}{f", {img.format}" if img.format else ""}) has no known '
                    'value range; accepted: 1-, 8- or 16-bit grayscale, RGB or RGBA images (PNG or JPEG)')
  return img


def decode(data, channels: int) -> Image.Image:
  """Encoded bytes (any format PIL reads) or a uint8 array (H, W) / (H, W, C) -> an 'RGB' (channels=3) or 'L'
  (channels=1) image, like timm's ``img.convert('RGB')`` (alpha dropped). 16-bit grayscale is scaled to 8 bits
  (value >> 8); 32-bit integer and float images raise ``DataError`` (``_eight_bit``). The one decoder of the
  train and eval transforms."""
  if isinstance(data, np.ndarray):
    if data.dtype != np.uint8:
      raise ValueError(f'decode: expected a uint8 image array, got {data.dtype}')
    img = Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
  else:
    img = Image.open(io.BytesIO(bytes(data)))
  return _eight_bit(img).convert('RGB' if channels == 3 else 'L')


def _resize(img, size, interpolation):
  """torchvision's F.resize of a PIL image to (width, height): unchanged when already that size."""
  return img if img.size == tuple(size) else img.resize(tuple(size), interpolation)


def _array(img) -> np.ndarray:
  x = np.asarray(img, np.uint8)
  return x[..., None] if x.ndim == 2 else x


def random_resized_crop(img, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), *, rnd: Randomness,
                        interpolation=Image.BICUBIC) -> Image.Image:
  """timm's RandomResizedCropAndInterpolation: ``get_params`` (10 tries of area and log-ratio, then the centre
  crop of the whole image clamped to ``ratio``), then torchvision's ``resized_crop``."""
  img_w, img_h = img.size
  area = img_w * img_h
  for _ in range(10):
    target_area = rnd.uniform(*scale) * area
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect_ratio = math.exp(rnd.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if w <= img_w and h <= img_h:
      top = rnd.randint(0, img_h - h)
      left = rnd.randint(0, img_w - w)
      break
  else:  # fallback: central crop
    in_ratio = img_w / img_h
    if in_ratio < min(ratio):
      w, h = img_w, int(round(img_w / min(ratio)))
    elif in_ratio > max(ratio):
      w, h = int(round(img_h * max(ratio))), img_h
    else:
      w, h = img_w, img_h
    top, left = (img_h - h) // 2, (img_w - w) // 2
  return _resize(img.crop((left, top, left + w, top + h)), (size, size), interpolation)


def center_crop(img, size: int) -> Image.Image:
  """torchvision's CenterCrop: zero padding first where the image is smaller, offsets rounded."""
  w, h = img.size
  if size > w or size > h:
    padded = Image.new(img.mode, (max(w, size), max(h, size)))
    padded.paste(img, ((size - w) // 2 if size > w else 0, (size - h) // 2 if size > h else 0))
    img, (w, h) = padded, padded.size
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def erasing_box(rnd: Randomness, height: int, width: int, probability: float, min_area=0.02, max_area=1 / 3,
                min_aspect=0.3) -> np.ndarray:
  """The box timm's ``RandomErasing(probability, mode='pixel', max_count=1)._erase`` fills: int32 [top, left,
  height, width], all 0 when it erases nothing."""
  if rnd.random() > probability:
    return np.zeros(4, np.int32)
  area = height * width
  log_aspect_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
  for _ in range(10):
    target_area = rnd.uniform(min_area, max_area) * area
    aspect_ratio = math.exp(rnd.uniform(*log_aspect_ratio))
    h = int(round(math.sqrt(target_area * aspect_ratio)))
    w = int(round(math.sqrt(target_area / aspect_ratio)))
    if w < width and h < height:
      top = rnd.randint(0, height - h)
      left = rnd.randint(0, width - w)
      return np.array([top, left, h, w], np.int32)
  return np.zeros(4, np.int32)


class TrainTransform:
  """timm's ``transforms_imagenet_train`` for DeiT up to ToTensor: random resized crop (bicubic), horizontal flip,
  RandAugment, and the random-erasing box. ``(data, rnd) -> dict(image=uint8 (S, S, C), erase=int32 [4])``."""

  def __init__(self, aug, img_size: int, channels: int):
    self.img_size, self.channels = img_size, channels
    self.scale = tuple(aug.crop_scale)
    self.hflip = 0.5 if aug.hflip else 0.0
    ra = parse_randaugment(aug.randaugment)
    self.randaugment = None
    if ra and channels == 3:  # timm's aa_params
      fill = tuple(min(255, round(255 * m)) for m in aug.mean)
      self.randaugment = dict(ra, fill=fill, translate_const=int(img_size * 0.45), interpolation=Image.BICUBIC)
    self.random_erasing = float(aug.random_erasing)

  def __call__(self, data, rnd: Randomness) -> dict:
    img = random_resized_crop(decode(data, self.channels), self.img_size, self.scale, rnd=rnd)
    if self.hflip > 0 and rnd.flip(self.hflip):
      img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if self.randaugment:
      img = rand_augment(img, rnd, **self.randaugment)
    erase = np.zeros(4, np.int32)
    if self.random_erasing > 0:
      erase = erasing_box(rnd, self.img_size, self.img_size, self.random_erasing)
    return dict(image=_array(img), erase=erase)


class EvalTransform:
  """timm's ``transforms_imagenet_eval``: resize the shorter side to floor(img_size / eval_crop_pct) (bicubic),
  centre crop img_size. ``data -> uint8 (S, S, C)``."""

  def __init__(self, aug, img_size: int, channels: int):
    self.img_size, self.channels = img_size, channels
    self.resize_to = math.floor(img_size / aug.eval_crop_pct)

  def __call__(self, data) -> np.ndarray:
    img = decode(data, self.channels)
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = self.resize_to, int(self.resize_to * long / short)  # torchvision's Resize(int)
    img = _resize(img, (new_short, new_long) if w <= h else (new_long, new_short), Image.BICUBIC)
    return _array(center_crop(img, self.img_size))


def train_transform(aug, img_size: int, channels: int) -> TrainTransform:
  return TrainTransform(aug, img_size, channels)


def eval_transform(aug, img_size: int, channels: int) -> EvalTransform:
  return EvalTransform(aug, img_size, channels)

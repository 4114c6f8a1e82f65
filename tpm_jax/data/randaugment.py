"""timm's RandAugment (``rand-m9-n2``) and RandomErasing ('pixel' mode) as TensorFlow graph ops.

Both functions take a uint8 (H, W, 3) image and a shape-[2] integer seed for TF's stateless
random ops, return a uint8 image of the same shape, are deterministic given the seed and contain
no Python control flow on tensor values, so they can run inside ``tf.data.Dataset.map``.

The individual ops are public (``auto_contrast``, ``equalize``, ``invert``, ``rotate``,
``posterize``, ``solarize``, ``solarize_add``, ``color``, ``contrast``, ``brightness``,
``sharpness``, ``shear_x``, ``shear_y``, ``translate_x_rel``, ``translate_y_rel``; ``apply_op`` adds
timm's level functions) and reproduce the PIL calls timm makes (``timm/data/auto_augment.py``,
timm 1.0): the point ops PIL's look-up tables, the enhance ops ``ImageEnhance`` (RGB -> L
conversion, SMOOTH filter, ``Image.blend`` in float32 with truncation), the geometric ops PIL's
affine transform (pixel centres at +0.5, float64 coordinates, a source point outside the image gets
``fill``, one inside is sampled with edge clamping and truncated). On test images they agree with
Pillow 13 pixel for pixel.

Deviations from timm / PIL:

* Geometric ops sample bilinearly (default) or with nearest neighbour; timm picks bilinear or
  bicubic at random per call, or uses the training interpolation (bicubic for DeiT) when
  ``interpolation`` is in its hparams. There is no bicubic here.
* ``fill`` defaults to 128 (timm's ``_FILL``); timm's ``create_transform`` passes the ImageNet mean
  in pixels, (124, 116, 104): pass ``fill=(124, 116, 104)`` for exactly that.
* Rotation matrices are rounded to 15 decimals like PIL's, but in binary (1e15 scaling), and
  rotations by multiples of 90 degrees are not routed to PIL's transpose; both only matter for
  source points that land exactly on a pixel boundary.
* Posterize with 0 bits (timm's non-increasing Posterize below m=2.5, or PosterizeIncreasing at
  m=10) gives black (a zero mask); Pillow 13's ``ImageOps.posterize`` raises for 0 bits.
* RandomErasing fills the rectangle with per-pixel uniform uint8 noise rather than standard
  normal noise in the normalised space (the image is still uint8 here), and draws its random
  numbers from TF's stateless generators (so it is deterministic per seed, not timm's stream).

The magnitude semantics are those of ``rand-m9-n2``, i.e. timm's ``_RAND_TRANSFORMS`` (at m=9:
Posterize keeps 3 bits, Solarize threshold 230, SolarizeAdd +99, enhance factor 1.72, Rotate
+-27 degrees, Shear +-0.27, Translate +-0.405 of the size). ``increasing=True`` selects
``_RAND_INCREASING_TRANSFORMS`` (timm ``inc1``, as in DeiT's ``rand-m9-mstd0.5-inc1``): Posterize
keeps ``4 - int(4 m / 10)`` bits, Solarize threshold ``256 - int(256 m / 10)``, enhance factors
``max(0.1, 1 +- 0.9 m / 10)``. ``magnitude_std`` mirrors timm's ``mstd`` (Gaussian noise on the
magnitude per applied op, ``inf`` = uniform in [0, m]), clamped to [0, 10].
"""
from __future__ import annotations

import math

import tensorflow as tf

_LEVEL_DENOM = 10.0

# No Python control flow depends on tensor values here, so autograph (which tf.data.Dataset.map and
# tf.function apply by default) has nothing to convert; skipping it saves seconds of tracing.
_no_autograph = tf.autograph.experimental.do_not_convert

RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
    'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
    'TranslateYRel')
GEOMETRIC_TRANSFORMS = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


# ------------------------------------------------------------------------------------------------
# helpers


def _seed(seed):
  seed = tf.convert_to_tensor(seed)
  if seed.dtype not in (tf.int32, tf.int64):
    seed = tf.cast(seed, tf.int64)
  return seed


def _f64(v):
  """float64 tensor; Python floats are converted directly (tf.cast would go through float32)."""
  if isinstance(v, (tf.Tensor, tf.Variable)):
    return tf.cast(v, tf.float64)
  return tf.constant(v, tf.float64)


def _hw(image):
  """(H, W) as Python ints when static, else as int32 scalars."""
  h, w = image.shape[0], image.shape[1]
  dyn = tf.shape(image)
  return (h if h is not None else dyn[0]), (w if w is not None else dyn[1])


def _apply_lut(image, lut):
  """Per-channel look-up table ``lut`` (3, 256) int32, values clipped to [0, 255]."""
  lut = tf.clip_by_value(tf.cast(lut, tf.int32), 0, 255)
  idx = tf.cast(image, tf.int32) + tf.constant([0, 256, 512], tf.int32)
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), idx), tf.uint8)


def _to_l(image):
  """PIL's RGB -> L conversion: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, int32 (H, W)."""
  x = tf.cast(image, tf.int32)
  l = x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000
  return tf.bitwise.right_shift(l, 16)


def _blend(degenerate, image, factor):
  """PIL ``Image.blend(degenerate, image, factor)``: float32, clipped, truncated to uint8."""
  factor = tf.cast(factor, tf.float32)
  d = tf.cast(degenerate, tf.float32)
  out = d + factor * (tf.cast(image, tf.float32) - d)
  return tf.cast(tf.floor(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)


def _affine(image, matrix, fill=128, interpolation='bilinear'):
  """PIL ``img.transform(size, Image.AFFINE, matrix, resample, fillcolor=fill)``.

  ``matrix`` = (a, b, c, d, e, f): an output pixel centre (x, y) (PIL coordinates, centres at
  +0.5) samples the input at (a x + b y + c, d x + e y + f). Points outside [0, W) x [0, H) get
  ``fill``; points inside are interpolated with edge clamping and truncated to uint8, all in
  float64, as PIL's ``affine_transform`` / ``bilinear_filter32RGB`` / ``nearest_filter32`` do.
  """
  a, b, c, d, e, f = [_f64(v) for v in matrix]
  h, w = _hw(image)
  hi, wi = tf.cast(h, tf.int32), tf.cast(w, tf.int32)
  hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
  ys = tf.range(hf, dtype=tf.float64)[:, None] + 0.5
  xs = tf.range(wf, dtype=tf.float64)[None, :] + 0.5
  src_x = a * xs + b * ys + c  # (H, W), PIL coordinates
  src_y = d * xs + e * ys + f
  inside = (src_x >= 0.0) & (src_x < wf) & (src_y >= 0.0) & (src_y < hf)
  flat = tf.reshape(tf.cast(image, tf.float64), [-1, 3])

  def pixels(yi, xi):
    yi = tf.clip_by_value(yi, 0, hi - 1)
    xi = tf.clip_by_value(xi, 0, wi - 1)
    return tf.gather(flat, yi * wi + xi)  # (H, W, 3)

  if interpolation == 'nearest':
    sampled = pixels(tf.cast(tf.floor(src_y), tf.int32), tf.cast(tf.floor(src_x), tf.int32))
  elif interpolation == 'bilinear':
    xm, ym = src_x - 0.5, src_y - 0.5
    x0f, y0f = tf.floor(xm), tf.floor(ym)
    dx, dy = (xm - x0f)[..., None], (ym - y0f)[..., None]
    x0, y0 = tf.cast(x0f, tf.int32), tf.cast(y0f, tf.int32)
    top = pixels(y0, x0) + (pixels(y0, x0 + 1) - pixels(y0, x0)) * dx
    bottom = pixels(y0 + 1, x0) + (pixels(y0 + 1, x0 + 1) - pixels(y0 + 1, x0)) * dx
    sampled = top + (bottom - top) * dy
  else:
    raise ValueError(f'interpolation must be bilinear or nearest, not {interpolation!r}')
  fill = tf.broadcast_to(tf.cast(tf.convert_to_tensor(fill), tf.float64), [3])
  out = tf.where(inside[..., None], sampled, fill)
  out = tf.cast(tf.floor(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)  # PIL: (UINT8) v
  out.set_shape(image.shape)
  return out


# ------------------------------------------------------------------------------------------------
# the ops (PIL semantics, as timm calls them)


def auto_contrast(image):
  """``ImageOps.autocontrast(img)`` (cutoff 0): per channel, stretch [min, max] to [0, 255]."""
  x = tf.reshape(tf.cast(image, tf.int32), [-1, 3])
  lo, hi = tf.reduce_min(x, axis=0), tf.reduce_max(x, axis=0)  # (3,)
  lo64, hi64 = tf.cast(lo, tf.float64)[:, None], tf.cast(hi, tf.float64)[:, None]
  scale = 255.0 / tf.maximum(hi64 - lo64, 1.0)
  offset = -lo64 * scale
  ix = tf.range(256, dtype=tf.float64)[None, :]
  lut = tf.cast(ix * scale + offset, tf.int32)  # int(): truncation toward zero
  identity = tf.tile(tf.range(256, dtype=tf.int32)[None], [3, 1])
  lut = tf.where((hi <= lo)[:, None], identity, lut)
  return _apply_lut(image, lut)


def equalize(image):
  """``ImageOps.equalize(img)``: PIL's per-channel histogram equalisation table."""
  x = tf.reshape(tf.cast(image, tf.int32), [-1, 3]) + tf.constant([0, 256, 512], tf.int32)
  hist = tf.reshape(tf.math.bincount(tf.reshape(x, [-1]), minlength=768, maxlength=768,
                                     dtype=tf.int64), [3, 256])
  nonzero = hist > 0
  num_nonzero = tf.reduce_sum(tf.cast(nonzero, tf.int32), axis=1)
  last = 255 - tf.argmax(tf.cast(nonzero[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
  last_count = tf.gather(hist, last, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last_count) // 255  # (3,)
  safe_step = tf.maximum(step, 1)[:, None]
  lut = (step[:, None] // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step
  identity = tf.tile(tf.range(256, dtype=tf.int64)[None], [3, 1])
  lut = tf.where(((num_nonzero <= 1) | (step == 0))[:, None], identity, lut)
  return _apply_lut(image, lut)


def invert(image):
  """``ImageOps.invert(img)``."""
  return 255 - tf.convert_to_tensor(image, tf.uint8)


def posterize(image, bits):
  """``ImageOps.posterize(img, bits)`` (keep the ``bits`` most significant bits; >= 8: identity)."""
  bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  mask = 255 - (tf.bitwise.left_shift(tf.constant(1, tf.int32), 8 - bits) - 1)
  return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.uint8)


def solarize(image, thresh):
  """``ImageOps.solarize(img, thresh)``: invert every value >= ``thresh``."""
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.where(x < tf.cast(thresh, tf.int32), x, 255 - x), tf.uint8)


def solarize_add(image, add, thresh=128):
  """timm's ``solarize_add``: values < ``thresh`` get ``min(255, v + add)``."""
  x = tf.cast(image, tf.int32)
  added = tf.minimum(x + tf.cast(add, tf.int32), 255)
  return tf.cast(tf.where(x < tf.cast(thresh, tf.int32), added, x), tf.uint8)


def color(image, factor):
  """``ImageEnhance.Color(img).enhance(factor)``: blend with the greyscale image."""
  grey = tf.cast(_to_l(image), tf.uint8)
  return _blend(tf.stack([grey] * 3, axis=-1), image, factor)


def contrast(image, factor):
  """``ImageEnhance.Contrast(img).enhance(factor)``: blend with the mean grey level."""
  mean = tf.reduce_mean(tf.cast(_to_l(image), tf.float64))
  grey = tf.floor(mean + 0.5)
  return _blend(tf.fill(tf.shape(image), tf.cast(grey, tf.float32)), image, factor)


def brightness(image, factor):
  """``ImageEnhance.Brightness(img).enhance(factor)``: blend with black."""
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """``ImageEnhance.Sharpness(img).enhance(factor)``: blend with PIL's SMOOTH filter
  ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, the one-pixel border kept from the input)."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  x = tf.cast(image, tf.float32)
  smooth = tf.nn.depthwise_conv2d(x[None], kernel, strides=[1, 1, 1, 1], padding='SAME')[0]
  smooth = tf.round(tf.clip_by_value(smooth, 0.0, 255.0))
  h, w = _hw(image)
  rows = tf.range(h)[:, None]
  cols = tf.range(w)[None, :]
  interior = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
  degenerate = tf.where(interior[..., None], smooth, x)
  return _blend(degenerate, image, factor)


def _round15(v):
  return tf.round(v * 1e15) / 1e15


def rotate(image, degrees, fill=128, interpolation='bilinear'):
  """``img.rotate(degrees, fillcolor=fill)``: counter-clockwise about the image centre."""
  h, w = _hw(image)
  cx, cy = tf.cast(w, tf.float64) / 2.0, tf.cast(h, tf.float64) / 2.0
  angle = -_f64(degrees) * (math.pi / 180.0)
  cos, sin = _round15(tf.cos(angle)), _round15(tf.sin(angle))  # PIL rounds to 15 decimals
  a, b, d, e = cos, sin, -sin, cos
  c = a * -cx + b * -cy + cx
  f = d * -cx + e * -cy + cy
  return _affine(image, (a, b, c, d, e, f), fill, interpolation)


def shear_x(image, factor, fill=128, interpolation='bilinear'):
  """timm ``shear_x``: affine (1, factor, 0, 0, 1, 0)."""
  return _affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill, interpolation)


def shear_y(image, factor, fill=128, interpolation='bilinear'):
  """timm ``shear_y``: affine (1, 0, 0, factor, 1, 0)."""
  return _affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill, interpolation)


def translate_x_rel(image, pct, fill=128, interpolation='bilinear'):
  """timm ``translate_x_rel``: shift by ``pct`` of the width (positive moves the content left)."""
  _, w = _hw(image)
  pixels = _f64(pct) * tf.cast(w, tf.float64)
  return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill, interpolation)


def translate_y_rel(image, pct, fill=128, interpolation='bilinear'):
  """timm ``translate_y_rel``: shift by ``pct`` of the height (positive moves the content up)."""
  h, _ = _hw(image)
  pixels = _f64(pct) * tf.cast(h, tf.float64)
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill, interpolation)


# ------------------------------------------------------------------------------------------------
# timm's level -> argument functions (magnitude m in [0, 10], float64 so int() matches Python)


def _frac(m):
  return _f64(m) / _LEVEL_DENOM


def _signed(v, negate):
  return tf.where(negate, -v, v)


def _posterize_bits(m, increasing):
  bits = tf.cast(_frac(m) * 4.0, tf.int32)  # int((m / 10) * 4)
  return 4 - bits if increasing else bits


def _solarize_thresh(m, increasing):
  thresh = tf.minimum(tf.cast(_frac(m) * 256.0, tf.int32), 256)
  return 256 - thresh if increasing else thresh


def _enhance_factor(m, negate, increasing):
  if increasing:
    return tf.maximum(_f64(0.1), 1.0 + _signed(_frac(m) * 0.9, negate))  # keep it >= 0.1
  return _frac(m) * 1.8 + 0.1


@_no_autograph
def apply_op(image, name, magnitude, negate=False, fill=128, increasing=False,
             interpolation='bilinear'):
  """Op ``name`` of ``RAND_TRANSFORMS`` at magnitude ``magnitude`` (0..10), timm's level function
  included; ``negate`` is the random sign of the signed ops (Rotate, Shear*, Translate*, and the
  enhance ops when ``increasing``)."""
  image = tf.convert_to_tensor(image)
  m = tf.clip_by_value(_f64(magnitude), 0.0, _LEVEL_DENOM)
  negate = tf.convert_to_tensor(negate, tf.bool)
  if name == 'AutoContrast':
    return auto_contrast(image)
  if name == 'Equalize':
    return equalize(image)
  if name == 'Invert':
    return invert(image)
  if name == 'Rotate':
    return rotate(image, _signed(_frac(m) * 30.0, negate), fill, interpolation)
  if name == 'Posterize':
    return posterize(image, _posterize_bits(m, increasing))
  if name == 'Solarize':
    return solarize(image, _solarize_thresh(m, increasing))
  if name == 'SolarizeAdd':
    return solarize_add(image, tf.minimum(tf.cast(_frac(m) * 110.0, tf.int32), 128))
  if name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    fn = dict(Color=color, Contrast=contrast, Brightness=brightness, Sharpness=sharpness)[name]
    return fn(image, _enhance_factor(m, negate, increasing))
  if name == 'ShearX':
    return shear_x(image, _signed(_frac(m) * 0.3, negate), fill, interpolation)
  if name == 'ShearY':
    return shear_y(image, _signed(_frac(m) * 0.3, negate), fill, interpolation)
  if name == 'TranslateXRel':
    return translate_x_rel(image, _signed(_frac(m) * 0.45, negate), fill, interpolation)
  if name == 'TranslateYRel':
    return translate_y_rel(image, _signed(_frac(m) * 0.45, negate), fill, interpolation)
  raise ValueError(f'unknown op {name!r}')


# ------------------------------------------------------------------------------------------------
# public


@_no_autograph
def randaugment(image, seed, num_layers=2, magnitude=9, fill=128, *, prob=0.5, magnitude_std=0.0,
                increasing=False, interpolation='bilinear'):
  """timm RandAugment (``rand-m{magnitude}-n{num_layers}``) on a uint8 (H, W, 3) image.

  Each of ``num_layers`` layers picks one of ``RAND_TRANSFORMS`` uniformly (with replacement, as
  timm's ``np.random.choice``) and applies it with probability ``prob`` (timm: 0.5); the signed ops
  take a random sign. ``seed`` is a shape-[2] int32/int64 tensor for stateless random ops; the
  result is a deterministic function of (image, seed). ``fill`` (an int or an RGB triple) is the
  colour of pixels that geometric ops bring in from outside the image. See the module docstring
  for ``magnitude_std`` / ``increasing`` and for the deviations from timm.
  """
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise TypeError(f'randaugment expects a uint8 image, got {image.dtype}')
  shape = image.shape
  seeds = tf.random.experimental.stateless_split(_seed(seed), num=max(int(num_layers), 1))
  n_ops = len(RAND_TRANSFORMS)
  for i in range(int(num_layers)):
    layer_seeds = tf.random.experimental.stateless_split(seeds[i], num=2)
    u = tf.random.stateless_uniform([3], layer_seeds[0], dtype=tf.float32)
    op_index = tf.minimum(tf.cast(u[0] * n_ops, tf.int32), n_ops - 1)
    apply = u[1] < prob  # timm: skip if random.random() > prob
    negate = u[2] > 0.5  # timm's _randomly_negate
    m = _f64(magnitude)
    if magnitude_std == float('inf'):
      m = tf.random.stateless_uniform([], layer_seeds[1], dtype=tf.float64) * m
    elif magnitude_std > 0:
      m = m + magnitude_std * tf.random.stateless_normal([], layer_seeds[1], dtype=tf.float64)
    m = tf.clip_by_value(m, 0.0, _LEVEL_DENOM)

    def branch(name, image=image, m=m, negate=negate):
      return lambda: apply_op(image, name, m, negate, fill, increasing, interpolation)

    augmented = lambda image=image, op_index=op_index, m=m, negate=negate: tf.switch_case(
        op_index, [branch(name, image, m, negate) for name in RAND_TRANSFORMS])
    image = tf.cond(apply, augmented, lambda image=image: tf.identity(image))
    image.set_shape(shape)
  return image


def _erasing_box(seed, height, width, min_area=0.02, max_area=1 / 3, min_aspect=0.3,
                 max_aspect=None, attempts=10):
  """timm RandomErasing's rectangle: (found, top, left, h, w), int32 scalars. Up to ``attempts``
  tries of area ~ U[min_area, max_area] * H * W and log-uniform aspect h / w; the first that fits
  (h < H and w < W) is placed uniformly."""
  max_aspect = max_aspect or 1.0 / min_aspect
  hf, wf = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  u = tf.random.stateless_uniform([4, attempts], seed, dtype=tf.float64)
  target_area = (min_area + (max_area - min_area) * u[0]) * hf * wf
  aspect = tf.exp(math.log(min_aspect) + (math.log(max_aspect) - math.log(min_aspect)) * u[1])
  h = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)  # round half to even, as Python
  w = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (w < tf.cast(width, tf.int32)) & (h < tf.cast(height, tf.int32))
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  found = tf.reduce_any(fits)
  h, w = h[first], w[first]
  # random.randint(0, H - h) is inclusive of H - h
  top_range = tf.cast(tf.cast(height, tf.int32) - h + 1, tf.float64)
  left_range = tf.cast(tf.cast(width, tf.int32) - w + 1, tf.float64)
  top = tf.minimum(tf.cast(u[2, first] * top_range, tf.int32), tf.cast(height, tf.int32) - h)
  left = tf.minimum(tf.cast(u[3, first] * left_range, tf.int32), tf.cast(width, tf.int32) - w)
  return found, top, left, h, w


@_no_autograph
def random_erasing(image, seed, probability=0.25, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
  """timm RandomErasing (mode 'pixel', one rectangle) on a uint8 (H, W, 3) image.

  With ``probability``, up to 10 attempts draw a rectangle of area fraction U[min_area, max_area]
  and log-uniform aspect ratio in [min_aspect, 1 / min_aspect]; the first that fits is filled with
  per-pixel uniform random uint8 values (timm: standard normal values in normalised space). If
  none fits, the image is returned unchanged. Deterministic given the shape-[2] ``seed``.
  """
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise TypeError(f'random_erasing expects a uint8 image, got {image.dtype}')
  seeds = tf.random.experimental.stateless_split(_seed(seed), num=3)
  height, width = _hw(image)
  do_erase = tf.random.stateless_uniform([], seeds[0], dtype=tf.float64) < probability
  found, top, left, h, w = _erasing_box(seeds[1], height, width, min_area, max_area, min_aspect)

  def erase():
    rows = tf.range(tf.cast(height, tf.int32))[:, None]
    cols = tf.range(tf.cast(width, tf.int32))[None, :]
    box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    noise = tf.random.stateless_uniform(tf.shape(image), seeds[2], minval=0, maxval=256,
                                        dtype=tf.int32)
    return tf.where(box[..., None], tf.cast(noise, tf.uint8), image)

  out = tf.cond(do_erase & found, erase, lambda: tf.identity(image))
  out.set_shape(image.shape)
  return out

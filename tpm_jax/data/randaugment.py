"""timm's RandAugment (``timm/data/auto_augment.py``, timm 1.0) on PIL images.

The ops are timm's PIL calls; ``rand_augment`` makes timm's random draws in timm's order through ``rnd`` (a
``tpm_jax.data.transforms.Randomness``): the op choice, then per op the apply draw, the magnitude noise and the
sign. One deviation: Posterize to 0 bits (timm's non-increasing Posterize below m=2.5, PosterizeIncreasing at
m=10) gives black, as Pillow < 13 did; Pillow 13's ``ImageOps.posterize`` raises there, and so does timm.
"""
from __future__ import annotations

from PIL import Image, ImageEnhance, ImageOps

from tpm_jax.config import parse_randaugment  # noqa: F401 (the string format lives with the settings)

LEVEL_DENOM = 10.0
FILL = (128, 128, 128)

RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color', 'Contrast',
    'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing', 'SolarizeAdd',
    'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY',
    'TranslateXRel', 'TranslateYRel')


# ------------------------------------------------------------------------------------------------
# the ops (timm's NAME_TO_OP)


def auto_contrast(img):
  return ImageOps.autocontrast(img)


def equalize(img):
  return ImageOps.equalize(img)


def invert(img):
  return ImageOps.invert(img)


def posterize(img, bits_to_keep):
  if bits_to_keep >= 8:
    return img
  if bits_to_keep <= 0:  # Pillow 13's ImageOps.posterize refuses 0 bits; Pillow < 13 gave black
    return img.point([0] * 256 * len(img.getbands()))
  return ImageOps.posterize(img, bits_to_keep)


def solarize(img, thresh):
  return ImageOps.solarize(img, thresh)


def solarize_add(img, add, thresh=128):
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  return img.point(lut * 3 if img.mode == 'RGB' else lut) if img.mode in ('L', 'RGB') else img


def color(img, factor):
  return ImageEnhance.Color(img).enhance(factor)


def contrast(img, factor):
  return ImageEnhance.Contrast(img).enhance(factor)


def brightness(img, factor):
  return ImageEnhance.Brightness(img).enhance(factor)


def sharpness(img, factor):
  return ImageEnhance.Sharpness(img).enhance(factor)


def rotate(img, degrees, fill=FILL, interpolation=Image.BICUBIC):
  return img.rotate(degrees, resample=interpolation, fillcolor=fill)


def _affine(img, matrix, fill, interpolation):
  return img.transform(img.size, Image.AFFINE, matrix, resample=interpolation, fillcolor=fill)


def shear_x(img, factor, fill=FILL, interpolation=Image.BICUBIC):
  return _affine(img, (1, factor, 0, 0, 1, 0), fill, interpolation)


def shear_y(img, factor, fill=FILL, interpolation=Image.BICUBIC):
  return _affine(img, (1, 0, 0, factor, 1, 0), fill, interpolation)


def translate_x_abs(img, pixels, fill=FILL, interpolation=Image.BICUBIC):
  return _affine(img, (1, 0, pixels, 0, 1, 0), fill, interpolation)


def translate_y_abs(img, pixels, fill=FILL, interpolation=Image.BICUBIC):
  return _affine(img, (1, 0, 0, 0, 1, pixels), fill, interpolation)


def translate_x_rel(img, pct, fill=FILL, interpolation=Image.BICUBIC):
  return translate_x_abs(img, pct * img.size[0], fill, interpolation)


def translate_y_rel(img, pct, fill=FILL, interpolation=Image.BICUBIC):
  return translate_y_abs(img, pct * img.size[1], fill, interpolation)


# ------------------------------------------------------------------------------------------------
# timm's level functions: magnitude in [0, 10] -> the op's arguments (rnd draws the random sign)


def _negate(v, rnd):
  return -v if rnd.random() > 0.5 else v


def _rotate_level(level, rnd, _):
  return _negate((level / LEVEL_DENOM) * 30., rnd),


def _enhance_level(level, rnd, _):
  return (level / LEVEL_DENOM) * 1.8 + 0.1,


def _enhance_increasing_level(level, rnd, _):
  return max(0.1, 1.0 + _negate((level / LEVEL_DENOM) * .9, rnd)),


def _shear_level(level, rnd, _):
  return _negate((level / LEVEL_DENOM) * 0.3, rnd),


def _translate_abs_level(level, rnd, translate_const):
  return _negate((level / LEVEL_DENOM) * float(translate_const), rnd),


def _translate_rel_level(level, rnd, _):
  return _negate((level / LEVEL_DENOM) * 0.45, rnd),


def _posterize_level(level, rnd, _):
  return int((level / LEVEL_DENOM) * 4),


def _posterize_increasing_level(level, rnd, _):
  return 4 - _posterize_level(level, rnd, _)[0],


def _solarize_level(level, rnd, _):
  return min(256, int((level / LEVEL_DENOM) * 256)),


def _solarize_increasing_level(level, rnd, _):
  return 256 - _solarize_level(level, rnd, _)[0],


def _solarize_add_level(level, rnd, _):
  return min(128, int((level / LEVEL_DENOM) * 110)),


def _no_args(level, rnd, _):
  return ()


OPS = {  # name: (op, level function)
    'AutoContrast': (auto_contrast, _no_args),
    'Equalize': (equalize, _no_args),
    'Invert': (invert, _no_args),
    'Rotate': (rotate, _rotate_level),
    'Posterize': (posterize, _posterize_level),
    'PosterizeIncreasing': (posterize, _posterize_increasing_level),
    'Solarize': (solarize, _solarize_level),
    'SolarizeIncreasing': (solarize, _solarize_increasing_level),
    'SolarizeAdd': (solarize_add, _solarize_add_level),
    'Color': (color, _enhance_level),
    'ColorIncreasing': (color, _enhance_increasing_level),
    'Contrast': (contrast, _enhance_level),
    'ContrastIncreasing': (contrast, _enhance_increasing_level),
    'Brightness': (brightness, _enhance_level),
    'BrightnessIncreasing': (brightness, _enhance_increasing_level),
    'Sharpness': (sharpness, _enhance_level),
    'SharpnessIncreasing': (sharpness, _enhance_increasing_level),
    'ShearX': (shear_x, _shear_level),
    'ShearY': (shear_y, _shear_level),
    'TranslateX': (translate_x_abs, _translate_abs_level),
    'TranslateY': (translate_y_abs, _translate_abs_level),
    'TranslateXRel': (translate_x_rel, _translate_rel_level),
    'TranslateYRel': (translate_y_rel, _translate_rel_level),
}
GEOMETRIC = {'Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'TranslateXRel', 'TranslateYRel'}


def apply_op(img, name, magnitude, rnd, *, prob=1.0, magnitude_std=0.0, magnitude_max=None, fill=FILL,
             translate_const=100, interpolation=Image.BICUBIC):
  """timm's ``AugmentOp(name, prob, magnitude, hparams)(img)``, drawing from ``rnd``."""
  if prob < 1.0 and rnd.random() > prob:
    return img
  if magnitude_std == float('inf'):
    magnitude = rnd.uniform(0, magnitude)
  elif magnitude_std > 0:
    magnitude = rnd.gauss(magnitude, magnitude_std)
  magnitude = max(0., min(magnitude, magnitude_max or LEVEL_DENOM))
  op, level_fn = OPS[name]
  args = level_fn(magnitude, rnd, translate_const)
  if name in GEOMETRIC:
    return op(img, *args, fill=fill, interpolation=interpolation)
  return op(img, *args)


def rand_augment(img, rnd, *, num_layers=2, magnitude=9, magnitude_std=0.0, increasing=False, fill=FILL,
                 translate_const=100, interpolation=Image.BICUBIC, prob=0.5, magnitude_max=None):
  """timm's ``rand_augment_transform('rand-m{magnitude}-n{num_layers}...', hparams)(img)``: ``num_layers`` ops
  drawn with replacement from timm's 15, each applied with probability ``prob``."""
  names = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
  for i in rnd.choice(len(names), num_layers, replace=True):
    img = apply_op(img, names[i], magnitude, rnd, prob=prob, magnitude_std=magnitude_std,
                   magnitude_max=magnitude_max, fill=fill, translate_const=translate_const,
                   interpolation=interpolation)
  return img

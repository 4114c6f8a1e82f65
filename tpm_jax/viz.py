"""Pictures of token reduction: each patch coloured by the token it ended up in, kept patches
outlined (as the EViT and ToMe visualisations). Works from ``model(x, return_aux=True)``'s aux."""
from __future__ import annotations

import os

import numpy as np
from flax import nnx
from PIL import Image, ImageDraw

from tpm_jax.forward import jitted_forward


def patch_destinations(aux, index: int, num_patches: int, num_prefix_tokens: int):
  """Follow every input patch through the reduction locations of image ``index``.

  Returns (dest, kept): dest (num_patches,) the index of the final token each patch ended up in
  (-1 if discarded), kept (num_patches,) True where the patch's own token survived every location
  as a destination (a crucial token)."""
  cur = np.arange(num_patches) + num_prefix_tokens
  kept = np.ones(num_patches, bool)
  for step in aux:
    assignment = np.asarray(step['assignment'][index])
    own = np.asarray(step['kept'][index])
    alive = cur >= 0
    kept &= alive & np.isin(cur, own)
    cur = np.where(alive, assignment[np.maximum(cur, 0)], -1)
  return cur, kept


def _palette(n, seed=0):
  rs = np.random.RandomState(seed)
  return (rs.rand(n, 3) * 200 + 55).astype(np.uint8)


def render(image, aux, index: int = 0, *, patch_size: int, num_prefix_tokens: int = 1, alpha: float = 0.55,
           scale: int = 1):
  """An RGB uint8 array: ``image`` (H, W, 3|1, uint8 or float in [0, 1]) with each patch tinted by
  the token it was merged into and kept patches outlined in white; discarded patches darkened."""
  img = np.asarray(image)
  if img.dtype != np.uint8:
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  H, W = img.shape[:2]
  gh, gw = H // patch_size, W // patch_size
  dest, kept = patch_destinations(aux, index, gh * gw, num_prefix_tokens)
  colours = _palette(int(dest.max()) + 1 if dest.max() >= 0 else 1)
  out = img.astype(np.float32)
  for p in range(gh * gw):
    y, x = divmod(p, gw)
    sl = np.s_[y * patch_size:(y + 1) * patch_size, x * patch_size:(x + 1) * patch_size]
    if dest[p] < 0:
      out[sl] *= 0.25
    else:
      out[sl] = (1 - alpha) * out[sl] + alpha * colours[dest[p]]
  pil = Image.fromarray(out.astype(np.uint8))
  if scale != 1:
    pil = pil.resize((W * scale, H * scale), Image.NEAREST)
  draw = ImageDraw.Draw(pil)
  s = patch_size * scale
  for p in np.flatnonzero(kept):
    y, x = divmod(int(p), gw)
    draw.rectangle([x * s, y * s, (x + 1) * s - 1, (y + 1) * s - 1], outline=(255, 255, 255))
  return np.asarray(pil)


def save_png(path, image, aux, index: int = 0, **kwargs) -> str:
  Image.fromarray(render(image, aux, index, **kwargs)).save(path)
  return path


def visualize(model, images, display_images, out_dir, *, prefix: str = 'tokens', scale: int = 1) -> list[str]:
  """Run ``model`` on (normalised) ``images`` and write one PNG per image of ``display_images``
  (the same pictures, uint8 or [0, 1]) to ``out_dir``. Returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  graphdef, state = nnx.split(model)
  _, aux = jitted_forward(graphdef, return_aux=True)(state, images)  # compiled: 4x sooner than op by op
  aux = [{k: np.asarray(v) for k, v in step.items()} for step in aux]
  return [save_png(os.path.join(out_dir, f'{prefix}_{i}.png'), display_images[i], aux, i,
                   patch_size=model.cfg.patch_size, num_prefix_tokens=model.num_prefix_tokens, scale=scale)
          for i in range(len(display_images))]

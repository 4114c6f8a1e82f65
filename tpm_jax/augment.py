"""Device-side augmentation: normalisation, random erasing, mixup / cutmix (timm's batch mode) and label smoothing."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images_u8, mean, std):
  x = images_u8.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)[: x.shape[-1]]) / jnp.asarray(std, jnp.float32)[: x.shape[-1]]


def smooth_targets(labels, num_classes, smoothing):
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def mixup_cutmix(rng, images, targets, *, mixup_alpha, cutmix_alpha, switch_prob=0.5):
  """timm ``Mixup`` in batch mode: one lambda per batch, partner = the batch reversed; cutmix
  (when both are on, chosen with ``switch_prob``) pastes a box and sets lambda to its area."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets
  k_lam, k_switch, k_box = jax.random.split(rng, 3)
  B, H, W, _ = images.shape
  use_cutmix = jnp.asarray(cutmix_alpha > 0 and mixup_alpha <= 0)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  lam_mix = jax.random.beta(k_lam, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1)
  lam_cut = jax.random.beta(k_lam, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1)
  # cutmix box with area (1 - lam), clipped to the image; lambda corrected to the real area
  cut = jnp.sqrt(1.0 - lam_cut)
  ky, kx = jax.random.split(k_box)
  cy, cx = jax.random.randint(ky, (), 0, H), jax.random.randint(kx, (), 0, W)
  hh, hw = (H * cut / 2).astype(jnp.int32), (W * cut / 2).astype(jnp.int32)
  y0, y1 = jnp.clip(cy - hh, 0, H), jnp.clip(cy + hh, 0, H)
  x0, x1 = jnp.clip(cx - hw, 0, W), jnp.clip(cx + hw, 0, W)
  ys, xs = jnp.arange(H)[:, None], jnp.arange(W)[None, :]
  box = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[None, :, :, None]
  lam_box = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)
  flipped = images[::-1]
  mixed = jnp.where(use_cutmix, jnp.where(box, flipped, images), lam_mix * images + (1 - lam_mix) * flipped)
  lam = jnp.where(use_cutmix, lam_box, lam_mix)
  return mixed.astype(images.dtype), lam * targets + (1 - lam) * targets[::-1]


def random_erasing(rng, images, boxes, noise=None):
  """timm's RandomErasing, mode 'pixel', on normalised images (B, H, W, C): inside each image's box [top, left,
  height, width] (int32 (B, 4), drawn on the host by ``tpm_jax.data.transforms.erasing_box``; height or width 0:
  no box) the pixels become standard normal noise. ``noise`` (the images' shape) replaces the draw from ``rng``."""
  _, H, W, _ = images.shape
  if noise is None:
    noise = jax.random.normal(rng, images.shape, images.dtype)
  top, left, h, w = (boxes[:, i, None, None, None] for i in range(4))
  ys = jax.lax.broadcasted_iota(jnp.int32, (1, H, W, 1), 1)
  xs = jax.lax.broadcasted_iota(jnp.int32, (1, H, W, 1), 2)
  inside = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w)
  return jnp.where(inside, noise.astype(images.dtype), images)

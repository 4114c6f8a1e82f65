"""Multi-scale feature fusion, applied once to the tokens entering the first reduction location.

``pool``: the patch grid is average-pooled at each scale (2 and 4), projected by a per-scale
linear layer and added back, upsampled, to the patch tokens.
``cross``: a coarse token set (the grid pooled 2x2, or a second patch embedding at twice the patch
size) with its own position embedding; the fine tokens attend to it through one pre-norm
multi-head cross-attention, added residually.
Output projections start at zero, so a fresh model computes exactly its backbone's function.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from tpm_jax.config import MultiscaleConfig
from tpm_jax.models.layers import LayerNorm


def pool_grid(grid, s):
  """(B, g, g, C) -> (B, ceil(g/s), ceil(g/s), C): s x s average, partial windows at the edge."""
  g = grid.shape[1]
  pad = -g % s
  return nnx.avg_pool(grid, (s, s), strides=(s, s), padding=((0, pad), (0, pad)), count_include_pad=False)


def upsample_grid(grid, s, g):
  """Nearest-neighbour back to g x g (each pooled cell covers its s x s window)."""
  return jnp.repeat(jnp.repeat(grid, s, axis=1), s, axis=2)[:, :g, :g]


def _zero_linear(cin, cout, dtype, rngs):
  return nnx.Linear(cin, cout, dtype=dtype, param_dtype=jnp.float32, kernel_init=nnx.initializers.zeros,
                    rngs=rngs)


class MultiScale(nnx.Module):

  def __init__(self, cfg: MultiscaleConfig, *, embed_dim, num_heads, grid_size, patch_size, in_chans,
               dtype, rngs):
    self.method = cfg.method
    self.source = cfg.source
    self.scales = tuple(cfg.scales)
    self.grid_size = grid_size
    self.num_heads = num_heads
    D = embed_dim
    self.norm = LayerNorm(D, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    if self.method == 'pool':
      self.proj = nnx.List([_zero_linear(D, D, dtype, rngs) for _ in self.scales])
    else:  # cross
      coarse = math.ceil(grid_size / 2)
      if self.source == 'patch':
        self.patch_embed = nnx.Conv(in_chans, D, (2 * patch_size, 2 * patch_size), strides=(2 * patch_size,) * 2,
                                    padding='VALID', dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        coarse = grid_size // 2
      self.pos_embed = nnx.Param(nnx.initializers.truncated_normal(0.02)(rngs.params(), (1, coarse * coarse, D)))
      self.norm_kv = LayerNorm(D, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
      self.q = nnx.Linear(D, D, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
      self.kv = nnx.Linear(D, 2 * D, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
      self.proj = _zero_linear(D, D, dtype, rngs)

  def coarse_tokens(self, images, grid):
    if self.source == 'patch':
      c = self.patch_embed(images.astype(grid.dtype))
      c = c.reshape(c.shape[0], -1, c.shape[-1])
    else:
      c = pool_grid(grid, 2)
      c = c.reshape(c.shape[0], -1, c.shape[-1])
    return c + self.pos_embed[...].astype(c.dtype)

  def __call__(self, x, images, num_prefix_tokens):
    """x (B, P + g*g, C) -> same shape; only the patch tokens change."""
    prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    B, M, C = patches.shape
    g = self.grid_size
    grid = self.norm(patches).reshape(B, g, g, C)
    if self.method == 'pool':
      update = sum(upsample_grid(proj(pool_grid(grid, s)), s, g) for s, proj in zip(self.scales, self.proj))
      update = update.reshape(B, M, C)
    else:
      kv_in = self.norm_kv(self.coarse_tokens(images, grid))
      H, hd = self.num_heads, C // self.num_heads
      q = self.q(grid.reshape(B, M, C)).reshape(B, M, H, hd)
      k, v = jnp.split(self.kv(kv_in).reshape(B, -1, 2, H, hd), 2, axis=2)
      out = jax.nn.dot_product_attention(q, k[:, :, 0], v[:, :, 0], scale=hd ** -0.5)  # (B, M, H, hd)
      update = self.proj(out.reshape(B, M, C))
    return jnp.concatenate([prefix, patches + update.astype(patches.dtype)], axis=1)

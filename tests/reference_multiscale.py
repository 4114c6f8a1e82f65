"""Independent NumPy float64 reference implementation of the multi-scale fusion module.

Written from the spec only (not from tpm_jax/models/multiscale.py); deliberately uses plain Python
loops where that keeps it obviously right (pooling, upsampling, the convolution, per-head attention).

Conventions: x (B, P + g*g, C) tokens, the first P are prefix tokens, then the g x g patch grid in
row-major order; images (B, H, W, Cin) NHWC with H = W = g * patch_size; params a dict of float64
arrays keyed by dotted paths ('norm.scale', 'proj.0.kernel', 'q.kernel', ...). Linear layers compute
t @ kernel + bias. Returns a float64 array shaped like x: the prefix tokens unchanged, the patch
tokens plus the update.
"""
import math

import numpy as np

LN_EPS = 1e-6


def _layer_norm(t, scale, bias, eps=LN_EPS):
  """LayerNorm over the last axis: mean and biased variance."""
  mean = t.mean(axis=-1, keepdims=True)
  var = ((t - mean) ** 2).mean(axis=-1, keepdims=True)
  return (t - mean) / np.sqrt(var + eps) * scale + bias


def _avg_pool(grid, s):
  """(B, g, g, C) -> (B, ceil(g/s), ceil(g/s), C): mean over s x s windows, stride s; edge windows
  are partial and average only the cells that exist."""
  B, g, _, C = grid.shape
  n = math.ceil(g / s)
  out = np.zeros((B, n, n, C))
  for i in range(n):
    for j in range(n):
      cells = [grid[:, r, c] for r in range(i * s, min((i + 1) * s, g)) for c in range(j * s, min((j + 1) * s, g))]
      out[:, i, j] = sum(cells) / len(cells)
  return out


def _upsample_nearest(pooled, s, g):
  """(B, n, n, C) -> (B, g, g, C): cell (r, c) takes pooled cell (r // s, c // s)."""
  B, _, _, C = pooled.shape
  out = np.zeros((B, g, g, C))
  for r in range(g):
    for c in range(g):
      out[:, r, c] = pooled[:, r // s, c // s]
  return out


def _conv_valid(images, kernel, bias, stride):
  """NHWC images, HWIO kernel (k, k, Cin, C), stride, no padding -> (B, Ho, Wo, C)."""
  B, H, W, _ = images.shape
  k = kernel.shape[0]
  ho, wo = (H - k) // stride + 1, (W - k) // stride + 1
  out = np.zeros((B, ho, wo, kernel.shape[-1]))
  for i in range(ho):
    for j in range(wo):
      window = images[:, i * stride:i * stride + k, j * stride:j * stride + k, :]  # (B, k, k, Cin)
      out[:, i, j] = np.einsum('bhwi,hwio->bo', window, kernel) + bias
  return out


def _softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _attention(q, k, v, num_heads):
  """q (B, Nq, C), k and v (B, Nk, C); head h owns columns h*hd..(h+1)*hd-1 -> (B, Nq, C)."""
  B, Nq, C = q.shape
  hd = C // num_heads
  out = np.zeros((B, Nq, C))
  for b in range(B):
    for h in range(num_heads):
      cols = slice(h * hd, (h + 1) * hd)
      probs = _softmax(q[b, :, cols] @ k[b, :, cols].T / math.sqrt(hd))  # (Nq, Nk), softmax over coarse
      out[b, :, cols] = probs @ v[b, :, cols]
  return out


def multiscale_reference(params, x, images, num_prefix_tokens, *, method, source, scales, num_heads, grid_size,
                         patch_size):
  """Prefix tokens unchanged; patch tokens + update, the update from method 'pool' or 'cross'."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  x = np.asarray(x, np.float64)
  images = np.asarray(images, np.float64)
  P, g = num_prefix_tokens, grid_size
  B, N, C = x.shape
  assert N == P + g * g, (N, P, g)
  assert images.shape[1] == images.shape[2] == g * patch_size, images.shape

  prefix, patches = x[:, :P], x[:, P:]
  fine = _layer_norm(patches, p['norm.scale'], p['norm.bias'])  # (B, g*g, C)
  grid = fine.reshape(B, g, g, C)

  if method == 'pool':
    update = np.zeros((B, g, g, C))
    for i, s in enumerate(scales):
      pooled = _avg_pool(grid, s)
      projected = pooled @ p[f'proj.{i}.kernel'] + p[f'proj.{i}.bias']
      update += _upsample_nearest(projected, s, g)
    update = update.reshape(B, g * g, C)
  elif method == 'cross':
    if source == 'pool':
      coarse = _avg_pool(grid, 2)
    elif source == 'patch':
      coarse = _conv_valid(images, p['patch_embed.kernel'], p['patch_embed.bias'], 2 * patch_size)
    else:
      raise ValueError(f'unknown source {source!r}')
    coarse = coarse.reshape(B, -1, C) + p['pos_embed']
    coarse = _layer_norm(coarse, p['norm_kv.scale'], p['norm_kv.bias'])
    q = fine @ p['q.kernel'] + p['q.bias']
    kv = coarse @ p['kv.kernel'] + p['kv.bias']
    k, v = kv[..., :C], kv[..., C:]
    update = _attention(q, k, v, num_heads) @ p['proj.kernel'] + p['proj.bias']
  else:
    raise ValueError(f'unknown method {method!r}')

  return np.concatenate([prefix, patches + update], axis=1)


def expected_param_shapes(*, method, source, scales, embed_dim, grid_size, patch_size, in_chans):
  """The parameters the spec names, {dotted path: shape}."""
  C, g = embed_dim, grid_size
  shapes = {'norm.scale': (C,), 'norm.bias': (C,)}
  if method == 'pool':
    for i in range(len(scales)):
      shapes[f'proj.{i}.kernel'] = (C, C)
      shapes[f'proj.{i}.bias'] = (C,)
  elif method == 'cross':
    n_coarse = math.ceil(g / 2) ** 2 if source == 'pool' else (g // 2) ** 2
    if source == 'patch':
      shapes['patch_embed.kernel'] = (2 * patch_size, 2 * patch_size, in_chans, C)
      shapes['patch_embed.bias'] = (C,)
    shapes.update({'pos_embed': (1, n_coarse, C), 'norm_kv.scale': (C,), 'norm_kv.bias': (C,),
                   'q.kernel': (C, C), 'q.bias': (C,), 'kv.kernel': (C, 2 * C), 'kv.bias': (2 * C,),
                   'proj.kernel': (C, C), 'proj.bias': (C,)})
  return shapes

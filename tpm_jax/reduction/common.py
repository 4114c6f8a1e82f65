"""What every token-reduction method shares: the signature, the output, ranking and gathers.

Every method is a pure function with one signature::

    reduce(x, scores, metric, sizes, *, num_protected, k, cfg) -> Reduction

x (B, N, C) tokens after the attention residual; scores (B, N) importance (CLS attention,
head-averaged; ignored for the protected tokens); metric (B, N, Ck) similarity features (keys
averaged over heads, or the tokens); sizes (B, N) input patches per token. ``num_protected``
(CLS, distillation token) and ``k`` (prunable tokens that stay as destinations) are Python ints,
so every shape is static. Selection is by stable argsort, gathers by ``take_along_axis``, merges
are one-hot contractions: deterministic, one compilation per config.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Reduction(NamedTuple):
  tokens: jax.Array      # (B, N', C)
  sizes: jax.Array       # (B, N')
  assignment: jax.Array  # (B, N) int32: output index each input token went to, -1 if discarded
  kept: jax.Array        # (B, k) int32: input indices of the prunable tokens kept as destinations


def gather(x, idx):
  """x (B, N, ...) at idx (B, K) along the token axis."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def rank_prunable(scores, num_protected):
  """Input indices of the prunable tokens by descending score (ties: lower index first)."""
  return jnp.argsort(-scores[:, num_protected:], axis=-1, stable=True).astype(jnp.int32) + num_protected


def inverse_permutation(perm):
  """perm (B, M) -> inv with inv[perm[i]] = i (an argsort; no scatter)."""
  return jnp.argsort(perm, axis=-1).astype(jnp.int32)


def assignment_from_order(order, dest_in_order, num_protected):
  """Map every input token to its output index.

  order (B, M): prunable input indices in the order the method ranks them; dest_in_order (B, M):
  output index (or -1) of the token at each rank. Protected tokens map to themselves.
  """
  B = order.shape[0]
  rank_of_input = inverse_permutation(order - num_protected)  # (B, M)
  dest = jnp.take_along_axis(dest_in_order, rank_of_input, axis=1)
  protected = jnp.broadcast_to(jnp.arange(num_protected, dtype=jnp.int32), (B, num_protected))
  return jnp.concatenate([protected, dest.astype(jnp.int32)], axis=1)


def identity(x, sizes, num_protected):
  """Nothing to reduce: every token maps to itself (keeps the backbone's function exactly)."""
  B, N = sizes.shape
  idx = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N))
  return Reduction(x, sizes, idx, idx[:, num_protected:])


def unit(v, eps=1e-6):
  v = v.astype(jnp.float32)
  return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), eps)

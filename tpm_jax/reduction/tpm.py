"""Token pruning and merging, the paper's method (arXiv 2306.04897, reconstructed).

1. importance a = CLS attention, head-averaged (``scores``); with ``cfg.distinct`` = l > 0 the rank
is a / mean(a) + l * d / mean(d), d = 1 - the cosine of ``metric`` to the most similar other prunable
token (a token another one already resembles loses little when merged; means over the prunable
tokens of each image); 2. crucial = top-k by that rank, in descending order, non-crucial = the rest; 3. similarity = cosine of ``metric`` (head-averaged keys,
or the tokens) between each non-crucial and each crucial token; 4. each non-crucial token goes to
its most similar crucial token (``cfg.assign='hard'``) or is spread by softmax(sim / tau)
(``'soft'``); 5. weighted average x'_k = (w_k x_k + sum_{j->k} w_j x_j) / (w_k + sum_{j->k} w_j),
w = a (``cfg.weight='importance'``), size, or 1; sizes add up.
"""
import jax
import jax.numpy as jnp

from tpm_jax.reduction.common import Reduction, assignment_from_order, gather, identity, rank_prunable, unit


def _weights(scores, sizes, weight):
  if weight == 'importance':
    return scores
  if weight == 'size':
    return sizes
  return jnp.ones_like(sizes)


def rank_scores(scores, metric, num_protected, distinct):
  """What the crucial tokens are chosen by: ``scores`` (a), or with ``distinct`` > 0 a / mean(a) +
  distinct * d / mean(d) over the prunable tokens, d_i = 1 - max_{j != i} cos(metric_i, metric_j)."""
  if not distinct:
    return scores
  P = num_protected
  m = unit(metric[:, P:])
  sim = jnp.einsum('bic,bjc->bij', m, m)
  sim = jnp.where(jnp.eye(sim.shape[1], dtype=bool), -jnp.inf, sim)  # not itself
  d = 1.0 - jnp.clip(sim.max(axis=-1), -1.0, 1.0)
  a = scores[:, P:].astype(jnp.float32)
  mean = lambda v: jnp.maximum(v.mean(axis=-1, keepdims=True), 1e-12)
  return jnp.concatenate([scores[:, :P].astype(jnp.float32), a / mean(a) + distinct * d / mean(d)], axis=1)


def reduce(x, scores, metric, sizes, *, num_protected, k, cfg):
  P, M = num_protected, x.shape[1] - num_protected
  if k >= M:
    return identity(x, sizes, P)
  order = rank_prunable(rank_scores(scores, metric, P, cfg.distinct), P)
  crucial, rest = order[:, :k], order[:, k:]

  sim = jnp.einsum('bjc,bkc->bjk', unit(gather(metric, rest)), unit(gather(metric, crucial)))  # (B, M-k, k)
  if cfg.assign == 'hard':
    target = jnp.argmax(sim, axis=-1)
    p = jax.nn.one_hot(target, k, dtype=jnp.float32)
  else:
    p = jax.nn.softmax(sim / cfg.tau, axis=-1)
    target = jnp.argmax(p, axis=-1)

  w = _weights(scores, sizes, cfg.weight).astype(jnp.float32)
  w_k, w_r = gather(w, crucial), gather(w, rest)
  x_k, x_r = gather(x, crucial).astype(jnp.float32), gather(x, rest).astype(jnp.float32)
  num = w_k[..., None] * x_k + jnp.einsum('bjk,bjc->bkc', p * w_r[..., None], x_r)
  den = w_k + jnp.einsum('bjk,bj->bk', p, w_r)
  s = sizes.astype(jnp.float32)
  new_sizes = gather(s, crucial) + jnp.einsum('bjk,bj->bk', p, gather(s, rest))

  dest = jnp.concatenate([jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), crucial.shape), target.astype(jnp.int32)], 1) + P
  return Reduction(
      tokens=jnp.concatenate([x[:, :P], (num / den[..., None]).astype(x.dtype)], axis=1),
      sizes=jnp.concatenate([sizes[:, :P], new_sizes.astype(sizes.dtype)], axis=1),
      assignment=assignment_from_order(order, dest, P),
      kept=crucial)

"""Plain dropping: keep the top-k tokens by importance, discard the rest ("pruning without merging")."""
import jax.numpy as jnp

from tpm_jax.reduction.common import Reduction, assignment_from_order, gather, identity, rank_prunable


def reduce(x, scores, metric, sizes, *, num_protected, k, cfg=None):
  del metric, cfg
  P, M = num_protected, x.shape[1] - num_protected
  if k >= M:
    return identity(x, sizes, P)
  order = rank_prunable(scores, P)
  keep = order[:, :k]
  ranks = jnp.arange(M, dtype=jnp.int32)
  dest = jnp.broadcast_to(jnp.where(ranks < k, P + ranks, -1), order.shape)
  return Reduction(
      tokens=jnp.concatenate([x[:, :P], gather(x, keep)], axis=1),
      sizes=jnp.concatenate([sizes[:, :P], gather(sizes, keep)], axis=1),
      assignment=assignment_from_order(order, dest, P),
      kept=keep)

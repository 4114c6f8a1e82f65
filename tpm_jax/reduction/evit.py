"""EViT (Liang et al., ICLR 2022), as the official code: keep the top-k tokens by CLS attention
and append one fused token, the sum of the others weighted by their raw attention."""
import jax.numpy as jnp

from tpm_jax.reduction.common import Reduction, assignment_from_order, gather, identity, rank_prunable


def reduce(x, scores, metric, sizes, *, num_protected, k, cfg=None):
  del metric, cfg
  P, M = num_protected, x.shape[1] - num_protected
  if k >= M:
    return identity(x, sizes, P)
  order = rank_prunable(scores, P)
  keep, rest = order[:, :k], order[:, k:]
  a_rest = gather(scores, rest).astype(jnp.float32)
  fused = jnp.einsum('bj,bjc->bc', a_rest, gather(x, rest).astype(jnp.float32)).astype(x.dtype)
  ranks = jnp.arange(M, dtype=jnp.int32)
  dest = jnp.broadcast_to(jnp.where(ranks < k, P + ranks, P + k), order.shape)
  return Reduction(
      tokens=jnp.concatenate([x[:, :P], gather(x, keep), fused[:, None]], axis=1),
      sizes=jnp.concatenate([sizes[:, :P], gather(sizes, keep), gather(sizes, rest).sum(1, keepdims=True)], axis=1),
      assignment=assignment_from_order(order, dest, P),
      kept=keep)

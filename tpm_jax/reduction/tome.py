"""ToMe (Bolya et al., ICLR 2023), as the official ``bipartite_soft_matching`` + ``merge_wavg``.

Tokens alternate into sets A (even indices) and B (odd); each A token's best B match by cosine of
the L2-normalised metric; the ``r = M - k`` best edges are merged into their B token by
size-weighted average. The protected tokens (the first ``num_protected``: CLS at index 0, in A; the
distillation token or registers after it) are never merged nor merged into, as ToMe blocks CLS's
row and the distillation token's column. Output: unmerged A tokens in order, then B tokens (as
ToMe), with the protected tokens moved back in front, in order, so the model's heads find them.
"""
import jax
import jax.numpy as jnp

from tpm_jax.reduction.common import Reduction, gather, identity, inverse_permutation, unit


def _interleave(even, odd):
  """(B, ceil(N/2)), (B, floor(N/2)) -> (B, N) with even at 0, 2, ... and odd at 1, 3, ..."""
  B, n_odd = odd.shape
  out = jnp.stack([even[:, :n_odd], odd], axis=-1).reshape(B, 2 * n_odd)
  return jnp.concatenate([out, even[:, n_odd:]], axis=1)


def reduce(x, scores, metric, sizes, *, num_protected, k, cfg=None):
  del scores, cfg
  P, N = num_protected, x.shape[1]
  r = (N - P) - k
  if r <= 0:
    return identity(x, sizes, P)
  m = unit(metric)
  sim = jnp.einsum('bic,bjc->bij', m[:, ::2], m[:, 1::2])  # (B, Na, Nb)
  Na, Nb = sim.shape[1:]
  # protected tokens (the first P) are neither merged (their A rows) nor merged into (their B columns):
  # ToMe's CLS row and distillation-token column, and so for registers
  blocked = (2 * jnp.arange(Na)[:, None] < P) | (2 * jnp.arange(Nb)[None, :] + 1 < P)
  sim = jnp.where(blocked, -jnp.inf, sim)

  node_max, node_idx = sim.max(-1), sim.argmax(-1).astype(jnp.int32)
  edge = jnp.argsort(-node_max, axis=-1, stable=True).astype(jnp.int32)
  src, unm = edge[:, :r], jnp.sort(edge[:, r:], axis=-1)
  onehot = jax.nn.one_hot(gather(node_idx, src), Nb, dtype=jnp.float32)  # (B, r, Nb)

  xa, xb = x[:, ::2].astype(jnp.float32), x[:, 1::2].astype(jnp.float32)
  sa, sb = sizes[:, ::2].astype(jnp.float32), sizes[:, 1::2].astype(jnp.float32)
  src_size = gather(sa, src)
  den = sb + jnp.einsum('brn,br->bn', onehot, src_size)
  num = xb * sb[..., None] + jnp.einsum('brn,brc->bnc', onehot, gather(xa, src) * src_size[..., None])
  received = onehot.sum(axis=1) > 0  # (B, Nb): a B token nothing merged into (a protected one) stays bit-exact
  tokens = jnp.concatenate([gather(xa, unm), jnp.where(received[..., None], num / den[..., None], xb)],
                           axis=1).astype(x.dtype)
  new_sizes = jnp.concatenate([gather(sa, unm), den], axis=1).astype(sizes.dtype)
  n_unm = Na - r
  source = jnp.concatenate([2 * unm, jnp.broadcast_to(2 * jnp.arange(Nb, dtype=jnp.int32) + 1, (x.shape[0], Nb))], 1)

  merged = inverse_permutation(edge) < r
  dest_a = jnp.where(merged, n_unm + node_idx, jnp.cumsum(~merged, axis=1) - 1)
  dest_b = jnp.broadcast_to(n_unm + jnp.arange(Nb, dtype=jnp.int32), (x.shape[0], Nb))
  assignment = _interleave(dest_a, dest_b).astype(jnp.int32)

  if P > 1:  # the protected tokens back in front, in their order: [CLS, dist or registers..., other A..., other B...]
    front = [i // 2 if i % 2 == 0 else n_unm + i // 2 for i in range(P)]
    perm = jnp.array(front + [j for j in range(N - r) if j not in front], jnp.int32)
    tokens, new_sizes, source = tokens[:, perm], new_sizes[:, perm], source[:, perm]
    assignment = inverse_permutation(perm[None])[0][assignment]
  return Reduction(tokens, new_sizes, assignment, source[:, P:])

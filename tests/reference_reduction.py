"""Independent NumPy float64 reference implementations of ViT token reduction.

Conventions: x (B,N,C) tokens, a (B,N) importance scores, metric (B,N,Ck)
similarity features, size (B,N) positive patch counts. The first P tokens are
protected (CLS [+ distillation]); the other M = N - P are prunable. Every
function returns (x_out, size_out) as float64 arrays. Written from the spec
only; deliberately uses plain Python loops for clarity, not speed.
"""
import numpy as np


def _f64(*arrays):
    return [np.asarray(t, dtype=np.float64) for t in arrays]


def _rank_prunable(a_row, P):
    """Indices (into the full sequence) of prunable tokens sorted by a descending,
    ties broken by lower index first."""
    scores = a_row[P:]
    order = np.argsort(-scores, kind="stable")
    return order + P


def _unit(v):
    """Rows of v scaled to unit L2 norm."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def ref_drop(x, a, size, P, K):
    """Keep top-K prunable tokens by a (descending; ties -> lower index first).

    out = [x_0..x_{P-1}, x_{k_1}, ..., x_{k_K}] with a_{k_1} >= ... >= a_{k_K};
    sizes are carried along unchanged. Output length P + K.
    """
    x, a, size = _f64(x, a, size)
    xs, ss = [], []
    for b in range(x.shape[0]):
        keep = np.concatenate([np.arange(P), _rank_prunable(a[b], P)[:K]])
        xs.append(x[b, keep])
        ss.append(size[b, keep])
    return np.stack(xs), np.stack(ss)


def ref_evit(x, a, size, P, K):
    """EViT: ref_drop plus one fused token for the discarded prunable set D.

    x_fused = sum_{j in D} a_j x_j   (raw scores, not normalised)
    size_fused = sum_{j in D} size_j
    Output length P + K + 1, or P + K if D is empty (K == M).
    """
    x, a, size = _f64(x, a, size)
    M = x.shape[1] - P
    xk, sk = ref_drop(x, a, size, P, K)
    if K >= M:
        return xk, sk
    xs, ss = [], []
    for b in range(x.shape[0]):
        dropped = _rank_prunable(a[b], P)[K:]
        fused = sum(a[b, j] * x[b, j] for j in dropped)
        fsize = sum(size[b, j] for j in dropped)
        xs.append(np.concatenate([xk[b], fused[None]], axis=0))
        ss.append(np.concatenate([sk[b], [fsize]]))
    return np.stack(xs), np.stack(ss)


def ref_rank(a_row, metric_row, P, distinct):
    """The score the crucial tokens are ranked by: a, or with distinct = l > 0
    a_i / mean(a) + l * d_i / mean(d), d_i = 1 - max_{j != i} cos(metric_i, metric_j),
    i, j and the means over the prunable tokens (index >= P). Protected entries: a."""
    if not distinct:
        return a_row
    M = len(a_row) - P
    d = np.empty(M)
    for i in range(M):
        best = -np.inf
        for j in range(M):
            if j != i:
                best = max(best, float(_unit(metric_row[P + i]) @ _unit(metric_row[P + j])))
        d[i] = 1.0 - best
    out = a_row.copy()
    out[P:] = a_row[P:] / a_row[P:].mean() + distinct * d / d.mean()
    return out


def ref_tpm(x, a, metric, size, P, K, assign="hard", tau=0.1, weight="importance", distinct=0.0):
    """Token Pruning & Merging: merge each non-crucial token into crucial tokens.

    Crucial set = top-K prunable by ref_rank (descending, ties lower index first); with
    distinct = 0 that is a itself.
    s_jk = cos(metric_j, metric_k), j non-crucial, k crucial.
    hard: p_jk = 1[k = argmax_k s_jk] (ties -> first k in descending-score order)
    soft: p_jk = softmax_k(s_jk / tau)
    w_t = a_t ('importance') | size_t ('size') | 1 ('uniform')
    x'_k = (w_k x_k + sum_j p_jk w_j x_j) / (w_k + sum_j p_jk w_j)
    size'_k = size_k + sum_j p_jk size_j
    Output: P protected tokens then the K merged crucial tokens (length P + K).
    """
    x, a, metric, size = _f64(x, a, metric, size)
    xs, ss = [], []
    for b in range(x.shape[0]):
        ranked = _rank_prunable(ref_rank(a[b], metric[b], P, distinct), P)
        crucial, rest = ranked[:K], ranked[K:]
        w = {"importance": a[b], "size": size[b], "uniform": np.ones_like(a[b])}[weight]
        num = w[crucial, None] * x[b, crucial]           # (K, C)
        den = w[crucial].copy()                          # (K,)
        new_size = size[b, crucial].copy()               # (K,)
        mk = _unit(metric[b, crucial])
        for j in rest:
            s = mk @ _unit(metric[b, j])                 # (K,)
            if assign == "hard":
                p = np.zeros(K)
                p[int(np.argmax(s))] = 1.0               # first max wins
            elif assign == "soft":
                e = np.exp((s - s.max()) / tau)
                p = e / e.sum()
            else:
                raise ValueError(assign)
            num += (p * w[j])[:, None] * x[b, j][None, :]
            den += p * w[j]
            new_size += p * size[b, j]
        xs.append(np.concatenate([x[b, :P], num / den[:, None]], axis=0))
        ss.append(np.concatenate([size[b, :P], new_size]))
    return np.stack(xs), np.stack(ss)


def ref_tome(x, metric, size, P, r):
    """ToMe bipartite soft matching (Bolya et al. 2023) with size-weighted average.

    A = even indices, B = odd indices; scores_ab = cos(metric_a, metric_b).
    Protected tokens (the first P): an even index's row (in A) := -inf, an odd index's column (in B)
    := -inf (ToMe: the CLS row; the distillation token's column).
    r := min(r, (N - P) // 2). Each a gets best b (argmax, ties lowest b) and
    best score; A sorted by best score descending (stable); first r merge:
    x'_b = (size_b x_b + sum_s size_s x_s) / (size_b + sum_s size_s),
    size'_b = size_b + sum_s size_s.
    Output: unmerged A in ascending index order, then all B in original order
    (length N - r). r == 0 returns the inputs unchanged.
    """
    x, metric, size = _f64(x, metric, size)
    Bn, N, _ = x.shape
    r = min(r, (N - P) // 2)
    if r <= 0:
        return x.copy(), size.copy()
    ia, ib = np.arange(0, N, 2), np.arange(1, N, 2)
    xs, ss = [], []
    for b in range(Bn):
        m = _unit(metric[b])
        scores = m[ia] @ m[ib].T                         # (|A|, |B|)
        for i in range(P):                               # protected: CLS row, dist/register rows and columns
            if i % 2 == 0:
                scores[i // 2, :] = -np.inf
            else:
                scores[:, i // 2] = -np.inf
        best_idx = np.argmax(scores, axis=1)             # ties -> lowest b
        best_val = scores[np.arange(len(ia)), best_idx]
        order = np.argsort(-best_val, kind="stable")
        src, unm = order[:r], np.sort(order[r:])
        num = size[b, ib, None] * x[b, ib]               # (|B|, C)
        new_size = size[b, ib].copy()
        for s in src:
            t, g = best_idx[s], ia[s]
            num[t] += size[b, g] * x[b, g]
            new_size[t] += size[b, g]
        xs.append(np.concatenate([x[b, ia[unm]], num / new_size[:, None]], axis=0))
        ss.append(np.concatenate([size[b, ia[unm]], new_size]))
    return np.stack(xs), np.stack(ss)


def ref_mass(x_out, size_out):
    """Conservation quantities: (sum_t size_t, sum_t size_t x_t) per batch item."""
    x_out, size_out = _f64(x_out, size_out)
    return size_out.sum(axis=1), (size_out[..., None] * x_out).sum(axis=1)

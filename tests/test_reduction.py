"""Token reduction: each method against the independent NumPy float64 reference, identities,
conservation, and the model-level behaviour (exact backbone at keep 1.0, static shapes, grads)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference_reduction import ref_drop, ref_evit, ref_mass, ref_tome, ref_tpm

import tpm_jax
from tpm_jax import reduction
from tpm_jax.config import ReductionConfig

TINY = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=10)


def _inputs(P, N=23, B=3, C=8, seed=0, unit_sizes=False):
  rs = np.random.RandomState(seed)
  x = rs.randn(B, N, C).astype(np.float32)
  a = rs.dirichlet(np.ones(N), size=B).astype(np.float32)  # like a softmax row
  metric = rs.randn(B, N, 5).astype(np.float32)
  sizes = np.ones((B, N), np.float32) if unit_sizes else rs.randint(1, 5, (B, N)).astype(np.float32)
  return x, a, metric, sizes


def _run(method, x, a, metric, sizes, P, k, **cfg):
  cfg = ReductionConfig(method=method, **cfg)
  return reduction.get(method)(jnp.asarray(x), jnp.asarray(a), jnp.asarray(metric), jnp.asarray(sizes),
                               num_protected=P, k=k, cfg=cfg)


def _close(ours, ref, tol=1e-5):
  np.testing.assert_allclose(np.asarray(ours, np.float64), ref, atol=tol, rtol=tol)


TPM_CASES = [(P, k, assign, weight) for P in (1, 2) for k in (1, 7, 15)
             for assign, weight in [('hard', 'importance'), ('hard', 'size'), ('hard', 'uniform'), ('soft', 'importance'),
                                    ('soft', 'size')]]
TPM_CASES += [(P, k, 'hard', 'importance') for P in (0, 5) for k in (1, 7, 15)]  # no class token; registers


@pytest.mark.parametrize('P, k, assign, weight', TPM_CASES)
def test_tpm_matches_reference(P, k, assign, weight):
  x, a, metric, sizes = _inputs(P, seed=k)
  out = _run('tpm', x, a, metric, sizes, P, k, assign=assign, weight=weight, tau=0.5)
  rx, rs = ref_tpm(x, a, metric, sizes, P, k, assign=assign, tau=0.5, weight=weight)
  _close(out.tokens, rx)
  _close(out.sizes, rs)


@pytest.mark.parametrize('P, k, weight, distinct', [(0, 7, 'size', 1.0), (1, 3, 'importance', 0.5), (1, 7, 'size', 1.0),
                                                    (2, 15, 'importance', 3.0), (5, 7, 'size', 1.0)])
def test_tpm_ranked_with_distinctness_matches_reference(P, k, weight, distinct):
  """``distinct``: crucial tokens ranked by a / mean(a) + l * d / mean(d) (tests/reference_reduction.py
  ref_rank, loops in float64); on these inputs it keeps other tokens than attention alone."""
  x, a, metric, sizes = _inputs(P, seed=k + 100)
  out = _run('tpm', x, a, metric, sizes, P, k, weight=weight, distinct=distinct)
  rx, rs = ref_tpm(x, a, metric, sizes, P, k, weight=weight, distinct=distinct)
  _close(out.tokens, rx)
  _close(out.sizes, rs)
  plain = _run('tpm', x, a, metric, sizes, P, k, weight=weight)
  assert not np.array_equal(np.sort(np.asarray(out.kept), -1), np.sort(np.asarray(plain.kept), -1))


@pytest.mark.parametrize('P', [0, 1, 2, 5])
@pytest.mark.parametrize('k', [1, 9, 15])
def test_drop_and_evit_match_reference(P, k):
  x, a, metric, sizes = _inputs(P, seed=k)
  out = _run('drop', x, a, metric, sizes, P, k)
  rx, rs = ref_drop(x, a, sizes, P, k)
  _close(out.tokens, rx), _close(out.sizes, rs)
  out = _run('evit', x, a, metric, sizes, P, k)
  rx, rs = ref_evit(x, a, sizes, P, k)
  _close(out.tokens, rx), _close(out.sizes, rs)


def _tome_reference_order(rx, rs, P, N, r):
  """The reference keeps ToMe's order; we move the protected tokens (distillation, registers) back in front."""
  if P <= 1:
    return rx, rs
  n_unm = (N + 1) // 2 - r
  front = [i // 2 if i % 2 == 0 else n_unm + i // 2 for i in range(P)]
  perm = front + [j for j in range(N - r) if j not in front]
  return rx[:, perm], rs[:, perm]


@pytest.mark.parametrize('P', [0, 1, 2, 5])
@pytest.mark.parametrize('N, r', [(23, 1), (23, 5), (24, 11), (24, 8)])
def test_tome_matches_reference(P, N, r):
  x, a, metric, sizes = _inputs(P, N=N, seed=r)
  r = min(r, (N - P) // 2)  # ToMe's cap, which the model's schedule applies before calling it
  out = _run('tome', x, a, metric, sizes, P, N - P - r)
  rx, rs = _tome_reference_order(*ref_tome(x, metric, sizes, P, r), P, N, r)
  _close(out.tokens, rx), _close(out.sizes, rs)
  np.testing.assert_array_equal(np.asarray(out.tokens[:, :P]), x[:, :P])  # protected stay in front


@pytest.mark.parametrize('method', ['tpm', 'evit', 'drop', 'tome'])
def test_assignment_and_kept_describe_the_output(method):
  """Re-deriving each output token from `assignment` (size-weighted) gives the output sizes;
  `kept` tokens land where they say."""
  P, k = 1, 10
  x, a, metric, sizes = _inputs(P, seed=3)
  out = _run(method, x, a, metric, sizes, P, k)
  assign, N_out = np.asarray(out.assignment), out.tokens.shape[1]
  assert assign.shape == sizes.shape and assign.max() < N_out
  if method != 'drop':
    assert (assign >= 0).all()
    per_dest = np.stack([np.bincount(assign[b], weights=sizes[b], minlength=N_out) for b in range(len(sizes))])
    if method != 'evit':  # hard assignment: sizes are exactly the sums over each destination
      _close(out.sizes, per_dest)
  kept = np.asarray(out.kept)
  for b in range(len(x)):
    for j in kept[b]:
      if method in ('drop', 'evit'):
        np.testing.assert_array_equal(np.asarray(out.tokens[b, assign[b, j]]), x[b, j])


@pytest.mark.parametrize('method', ['tpm', 'evit', 'tome'])
def test_merging_conserves_mass(method):
  P, k = 1, 8
  x, a, metric, sizes = _inputs(P, seed=5)
  for assign in ('hard', 'soft'):
    out = _run(method, x, a, metric, sizes, P, k, assign=assign, weight='size')
    total, weighted = ref_mass(out.tokens, out.sizes)
    np.testing.assert_allclose(total, sizes.sum(1), rtol=1e-6)
    if method in ('tpm', 'tome'):  # size-weighted token sum is conserved exactly by the average
      np.testing.assert_allclose(weighted, (sizes[..., None] * x).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('method', ['tpm', 'evit', 'drop', 'tome'])
@pytest.mark.parametrize('distilled', [False, True])
def test_keep_rate_one_is_the_backbone_exactly(method, distilled):
  base = tpm_jax.create_model('vit_custom', distilled=distilled, **TINY)
  red = dict(method=method, keep_rate=1.0, r=0, locations=(0, 2))
  model = tpm_jax.create_model('vit_custom', distilled=distilled, reduction=red, **TINY)
  nnx.update(model, nnx.state(base, nnx.Param))
  x = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3), jnp.float32)
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(base(x)))


@pytest.mark.parametrize('multiscale', ['pool', 'cross', dict(method='cross', source='patch')])
def test_fresh_multiscale_is_the_backbone_exactly(multiscale):
  base = tpm_jax.create_model('vit_custom', **TINY)
  model = tpm_jax.create_model('vit_custom', multiscale=multiscale, reduction=dict(method='tpm', keep_rate=1.0), **TINY)
  nnx.update(model, nnx.state(base, nnx.Param))
  x = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3), jnp.float32)
  np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(base(x)))


def test_token_schedule_deit_small():
  assert str(tpm_jax.token_schedule('deit_small_patch16_224', reduction=dict(method='tpm', keep_rate=0.7))) == \
      '197 -> 139 -> 98 -> 69'
  s = tpm_jax.token_schedule('deit_small_patch16_224', reduction=dict(method='evit', keep_rate=0.7))
  assert s.stages == [197, 140, 100, 72]
  s = tpm_jax.token_schedule('deit_small_patch16_224', reduction=dict(method='tome', r=8))
  assert s.stages == [197 - 8 * i for i in range(13)]
  assert s.per_block[0] == (197, 189)


ALL = [dict(method='tpm'), dict(method='tpm', assign='soft', weight='size', similarity='tokens', prop_attn=True),
       dict(method='evit'), dict(method='drop'), dict(method='tome', r=3)]


@pytest.mark.parametrize('red', ALL, ids=lambda r: '-'.join(str(v) for v in r.values()))
def test_one_trace_static_shapes_finite_grads(red):
  model = tpm_jax.create_model('vit_custom', reduction=dict(red, locations=red.get('locations', (1, 2)) if red['method'] != 'tome' else None),
                               multiscale='pool', drop_path_rate=0.1, **TINY)
  graphdef, state = nnx.split(model)
  traces = []

  @jax.jit
  def loss_and_grad(state, x, y):
    traces.append(1)

    def loss(model):
      logits, aux = model(x, train=True, return_aux=True)
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y]), aux
    (l, aux), g = nnx.value_and_grad(loss, has_aux=True)(nnx.merge(graphdef, state))
    return l, g, aux

  for seed in range(3):
    rs = np.random.RandomState(seed)
    l, g, aux = loss_and_grad(state, jnp.asarray(rs.randn(4, 32, 32, 3), jnp.float32), jnp.asarray(rs.randint(0, 10, 4)))
    assert np.isfinite(float(l))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(g))
  assert len(traces) == 1
  expected = [n for _, _, n in model.reduction.schedule(1, 64)]
  assert [a['sizes'].shape[1] for a in aux] == expected
  # the multi-scale projections receive gradient although they start at zero
  assert float(jnp.abs(g['multiscale']['proj'][0]['kernel'][...]).sum()) > 0

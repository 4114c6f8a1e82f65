"""count_flops: the analytic multiply-adds (paper convention) against XLA's own count."""
import pytest
from flax import nnx

import tpm_jax
from tpm_jax.flops import analytic_macs

METHODS = [dict(method='none'), dict(method='tpm'), dict(method='evit'), dict(method='drop'),
           dict(method='tpm', similarity='tokens', assign='soft'), dict(method='tpm', multiscale='cross')]


def _model(name, red, keep):
  red = dict(red)
  ms = red.pop('multiscale', 'none')
  if red['method'] != 'none':
    red['keep_rate'] = keep
  return nnx.eval_shape(lambda: tpm_jax.create_model(name, reduction=red, multiscale=ms))


def _flops(name, red, keep, compile=False):
  return tpm_jax.count_flops(_model(name, red, keep), compile=compile)


def _gmacs(name, red, keep):  # the analytic count alone (no program lowered)
  return analytic_macs(_model(name, red, keep)) / 1e9


@pytest.mark.parametrize('red', [dict(method='tpm'), dict(method='tome', r=13), dict(method='evit', multiscale='cross')])
def test_compiled_and_lowered_counts_agree(red):
  """The sweeps below analyse the lowered program (10x faster); XLA's compiled count is the same, up to
  the elementwise work its optimisations move (0.13-0.2% with JAX 0.12's XLA, under 0.1% with 0.10's)."""
  a = _flops('deit_tiny_patch16_224', red, 0.6, compile=True)  # (the model's size does not matter here)
  b = _flops('deit_tiny_patch16_224', red, 0.6, compile=False)
  assert a['xla_gflops'] == pytest.approx(b['xla_gflops'], rel=5e-3)
  assert a['xla_matmul_gflops'] == b['xla_matmul_gflops']


def test_deit_small_reference_numbers():
  assert _gmacs('deit_small_patch16_224', dict(method='none'), 1.0) == pytest.approx(4.6, abs=0.01)
  for method in ('tpm', 'evit', 'drop'):
    assert _gmacs('deit_small_patch16_224', dict(method=method), 0.7) == pytest.approx(3.0, abs=0.05)
  plain = _gmacs('deit_small_patch16_224', dict(method='tpm'), 0.7)
  for ms in ('pool', 'cross'):
    extra = _gmacs('deit_small_patch16_224', dict(method='tpm', multiscale=ms), 0.7) - plain
    assert 0 < extra <= 0.1


@pytest.mark.parametrize('name, tol, keeps', [('deit_tiny_patch16_224', 0.06, (0.8,)),
                                              ('deit_small_patch16_224', 0.03, (0.5, 0.7))])
def test_analytic_agrees_with_xla(name, tol, keeps):
  """The matmuls of the program XLA compiles match the analytic count within 3% (in fact 0.01%).
  XLA's cost_analysis total adds the elementwise ops the papers' convention leaves out (exact GELU
  alone is 64 XLA flops per element): within 3% for DeiT-S (and B), 6% for DeiT-T (width 192).
  The compute *saved* by each method must agree within 1% between the counts. Every keep rate of
  the grid's ends on DeiT-S, one keep rate on DeiT-T (the same formulas at another width; DeiT-B's
  width adds nothing the two do not check, and took 15 s)."""
  base = _flops(name, dict(method='none'), 1.0)
  for red in METHODS[1:]:
    for keep in keeps:
      f = _flops(name, red, keep)
      assert f['xla_matmul_gflops'] / (2 * f['analytic_gmacs']) == pytest.approx(1.0, abs=0.03), (red, keep, f)
      assert f['xla_gflops'] / (2 * f['analytic_gmacs']) == pytest.approx(1.0, abs=tol), (red, keep, f)
      ratio_xla = f['xla_gflops'] / base['xla_gflops']
      ratio_analytic = f['analytic_gmacs'] / base['analytic_gmacs']
      assert ratio_xla == pytest.approx(ratio_analytic, rel=0.01), (red, keep)
      assert ratio_analytic < 0.5 + 0.5 * keep  # later blocks really are shorter


@pytest.mark.parametrize('similarity', ['keys', 'tokens'])
def test_tpm_ranked_with_distinctness_costs_what_the_count_says(similarity):
  """``reduction.distinct``: the similarity of every prunable token to every other one, at each
  location, is in the analytic count exactly as XLA's matmuls have it."""
  plain = _flops('deit_tiny_patch16_224', dict(method='tpm', similarity=similarity, distinct=0.0), 0.7)
  ranked = _flops('deit_tiny_patch16_224', dict(method='tpm', similarity=similarity, distinct=1.0), 0.7)
  extra = ranked['analytic_gmacs'] - plain['analytic_gmacs']
  d = 64 if similarity == 'keys' else 192  # head dim (keys averaged over heads) or width
  assert extra * 1e9 == pytest.approx(sum(m * m * d for m in (196, 138, 97)))  # prunable tokens at blocks 3, 6, 9
  assert ranked['xla_matmul_gflops'] - plain['xla_matmul_gflops'] == pytest.approx(2 * extra, rel=1e-3)


def test_tome_flops():
  for name in ('deit_tiny_patch16_224', 'deit_small_patch16_224'):
    base = _flops(name, dict(method='none'), 1.0)
    f = _flops(name, dict(method='tome', r=13), 1.0)
    assert f['analytic_gmacs'] < 0.65 * base['analytic_gmacs']
    assert f['xla_matmul_gflops'] / (2 * f['analytic_gmacs']) == pytest.approx(1.0, abs=0.03)
    assert f['xla_gflops'] / base['xla_gflops'] == pytest.approx(f['analytic_gmacs'] / base['analytic_gmacs'], rel=0.01)


def test_count_flops_at_another_image_size():
  model = nnx.eval_shape(lambda: tpm_jax.create_model('deit_small_patch16_224', reduction='tpm'))
  f384 = tpm_jax.count_flops(model, img_size=384, compile=False)
  assert f384['analytic_gmacs'] > 2.5 * tpm_jax.count_flops(model, compile=False)['analytic_gmacs']


@pytest.mark.parametrize('name, pool', [('vit_base_patch16_siglip_224', {}), ('vit_base_patch16_siglip_gap_224', {}),
                                        ('vit_small_patch14_reg4_dinov2', {}), ('vit_base_patch16_clip_224', {}),
                                        ('vit_small_patch14_reg4_dinov2', dict(global_pool='map'))])
def test_analytic_counts_every_matmul_of_the_families(name, pool):
  """The MAP head (also beside a class token and registers, which it does not pool), registers, the
  pseudo class token, pre-norm: the analytic count equals the matmuls of XLA's program (small models,
  before XLA's optimisations)."""
  for red in (dict(method='none'), dict(method='tpm', keep_rate=0.5, locations=(1,)),
              dict(method='tome', r=20, locations=(1, 2))):
    model = tpm_jax.create_model(name, reduction=red, depth=3, embed_dim=48, num_heads=3, img_size=32, patch_size=4,
                                 **pool)
    f = tpm_jax.count_flops(model, compile=False)
    assert f['xla_matmul_gflops'] / (2 * f['analytic_gmacs']) == pytest.approx(1.0, abs=0.01), (red, f)

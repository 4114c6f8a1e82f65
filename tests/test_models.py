"""Backbone behaviour that does not need timm: tracing, dtypes, stochastic depth, config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tpm_jax
from tpm_jax import ConfigError

TINY = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=10)


def _jit_forward(model, counter):
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, x):
    counter.append(1)  # runs once per trace
    return nnx.merge(graphdef, state)(x)
  return lambda x: forward(state, x)


def test_one_trace_per_model_config():
  for distilled in (False, True):
    traces = []
    fwd = _jit_forward(tpm_jax.create_model('vit_custom', distilled=distilled, **TINY), traces)
    for seed in range(3):
      out = fwd(jnp.asarray(np.random.RandomState(seed).randn(4, 32, 32, 3), jnp.float32))
      assert out.shape == (4, 10)
    assert len(traces) == 1


def test_bfloat16_forward_close_to_float32():
  x = jnp.asarray(np.random.RandomState(0).randn(4, 32, 32, 3), jnp.float32)
  f32 = tpm_jax.create_model('vit_custom', **TINY)
  bf16 = tpm_jax.create_model('vit_custom', dtype=jnp.bfloat16, **TINY)
  nnx.update(bf16, nnx.state(f32, nnx.Param))
  assert all(v.dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(bf16, nnx.Param)))
  a, b = np.asarray(f32(x)), np.asarray(bf16(x))
  assert b.dtype == np.float32 and not np.array_equal(a, b)  # really computed in bf16
  assert np.abs(a - b).max() <= 0.05 * np.abs(a).max() + 1e-3


def test_stochastic_depth_only_in_training():
  model = tpm_jax.create_model('vit_custom', drop_path_rate=0.5, **TINY)
  x = jnp.asarray(np.random.RandomState(0).randn(8, 32, 32, 3), jnp.float32)
  np.testing.assert_array_equal(model(x), model(x, train=False))
  a, b = model(x, train=True), model(x, train=True)
  assert not np.allclose(a, b)  # fresh masks each call
  # timm's linear rule: block i drops with rate i / (depth - 1) * drop_path_rate
  rates = [blk.drop_path1.dropout.rate for blk in model.blocks]
  np.testing.assert_allclose(rates, np.linspace(0, 0.5, 4))


def test_overrides_and_names():
  m = tpm_jax.create_model('deit_small_patch16_224', num_classes=7, img_size=112, depth=2, rngs=nnx.Rngs(3))
  assert m.cfg.embed_dim == 384 and m.cfg.num_heads == 6 and m.cfg.depth == 2
  assert m.pos_embed.shape == (1, 1 + 7 * 7, 384) and m.head.kernel.shape == (384, 7)
  assert 'deit_base_distilled_patch16_224' in tpm_jax.list_models()


@pytest.mark.parametrize('kwargs, match', [
    (dict(name='deit_huge'), r"model.name='deit_huge' is not accepted: expected one of .*deit_tiny_patch16_224"),
    (dict(img_size=30), r'model.img_size=30 is not accepted: expected a multiple of model.patch_size=4'),
    (dict(embed_dim=50), r'model.embed_dim=50 .* multiple of model.num_heads=3'),
    (dict(reduction='prune'), r"reduction.method='prune' is not accepted: expected one of 'none', 'tpm'"),
    (dict(reduction=dict(method='tpm', keep_rate=1.5)), r'reduction.keep_rate=1.5 .*\(0, 1\]'),
    (dict(reduction=dict(method='tpm', locations=(1, 9))), r'reduction.locations=\(1, 9\) .*\[0, 4\)'),
    (dict(reduction=dict(method='tpm', locations=(2, 1))), r'reduction.locations=\(2, 1\) .*strictly increasing'),
    (dict(reduction=dict(method='tpm', locations=(1, 2), keep_rate=(0.5, 0.6, 0.7))), r'reduction.keep_rate=.* one per location \(2 locations'),
    (dict(reduction=dict(method='tpm', keep=0.5)), r'reduction.keep is not a known field: accepted fields are assign, distinct, keep_rate'),
    (dict(multiscale='pyramid'), r"multiscale.method='pyramid' is not accepted: expected one of 'none', 'pool', 'cross'"),
    (dict(reduction=dict(method='drop', distinct=2.0)), r"reduction.distinct=2.0 is not accepted: expected 0 for method 'drop'"),
    (dict(reduction=dict(method='tpm', distinct=-1.0)), r'reduction.distinct=-1.0 is not accepted: expected a float in \[0, 1e6\]'),
    (dict(reduction=dict(method='tpm', distinct=1e308)), r'reduction.distinct=1e\+308 is not accepted'),  # inf in float32
])
def test_bad_config_gives_one_line_naming_the_field(kwargs, match):
  kwargs = dict(kwargs)
  name = kwargs.pop('name', 'vit_custom')
  with pytest.raises(ConfigError, match=match) as e:
    tpm_jax.create_model(name, **{**TINY, **kwargs})
  assert '\n' not in str(e.value)


def _sincos_reference(grid, width):
  """big_vision's 2-D sin-cos table (models/vit.py posemb_sincos_2d), written out as loops in
  float64: for token (row i, column j) and frequency w_f = 10000 ** (-f / (width/4 - 1)), the
  features are [sin(j w_f)]_f, [cos(j w_f)]_f, [sin(i w_f)]_f, [cos(i w_f)]_f."""
  q = width // 4
  out = np.zeros((grid * grid, width))
  for i in range(grid):
    for j in range(grid):
      for f in range(q):
        w = 10000.0 ** (-f / (q - 1))
        t = i * grid + j
        out[t, f], out[t, q + f], out[t, 2 * q + f], out[t, 3 * q + f] = (
            np.sin(j * w), np.cos(j * w), np.sin(i * w), np.cos(i * w))
  return out


def test_sincos2d_pos_embed_init():
  kw = dict(TINY, num_classes=10)
  sincos = tpm_jax.create_model('vit_custom', pos_embed_init='sincos2d', rngs=nnx.Rngs(0), **kw)
  plain = tpm_jax.create_model('vit_custom', rngs=nnx.Rngs(0), **kw)
  grid, width = sincos.cfg.grid_size, sincos.cfg.embed_dim
  pos = np.asarray(sincos.pos_embed[...], np.float64)[0]
  np.testing.assert_array_equal(pos[:1], 0.0)  # CLS gets no position
  np.testing.assert_allclose(pos[1:], _sincos_reference(grid, width), atol=1e-6)
  assert np.abs(np.asarray(plain.pos_embed[...])).max() < 0.05  # timm's trunc_normal(0.02) stays the default
  # only the position embedding differs: every other parameter is drawn as before
  a, b = nnx.to_flat_state(nnx.state(sincos, nnx.Param)), nnx.to_flat_state(nnx.state(plain, nnx.Param))
  differ = [p for (p, x), (_, y) in zip(a, b) if not np.array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()))]
  assert differ == [('pos_embed',)]
  # it is the same learnable timm parameter: a distilled model puts zeros under both prefix tokens
  dist = tpm_jax.create_model('vit_custom', pos_embed_init='sincos2d', distilled=True, **kw)
  np.testing.assert_array_equal(np.asarray(dist.pos_embed[...])[0, :2], 0.0)
  with pytest.raises(ConfigError, match=r"model.pos_embed_init='sincos' is not accepted: expected one of 'trunc_normal', 'sincos2d'"):
    tpm_jax.create_model('vit_custom', pos_embed_init='sincos', **kw)
  with pytest.raises(ConfigError, match=r"model.embed_dim=54 is not accepted: expected a multiple of 4 for model.pos_embed_init='sincos2d'"):
    tpm_jax.create_model('vit_custom', pos_embed_init='sincos2d', **dict(kw, embed_dim=54))

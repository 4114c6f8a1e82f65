"""The reductions on the model families without a class token (SigLIP's MAP head, GAP ViTs) and with
registers (DINOv2, reg4 GAP): exact at keep 1.0, registers protected, size-weighted pooling and the
pseudo class token's importance against NumPy float64."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tpm_jax

SMALL = dict(depth=3, embed_dim=48, num_heads=3, img_size=32, patch_size=4, num_classes=7)
FAMILIES = ['vit_base_patch16_siglip_224', 'vit_base_patch16_siglip_gap_224', 'vit_small_patch14_reg4_dinov2',
            'vit_medium_patch16_reg4_gap_256']
METHODS = [dict(method='tpm', keep_rate=1.0), dict(method='evit', keep_rate=1.0), dict(method='drop', keep_rate=1.0),
           dict(method='tome', r=0)]


def _model(name, reduction=None, **kw):
  return tpm_jax.create_model(name, reduction=reduction, **dict(SMALL, **kw))


def _moved(model, seed=0):  # every parameter off its initial value (LayerScale's 1e-5, unit norms)
  rs = np.random.RandomState(seed)
  for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    v.set_value(v[...] + 0.1 * rs.randn(*v.shape).astype(np.float32))
  return model


def _images(n=2, seed=1):
  return jnp.asarray(np.random.RandomState(seed).randn(n, 32, 32, 3).astype(np.float32))


@pytest.mark.parametrize('name', FAMILIES)
def test_every_method_at_keep_1_is_the_unpruned_model_exactly(name):
  """Every method on the MAP head and on registers without a class token; the merging ones on the rest."""
  x = _images()
  base = tpm_jax.jit_forward(_moved(_model(name)))(x)
  methods = METHODS if name in (FAMILIES[0], FAMILIES[3]) else [m for m in METHODS if m['method'] in ('tpm', 'tome')]
  for red in methods:
    model = _moved(_model(name, dict(red, locations=(1,))))
    np.testing.assert_array_equal(np.asarray(tpm_jax.jit_forward(model)(x)), np.asarray(base), err_msg=str(red))


@pytest.mark.parametrize('method', ['tpm', 'evit', 'drop', 'tome'])
def test_registers_are_protected(method):
  """At keep 0.5 the 4 registers of a reg4 model leave every reduction bit-exact, in front."""
  red = dict(method=method, keep_rate=0.5, locations=(1,)) if method != 'tome' else dict(method='tome', r=32,
                                                                                         locations=(1,))
  model = _moved(_model('vit_medium_patch16_reg4_gap_256', red))
  x = model.embed(_images())
  blk = model.blocks[1]
  h = x + blk.ls1(blk.attn(blk.norm1(x)))
  sizes = jnp.ones(x.shape[:2])
  with_extras = blk.attn(blk.norm1(x), return_extras=True, query_weights=model._importance_weights(sizes))
  tokens, (_, out) = model._reduce(1, sizes, h, with_extras[1], with_extras[2])
  assert tokens.shape[1] == 4 + model.keep[1] + (method == 'evit')  # EViT's fused token
  np.testing.assert_array_equal(np.asarray(tokens[:, :4]), np.asarray(h[:, :4]))
  np.testing.assert_array_equal(np.asarray(out.sizes[:, :4]), 1.0)


def test_pseudo_class_token_attention_matches_numpy():
  """Without a class token, tokens are ranked by the attention row of the size-weighted mean query of
  the patch tokens (registers excluded), softmax(scale q_ref . k + log size) in float64."""
  model = _moved(_model('vit_medium_patch16_reg4_gap_256'))
  attn = model.blocks[0].attn
  rs = np.random.RandomState(3)
  x = rs.randn(2, 20, 48).astype(np.float32)
  sizes = rs.randint(1, 4, (2, 20)).astype(np.float32)
  weights = np.asarray(model._importance_weights(jnp.asarray(sizes)))
  _, row, _ = attn(jnp.asarray(x), size_bias=jnp.log(sizes), return_extras=True, query_weights=jnp.asarray(weights))
  W, b = np.asarray(attn.qkv.kernel[...], np.float64), np.asarray(attn.qkv.bias[...], np.float64)
  q, k, _ = np.split(x.astype(np.float64) @ W + b, 3, axis=-1)
  q, k = q.reshape(2, 20, 3, 16), k.reshape(2, 20, 3, 16)
  w = sizes * (np.arange(20) >= 4)
  q_ref = np.einsum('bn,bnhd->bhd', w / w.sum(1, keepdims=True), q)
  logits = np.einsum('bhd,bkhd->bhk', q_ref, k) / 4.0 + np.log(sizes)[:, None]
  ref = np.exp(logits - logits.max(-1, keepdims=True))
  ref /= ref.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(row, np.float64), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['vit_base_patch16_siglip_224', 'vit_base_patch16_siglip_gap_224'])
def test_a_merged_token_pools_like_the_patches_it_stands_for(name):
  """A token of size s pools (average, or the MAP head with proportional attention) exactly as s
  copies of it: [t1 (size 2), t2, t3] == [t1, t1, t2, t3] at size 1, in float64 terms."""
  model = _moved(_model(name, dict(method='tpm', keep_rate=0.5, locations=(1,))))
  rs = np.random.RandomState(4)
  t = rs.randn(2, 3, 48).astype(np.float32)
  merged = model.pool(jnp.asarray(t), jnp.asarray(np.array([[2.0, 1.0, 1.0]] * 2, np.float32)))
  copies = np.concatenate([t[:, :1], t], axis=1)
  spelled_out = model.pool(jnp.asarray(copies), jnp.ones((2, 4), jnp.float32))
  np.testing.assert_allclose(np.asarray(merged), np.asarray(spelled_out), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(merged), np.asarray(model.pool(jnp.asarray(t), jnp.ones((2, 3)))), atol=1e-4)


def test_families_train_a_step_with_finite_gradients():
  """The reductions' gradients through the new heads and registers (one step, keep 0.5)."""
  for name in ('vit_base_patch16_siglip_224', 'vit_small_patch14_reg4_dinov2'):
    model = _moved(_model(name, dict(method='tpm', keep_rate=0.5, locations=(1,))))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, x):
      return nnx.merge(graphdef, params, rest)(x).sum()

    leaves = jax.tree.leaves(jax.jit(jax.grad(loss))(params, _images()))
    assert leaves and all(np.isfinite(np.asarray(g)).all() for g in leaves), name

"""The attention block (``jax.nn.dot_product_attention``, the CLS row computed on its own at
reduction locations) and the exact GELU with its own gradient, against float64 NumPy references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tpm_jax.models import vit


def reference_attention(x, w_qkv, b_qkv, w_proj, b_proj, heads, bias=None):
  """Multi-head self-attention in float64: (output, CLS row of the probabilities, keys)."""
  x, w_qkv, b_qkv, w_proj, b_proj = (np.asarray(a, np.float64) for a in (x, w_qkv, b_qkv, w_proj, b_proj))
  B, N, C = x.shape
  hd = C // heads
  qkv = (x @ w_qkv + b_qkv).reshape(B, N, 3, heads, hd)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(hd)
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)[:, None, None, :]
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = np.einsum('bhqk,bkhd->bqhd', p, v).reshape(B, N, C) @ w_proj + b_proj
  return out, p[:, :, 0, :], k


def _attention_and_reference(extras, with_bias, seed=0):
  rs = np.random.RandomState(seed)
  B, N, C, H = 3, 17, 48, 3
  attn = vit.Attention(C, H, dtype=jnp.float32, rngs=nnx.Rngs(seed))
  x = rs.randn(B, N, C).astype(np.float32)
  bias = np.log(rs.randint(1, 6, (B, N)).astype(np.float32)) if with_bias else None
  got = attn(jnp.asarray(x), size_bias=None if bias is None else jnp.asarray(bias), return_extras=extras)
  ref = reference_attention(x, attn.qkv.kernel[...], attn.qkv.bias[...], attn.proj.kernel[...], attn.proj.bias[...],
                            H, bias)
  return got, ref


def _close(a, ref, tol=1e-5):
  a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
  assert np.linalg.norm(a - ref) / np.linalg.norm(ref) < tol, np.linalg.norm(a - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize('with_bias', [False, True])
def test_attention_matches_float64_reference(with_bias):
  out, (ref_out, _, _) = _attention_and_reference(False, with_bias)
  _close(out, ref_out)


@pytest.mark.parametrize('with_bias', [False, True])
def test_attention_at_a_reduction_location_matches_float64_reference(with_bias):
  (out, cls_row, keys), (ref_out, ref_cls, ref_keys) = _attention_and_reference(True, with_bias, seed=1)
  _close(out, ref_out)
  _close(cls_row, ref_cls)
  _close(keys, ref_keys)
  np.testing.assert_allclose(np.asarray(cls_row).sum(-1), 1.0, atol=1e-6)  # a probability row per head


def test_the_bias_changes_the_output():
  """Proportional attention's log-size really reaches the fused op (a wrong broadcast or a dropped
  bias would leave the output unchanged)."""
  (plain, _), (biased, _) = _attention_and_reference(False, False, seed=2), _attention_and_reference(False, True, seed=2)
  assert np.abs(np.asarray(plain) - np.asarray(biased)).max() > 1e-3


def test_blocks_use_the_fused_attention(monkeypatch):
  calls = []
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, 'dot_product_attention', lambda *a, **k: calls.append(k) or real(*a, **k))
  model = vit.VisionTransformer(vit.ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3),
                                reduction=dict(method='tpm', keep_rate=0.5, locations=(1,)), rngs=nnx.Rngs(0))
  model(jnp.zeros((2, 32, 32, 3)))
  assert len(calls) == 3  # every block, the reduction location included
  assert [c['bias'] is None for c in calls] == [True, True, False]  # prop_attn's log(size) after the reduction


def _gelu64(x):
  x = np.asarray(x, np.float64)
  erf = np.vectorize(math.erf)
  cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
  return x * cdf, cdf + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def test_gelu_and_its_gradient_match_float64(xla_own_codegen):
  x = np.random.RandomState(0).randn(4096).astype(np.float32) * 4
  value, grad = _gelu64(x)
  np.testing.assert_allclose(np.asarray(vit.gelu(jnp.asarray(x))), value, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.grad(lambda v: vit.gelu(v).sum())(jnp.asarray(x))), grad, rtol=1e-6, atol=1e-6)
  # the same values as JAX's exact GELU, so timm parity is untouched
  exact = lambda v: jax.nn.gelu(v, approximate=False)
  np.testing.assert_array_equal(np.asarray(jax.jit(vit.gelu, compiler_options=xla_own_codegen)(x)),
                                np.asarray(jax.jit(exact, compiler_options=xla_own_codegen)(x)))


def _torch_attention(torch, x, w_qkv, b_qkv, w_proj, b_proj, heads, bias):
  """timm's attention in torch float64 (independent of ours): (output, CLS row, keys)."""
  B, N, C = x.shape
  hd = C // heads
  q, k, v = (x @ w_qkv + b_qkv).reshape(B, N, 3, heads, hd).unbind(2)
  logits = torch.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(hd)
  if bias is not None:
    logits = logits + bias[:, None, None, :]
  p = torch.softmax(logits, -1)
  return torch.einsum('bhqk,bkhd->bqhd', p, v).reshape(B, N, C) @ w_proj + b_proj, p[:, :, 0, :], k


@pytest.mark.parametrize('extras', [False, True])
@pytest.mark.parametrize('with_bias', [False, True])
def test_attention_gradients_match_float64_torch(with_bias, extras):
  """The gradient of the attention (recomputed in the backward pass, ``recompute_in_backward``)
  with respect to the tokens, the size bias and the weights, against torch float64 autograd; at a
  reduction location through the CLS row and the keys too."""
  torch = pytest.importorskip('torch')
  rs = np.random.RandomState(3)
  B, N, C, H = 2, 13, 48, 3
  attn = vit.Attention(C, H, dtype=jnp.float32, rngs=nnx.Rngs(3))
  x = rs.randn(B, N, C).astype(np.float32)
  bias = np.log(rs.randint(1, 6, (B, N)).astype(np.float32)) if with_bias else None
  ws = [rs.randn(B, N, C), rs.randn(B, H, N), rs.randn(B, N, H, C // H)]

  def loss(attn, x, bias):
    out = attn(x, size_bias=bias, return_extras=extras)
    outs = out if extras else (out,)
    return sum((o * w).sum() for o, w in zip(outs, ws))

  argnums = (0, 1, 2) if with_bias else (0, 1)
  grads = jax.jit(nnx.grad(loss, argnums=argnums))(attn, jnp.asarray(x), None if bias is None else jnp.asarray(bias))

  t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
  tx, tb = t(x), (None if bias is None else t(bias))
  params = [t(attn.qkv.kernel[...]), t(attn.qkv.bias[...]), t(attn.proj.kernel[...]), t(attn.proj.bias[...])]
  outs = _torch_attention(torch, tx, *params, H, tb)[:3 if extras else 1]
  sum((o * torch.tensor(w)).sum() for o, w in zip(outs, ws)).backward()
  _close(grads[1], tx.grad.numpy())
  if with_bias:
    _close(grads[2], tb.grad.numpy())
  g = grads[0]
  for got, ref in zip([g['qkv']['kernel'], g['qkv']['bias'], g['proj']['kernel'], g['proj']['bias']], params):
    _close(got[...], ref.grad.numpy())


def test_layer_norm_and_its_gradient_match_float64_torch():
  """``vit.LayerNorm`` (its own gradient, keeping the normalised tokens) against torch float64
  layer_norm: values and the gradients of the tokens, the scale and the bias; the same values as
  Flax's ``nnx.LayerNorm``, so checkpoints and timm parity are untouched."""
  torch = pytest.importorskip('torch')
  rs = np.random.RandomState(4)
  D = 40
  norm = vit.LayerNorm(D, epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  norm.scale[...] = jnp.asarray(rs.randn(D).astype(np.float32))
  norm.bias[...] = jnp.asarray(rs.randn(D).astype(np.float32))
  x = (rs.randn(3, 7, D) * 3 + 1).astype(np.float32)
  w = rs.randn(3, 7, D)
  value = jax.jit(lambda m, x: m(x))(norm, jnp.asarray(x))
  gmod, gx = jax.jit(nnx.grad(lambda m, x: (m(x) * w).sum(), argnums=(0, 1)))(norm, jnp.asarray(x))
  t = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)
  tx, ts, tb = t(x), t(norm.scale[...]), t(norm.bias[...])
  ref = torch.nn.functional.layer_norm(tx, (D,), ts, tb, eps=1e-6)
  (ref * torch.tensor(w)).sum().backward()
  _close(value, ref.detach().numpy(), 1e-6)
  _close(gx, tx.grad.numpy())
  _close(gmod['scale'][...], ts.grad.numpy())
  _close(gmod['bias'][...], tb.grad.numpy())
  flax_norm = nnx.LayerNorm(D, epsilon=1e-6, rngs=nnx.Rngs(0))
  flax_norm.scale[...], flax_norm.bias[...] = norm.scale[...], norm.bias[...]
  np.testing.assert_allclose(np.asarray(value), np.asarray(flax_norm(jnp.asarray(x))), rtol=1e-5, atol=1e-5)

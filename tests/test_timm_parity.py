"""The backbone against timm itself: same weights, same logits; and the weight converter."""
import jax.numpy as jnp
import numpy as np
import pytest

import tpm_jax

# (name, overrides given to both timm and us): the distilled and 384-pixel variants at 3 of their
# 12 blocks (identical blocks; what differs, the extra token, widths and the position table, is all
# there), DeiT-T and DeiT-S whole.
PARITY = [('deit_tiny_patch16_224', {}), ('deit_small_patch16_224', {}),
          ('deit_base_distilled_patch16_224', dict(depth=3)), ('vit_small_patch16_384', dict(depth=3))]


def _timm_model(timm, name, seed=0, **kw):
  import torch
  torch.manual_seed(seed)
  return timm.create_model(name, pretrained=False, **kw).eval()


def _timm_logits(tm, images_nhwc):
  import torch
  with torch.no_grad():
    return tm(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))).numpy()


def _images(n, size, seed=1):
  return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


def _assert_logits_close(ours, ref):
  err = np.abs(np.asarray(ours) - ref).max()
  assert err <= 1e-4 * np.abs(ref).max(), (err, np.abs(ref).max())


@pytest.mark.parametrize('name, overrides', PARITY, ids=[name for name, _ in PARITY])
def test_logits_match_timm(timm, name, overrides):
  tm = _timm_model(timm, name, **overrides)
  size = tm.patch_embed.img_size[0]
  x = _images(2, size)
  ref = _timm_logits(tm, x)
  model = tpm_jax.load_timm_weights(tpm_jax.create_model(name, **overrides), tm.state_dict())
  _assert_logits_close(tpm_jax.jit_forward(model)(jnp.asarray(x)), ref)


# One name per family (timm's VisionTransformer arguments), small: 2 blocks, width 64, every parameter
# moved off its initial value (LayerScale's 1e-5 gains, unit norms) so each enters the logits.
FAMILIES = [('vit_base_patch16_clip_224', dict(num_classes=10)), ('vit_base_patch16_clip_quickgelu_224', {}),
            ('vit_base_patch16_siglip_224', dict(num_classes=10)), ('vit_base_patch16_siglip_gap_224', {}),
            ('vit_small_patch14_dinov2', dict(img_size=56)), ('vit_small_patch14_reg4_dinov2', dict(img_size=56)),
            ('deit3_small_patch16_224', {}), ('vit_base_patch16_gap_224', dict(num_heads=4)),
            ('vit_medium_patch16_reg4_gap_256', dict(img_size=64))]


def _small_family(timm, name, overrides, depth=2):
  import torch
  kw = dict(dict(depth=depth, embed_dim=64, num_heads=2, img_size=32), **overrides)
  tm = _timm_model(timm, name, **kw)
  with torch.no_grad():
    for p in tm.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  return tm, kw


@pytest.mark.parametrize('name, overrides', FAMILIES, ids=[name for name, _ in FAMILIES])
def test_every_family_matches_timm(timm, name, overrides):
  """CLIP (pre-norm, quick_gelu), SigLIP (MAP and GAP heads, no class token), DINOv2 and DeiT III
  (LayerScale, registers, no_embed_class), GAP ViTs: logits, or the pooled features where timm's
  model has no head (num_classes 0), equal timm's."""
  tm, kw = _small_family(timm, name, overrides)
  x = _images(2, kw['img_size'])
  ref = _timm_logits(tm, x)
  model = tpm_jax.load_timm_weights(tpm_jax.create_model(name, **kw), tm.state_dict())
  assert ref.shape == (2, tm.num_classes or 64)
  _assert_logits_close(tpm_jax.jit_forward(model)(jnp.asarray(x)), ref)


def test_export_round_trip_into_timm(timm, tmp_path):
  import torch
  name = 'deit_tiny_distilled_patch16_224'
  tm = _timm_model(timm, name, seed=3)
  x = _images(2, 224, seed=4)
  ref = _timm_logits(tm, x)
  torch.save(tm.state_dict(), tmp_path / 'deit.pth')
  model = tpm_jax.load_timm_weights(tpm_jax.create_model(name), tmp_path / 'deit.pth')
  path = tpm_jax.export_timm_weights(model, tmp_path / 'export.safetensors')
  fresh = _timm_model(timm, name, seed=99)  # different init: every weight must come from the file
  timm.models.load_checkpoint(fresh, path, strict=True)
  np.testing.assert_allclose(_timm_logits(fresh, x), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
  # And back again from the .safetensors file.
  again = tpm_jax.load_timm_weights(tpm_jax.create_model(name, rngs=None), path)
  _assert_logits_close(tpm_jax.jit_forward(again)(jnp.asarray(x)), ref)


def test_pos_embed_resampled_like_timm(timm):
  """A 224 checkpoint into a 384 model: our resampling equals timm's resample_abs_pos_embed."""
  import torch
  from timm.layers import resample_abs_pos_embed
  tm = _timm_model(timm, 'deit_tiny_patch16_224')
  sd = tm.state_dict()
  model = tpm_jax.load_timm_weights(tpm_jax.create_model('deit_tiny_patch16_224', img_size=384), sd)
  ref = resample_abs_pos_embed(sd['pos_embed'], new_size=(24, 24), num_prefix_tokens=1).numpy()
  ours = np.asarray(model.pos_embed[...])
  assert ours.shape == ref.shape == (1, 1 + 24 * 24, 192)
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  # The whole model then matches timm's own model built at 384 from the same checkpoint.
  tm384 = timm.create_model('deit_tiny_patch16_224', pretrained=False, img_size=384).eval()
  tm384.load_state_dict({**sd, 'pos_embed': torch.from_numpy(ref)})
  x = _images(1, 384)
  _assert_logits_close(tpm_jax.jit_forward(model)(jnp.asarray(x)), _timm_logits(tm384, x))


def test_every_registered_timm_model_has_timm_shapes(timm):
  """Key names and shapes of every registered model equal timm's (timm built on the meta device)."""
  import torch
  from flax import nnx

  from tpm_jax.timm_weights import timm_key, to_timm_layout
  for name in tpm_jax.list_models():
    if name == 'vit_custom':
      continue
    with torch.device('meta'):
      tm = timm.create_model(name, pretrained=False)
    theirs = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    abstract = nnx.eval_shape(lambda: tpm_jax.create_model(name))
    ours = {timm_key(p): to_timm_layout(p, np.broadcast_to(np.int8(0), v.shape)).shape  # shapes only: no memory
            for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    assert ours == theirs, name


def test_head_with_other_num_classes_is_left_initialised(timm, caplog):
  tm = _timm_model(timm, 'deit_tiny_patch16_224')
  sd = tm.state_dict()
  model = tpm_jax.create_model('deit_tiny_patch16_224', num_classes=10)
  head_before = np.asarray(model.head.kernel[...]).copy()
  with caplog.at_level('WARNING'):
    tpm_jax.load_timm_weights(model, sd)
  assert 'head' in caplog.text
  np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), head_before)
  np.testing.assert_array_equal(np.asarray(model.blocks[0].attn.qkv.kernel[...]), sd['blocks.0.attn.qkv.weight'].numpy().T)


def test_load_errors_name_the_parameter(timm):
  sd = {k: v.numpy() for k, v in _timm_model(timm, 'deit_tiny_patch16_224').state_dict().items()}
  model = tpm_jax.create_model('deit_tiny_patch16_224')
  bad = dict(sd, **{'blocks.2.mlp.fc1.weight': np.zeros((10, 192), np.float32)})
  with pytest.raises(ValueError, match=r'blocks\.2\.mlp\.fc1\.weight'):
    tpm_jax.load_timm_weights(model, bad)
  missing = {k: v for k, v in sd.items() if k != 'blocks.5.norm2.bias'}
  with pytest.raises(ValueError, match=r'missing keys: blocks\.5\.norm2\.bias'):
    tpm_jax.load_timm_weights(model, missing)
  extra = dict(sd, **{'blocks.5.ls1.gamma': np.ones(192, np.float32)})
  with pytest.raises(ValueError, match=r'unexpected keys: blocks\.5\.ls1\.gamma'):
    tpm_jax.load_timm_weights(model, extra)

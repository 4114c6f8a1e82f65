"""The backbone against timm itself: same weights, same logits; and the weight converter."""
import os

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
            ('vit_medium_patch16_reg4_gap_256', dict(img_size=64)),
            # a MAP head beside a class token and registers pools the patch tokens only, as timm's
            ('vit_small_patch14_reg4_dinov2', dict(img_size=56, global_pool='map'))]


def _small_family(timm, name, overrides, depth=2):
  import torch
  kw = dict(dict(depth=depth, embed_dim=64, num_heads=2, img_size=32), **overrides)
  tm = _timm_model(timm, name, **kw)
  with torch.no_grad():
    for p in tm.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  return tm, kw


@pytest.mark.parametrize('name, overrides', FAMILIES,
                         ids=[name + ('-map' if o.get('global_pool') == 'map' else '') for name, o in FAMILIES])
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


def test_bfloat16_safetensors_load_as_their_values(tmp_path):
  """timm's weights saved in bfloat16 (as many Hub files are): each parameter is the file's value, exactly
  (hostile pass 18's W05: refused as 'holds bfloat16 values, expected floating point weights')."""
  import ml_dtypes
  from flax import nnx
  from safetensors.numpy import load_file, save_file
  tiny = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, num_classes=10)
  tpm_jax.export_timm_weights(tpm_jax.create_model('vit_custom', **tiny), str(tmp_path / 'f32.safetensors'))
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in load_file(tmp_path / 'f32.safetensors').items()}
  save_file(bf16, tmp_path / 'bf16.safetensors')
  model = tpm_jax.load_timm_weights(tpm_jax.create_model('vit_custom', rngs=nnx.Rngs(1), **tiny),
                                    str(tmp_path / 'bf16.safetensors'))
  kernel = np.asarray(model.blocks[1].mlp.fc2.kernel[...])
  np.testing.assert_array_equal(kernel, bf16['blocks.1.mlp.fc2.weight'].astype(np.float32).T)


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
  """Key names and shapes of every registered model equal timm's (timm built on the meta device): the
  depth, then every key at depth 2 on both sides (the blocks repeat; 12 or 24 of them cost 6-12x the time)."""
  import torch
  from flax import nnx

  from tpm_jax.config import model_config
  from tpm_jax.timm_weights import timm_key, to_timm_layout
  for name in tpm_jax.list_models():
    if name == 'vit_custom':
      continue
    with torch.device('meta'):
      assert len(timm.create_model(name, pretrained=False).blocks) == model_config(name).depth, name
      tm = timm.create_model(name, pretrained=False, depth=2)
    theirs = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    abstract = nnx.eval_shape(lambda: tpm_jax.create_model(name, depth=2))
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


def _big_vision_npz(sd, path, *, prefix, scanned, augreg):
  """A timm state dict written in big_vision's .npz layout (the inverse of timm's ``_load_weights``):
  ``augreg`` the older per-block naming (MultiHeadDotProductAttention_1, MlpBlock_3, LayerNorm_2,
  Transformer/posembed_input), else big_vision's (``_0``, ``_0``, ``_1``, ``pos_embedding``)."""
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in sd.items()}
  D = sd['pos_embed'].shape[-1]
  heads = lambda w, b, H: (w.T.reshape(D, H, -1), b.reshape(H, -1))  # Linear rows -> (D, H, hd)
  out = {'embedding/kernel': sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
         'embedding/bias': sd['patch_embed.proj.bias'],
         ('Transformer/posembed_input/pos_embedding' if augreg else 'pos_embedding'): sd['pos_embed'],
         'Transformer/encoder_norm/scale': sd['norm.weight'], 'Transformer/encoder_norm/bias': sd['norm.bias']}
  if 'cls_token' in sd:
    out['cls'] = sd['cls_token']
  if 'head.weight' in sd:
    out['head/kernel'], out['head/bias'] = sd['head.weight'].T, sd['head.bias']

  def attention(to, qkv_w, qkv_b, names, proj_w, proj_b, H):
    for n, w, b in zip(names, np.split(qkv_w, len(names)), np.split(qkv_b, len(names))):
      out[f'{to}{n}/kernel'], out[f'{to}{n}/bias'] = heads(w, b, H)
    out[f'{to}out/kernel'], out[f'{to}out/bias'] = proj_w.T.reshape(H, -1, D), proj_b

  H = 2
  if 'attn_pool.latent' in sd:
    m = 'MAPHead_0/'
    out[f'{m}probe'] = sd['attn_pool.latent']
    attention(f'{m}MultiHeadDotProductAttention_0/', sd['attn_pool.q.weight'], sd['attn_pool.q.bias'], ['query'],
              sd['attn_pool.proj.weight'], sd['attn_pool.proj.bias'], H)
    attention(f'{m}MultiHeadDotProductAttention_0/', sd['attn_pool.kv.weight'], sd['attn_pool.kv.bias'],
              ['key', 'value'], sd['attn_pool.proj.weight'], sd['attn_pool.proj.bias'], H)
    out[f'{m}LayerNorm_0/scale'], out[f'{m}LayerNorm_0/bias'] = sd['attn_pool.norm.weight'], sd['attn_pool.norm.bias']
    for r in range(2):
      out[f'{m}MlpBlock_0/Dense_{r}/kernel'] = sd[f'attn_pool.mlp.fc{r + 1}.weight'].T
      out[f'{m}MlpBlock_0/Dense_{r}/bias'] = sd[f'attn_pool.mlp.fc{r + 1}.bias']
  mha, mlp, ln2 = (1, 3, 2) if augreg else (0, 0, 1)
  blocks = []
  for i in range(len({k.split('.')[1] for k in sd if k.startswith('blocks.')})):
    b, blk = f'blocks.{i}.', {}
    saved, out_ = out, blk
    out = blk
    out['LayerNorm_0/scale'], out['LayerNorm_0/bias'] = sd[b + 'norm1.weight'], sd[b + 'norm1.bias']
    attention(f'MultiHeadDotProductAttention_{mha}/', sd[b + 'attn.qkv.weight'], sd[b + 'attn.qkv.bias'],
              ['query', 'key', 'value'], sd[b + 'attn.proj.weight'], sd[b + 'attn.proj.bias'], H)
    out[f'LayerNorm_{ln2}/scale'], out[f'LayerNorm_{ln2}/bias'] = sd[b + 'norm2.weight'], sd[b + 'norm2.bias']
    for r in range(2):
      out[f'MlpBlock_{mlp}/Dense_{r}/kernel'] = sd[f'{b}mlp.fc{r + 1}.weight'].T
      out[f'MlpBlock_{mlp}/Dense_{r}/bias'] = sd[f'{b}mlp.fc{r + 1}.bias']
    out = saved
    blocks.append(out_)
  for name in blocks[0]:
    if scanned:
      out[f'Transformer/encoderblock/{name}'] = np.stack([blk[name] for blk in blocks])
    else:
      out.update({f'Transformer/encoderblock_{i}/{name}': blk[name] for i, blk in enumerate(blocks)})
  np.savez(path, **{prefix + k: v for k, v in out.items()})


@pytest.mark.parametrize('name, overrides, prefix, scanned, augreg',
                         [('vit_base_patch16_siglip_224', dict(num_classes=0), 'params/img/', True, False),
                          ('vit_base_patch16_224', dict(num_classes=10), '', False, True)],
                         ids=['siglip-scanned', 'augreg'])
def test_big_vision_npz_loads_as_timm_loads_it(timm, tmp_path, name, overrides, prefix, scanned, augreg):
  """A big_vision checkpoint (SigLIP's scanned layout under params/img/; AugReg's per-block one)
  written from a random model: ours, through load_big_vision_weights and through load_timm_weights by
  file type, equals timm's own .npz loader fed the same file, at a resampled position grid too."""
  from timm.models.vision_transformer import _load_weights
  tm, kw = _small_family(timm, name, overrides)
  path = tmp_path / 'bv.npz'
  _big_vision_npz(tm.state_dict(), path, prefix=prefix, scanned=scanned, augreg=augreg)
  for size in (32, 48):
    theirs = _timm_model(timm, name, seed=5, **dict(kw, img_size=size))
    _load_weights(theirs, str(path))
    x = _images(2, size)
    ref = _timm_logits(theirs, x)
    ours = tpm_jax.load_big_vision_weights(tpm_jax.create_model(name, **dict(kw, img_size=size)), path)
    _assert_logits_close(tpm_jax.jit_forward(ours)(jnp.asarray(x)), ref)
  whole = path.read_bytes()
  for cut, words in ((0, 'EOFError'), (len(whole) // 2, 'BadZipFile')):  # an interrupted download: one line naming it
    (tmp_path / 'cut.npz').write_bytes(whole[:cut])
    with pytest.raises(ValueError, match=f'cannot read {tmp_path / "cut.npz"} as a big_vision .npz checkpoint \\({words}'):
      tpm_jax.load_big_vision_weights(tpm_jax.create_model(name, **kw), tmp_path / 'cut.npz')
  by_type = tpm_jax.load_timm_weights(tpm_jax.create_model(name, **kw), str(path))
  _assert_logits_close(tpm_jax.jit_forward(by_type)(jnp.asarray(_images(2, 32))), _timm_logits(tm, _images(2, 32)))


PRETRAINED_SCRIPT = r'''
import sys
import os

import jax.numpy as jnp
import numpy as np
import tpm_jax
x, out = np.load(sys.argv[1]), sys.argv[2]
m = tpm_jax.create_model('vit_small_patch14_dinov2', pretrained=True, depth=2, embed_dim=64, num_heads=2, img_size=56)
np.save(out, np.asarray(tpm_jax.jit_forward(m)(jnp.asarray(x))))
try:
  tpm_jax.create_model('vit_small_patch14_dinov2.another_tag', pretrained=True, depth=2, embed_dim=64, num_heads=2)
except tpm_jax.ConfigError as e:
  print('REFUSED', e)
from configs import deit
from tpm_jax import trainer
c = deit.get_config('smoke')  # train.py's trainer (a ConfigError is its exit code 2), before anything is written
c.model.name, c.init.pretrained, c.dataset.data_dir = 'vit_small_patch14_dinov2.another_tag', True, sys.argv[3]
try:
  trainer.train_and_evaluate(c, sys.argv[4])
except tpm_jax.ConfigError as e:
  print('TRAIN_REFUSED', e)
'''


def test_pretrained_through_huggingface_hubs_offline_cache(timm, tmp_path, tiny_imagenet):
  """create_model(name, pretrained=True) reads timm's weights where huggingface_hub keeps them (its
  cache layout, populated here with a real safetensors file; HF_HUB_OFFLINE=1, no network): the
  model equals timm's; a tag not in the cache is one line naming the repository and what to do, and
  train.py's trainer with init.pretrained=true refuses it the same way before anything is written."""
  import subprocess
  import sys

  from safetensors.torch import save_file
  tm, kw = _small_family(timm, 'vit_small_patch14_dinov2', dict(img_size=56))
  snapshot = tmp_path / 'hub' / 'models--timm--vit_small_patch14_dinov2.lvd142m' / 'snapshots' / ('0' * 40)
  snapshot.mkdir(parents=True)
  save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(snapshot / 'model.safetensors'))
  (snapshot.parent.parent / 'refs').mkdir()
  (snapshot.parent.parent / 'refs' / 'main').write_text('0' * 40)
  x = _images(2, 56)
  np.save(tmp_path / 'x.npy', x)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / 'hub'), HF_HUB_OFFLINE='1', PYTHONPATH=root, JAX_PLATFORMS='cpu')
  res = subprocess.run([sys.executable, '-c', PRETRAINED_SCRIPT, str(tmp_path / 'x.npy'), str(tmp_path / 'out.npy'),
                        str(tiny_imagenet), str(tmp_path / 'run')], env=env, cwd=root, capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  _assert_logits_close(np.load(tmp_path / 'out.npy'), _timm_logits(tm, x))
  refused = [line for line in res.stdout.splitlines() if line.startswith('REFUSED')]
  assert len(refused) == 1 and 'timm/vit_small_patch14_dinov2.another_tag/model.safetensors' in refused[0], res.stdout
  assert 'HF_HUB_CACHE' in refused[0] and 'init.timm_checkpoint' in refused[0]
  refused = [line for line in res.stdout.splitlines() if line.startswith('TRAIN_REFUSED')]
  assert len(refused) == 1 and 'timm/vit_small_patch14_dinov2.another_tag' in refused[0], res.stdout
  assert not (tmp_path / 'run').exists()

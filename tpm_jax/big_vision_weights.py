"""big_vision ``.npz`` checkpoints (AugReg ViTs, SigLIP image towers) -> timm's state-dict names,
which ``timm_weights.load_timm_weights`` then loads (position embeddings resampled, the head kept or
left as for timm weights). The mapping follows timm's own loader (``timm.models.vision_transformer.
_load_weights``); the table, big_vision name -> timm name (``{i}``: block i; ``<mha>``, ``<mlp>``,
``<ln1>``, ``<ln2>``: ``MultiHeadDotProductAttention_0``, ``MlpBlock_0``, ``LayerNorm_0``,
``LayerNorm_1`` in big_vision's layout, ``_1``, ``_3``, ``_0``, ``_2`` in the older AugReg one):

==============================================================  =====================================
big_vision (under ``params/``, ``params/img/`` or ``opt/target/``)  timm
==============================================================  =====================================
``embedding/kernel`` (p, p, C, D), ``embedding/bias``           ``patch_embed.proj.weight`` (D, C, p, p), ``.bias``
``cls``                                                         ``cls_token``
``pos_embedding`` or ``Transformer/posembed_input/pos_embedding``  ``pos_embed``
``Transformer/encoderblock_{i}/<ln1>/scale, bias``             ``blocks.{i}.norm1.weight, bias``
``.../<mha>/query|key|value/kernel`` (D, H, hd), ``/bias``      ``blocks.{i}.attn.qkv.weight`` (3 H hd, D), ``.bias``
``.../<mha>/out/kernel`` (H, hd, D), ``/bias``                  ``blocks.{i}.attn.proj.weight`` (D, H hd), ``.bias``
``.../<ln2>/scale, bias``                                       ``blocks.{i}.norm2.weight, bias``
``.../<mlp>/Dense_0|1/kernel, bias``                            ``blocks.{i}.mlp.fc1|fc2.weight`` (transposed), ``.bias``
``Transformer/encoder_norm/scale, bias``                        ``norm.weight, bias``
``MAPHead_0/probe``                                             ``attn_pool.latent``
``MAPHead_0/MultiHeadDotProductAttention_0/query``              ``attn_pool.q``
``MAPHead_0/MultiHeadDotProductAttention_0/key``, ``value``     ``attn_pool.kv`` (key rows, then value rows)
``MAPHead_0/MultiHeadDotProductAttention_0/out``                ``attn_pool.proj``
``MAPHead_0/LayerNorm_0``, ``MAPHead_0/MlpBlock_0/Dense_0|1``   ``attn_pool.norm``, ``attn_pool.mlp.fc1|fc2``
``head/kernel`` (D, K), ``head/bias``                           ``head.weight`` (K, D), ``head.bias``
==============================================================  =====================================

A scanned checkpoint (``Transformer/encoderblock/...`` with the blocks stacked on the first axis)
is read the same way, block by block.
"""
from __future__ import annotations

import os

import numpy as np

PREFIXES = ('opt/target/', 'params/img/', 'params/', '')


def _linear(kernel, bias):
  """A Dense (in, out) -> timm's Linear weight (out, in), bias."""
  return kernel.T, bias


def _heads_in(kernel, bias):
  """query/key/value (D, H, hd), (H, hd) -> Linear rows (H hd, D), (H hd,)."""
  return kernel.reshape(kernel.shape[0], -1).T, bias.reshape(-1)


def _attention(get, mha: str, qkv: tuple[str, ...]) -> dict:
  """The in-projections named ``qkv`` concatenated, and the output projection, of one attention."""
  parts = [_heads_in(get(f'{mha}{n}/kernel'), get(f'{mha}{n}/bias')) for n in qkv]
  out = get(f'{mha}out/kernel')  # (H, hd, D)
  return dict(weight=np.concatenate([w for w, _ in parts]), bias=np.concatenate([b for _, b in parts]),
              out_weight=out.reshape(-1, out.shape[-1]).T, out_bias=get(f'{mha}out/bias'))


def _mlp(get, block: str, out: dict, to: str) -> None:
  for r in range(2):
    out[f'{to}.fc{r + 1}.weight'], out[f'{to}.fc{r + 1}.bias'] = _linear(get(f'{block}Dense_{r}/kernel'),
                                                                         get(f'{block}Dense_{r}/bias'))


def big_vision_to_timm(npz) -> dict[str, np.ndarray]:
  """A big_vision checkpoint (a mapping name -> array, e.g. ``np.load(path)``) as a timm state dict."""
  w = dict(npz)
  prefix = next((p for p in PREFIXES if f'{p}embedding/kernel' in w), None)
  if prefix is None:
    raise ValueError('not a big_vision ViT checkpoint: no embedding/kernel under '
                     + ', '.join(repr(p) for p in PREFIXES if p))

  def get(name, idx=None):
    if f'{prefix}{name}' not in w:
      raise ValueError(f'big_vision checkpoint: {prefix}{name} is missing')
    a = np.asarray(w[f'{prefix}{name}'])
    return a if idx is None else a[idx]

  has = lambda name: f'{prefix}{name}' in w
  big_vision = prefix.startswith('params/') or has('pos_embedding') or has('Transformer/encoderblock/LayerNorm_0/scale')
  out = {'patch_embed.proj.weight': get('embedding/kernel').transpose(3, 2, 0, 1)}
  if has('embedding/bias'):
    out['patch_embed.proj.bias'] = get('embedding/bias')
  if has('cls'):
    out['cls_token'] = get('cls')
  out['pos_embed'] = get('pos_embedding' if has('pos_embedding') else 'Transformer/posembed_input/pos_embedding')
  if has('Transformer/encoder_norm/scale'):
    out['norm.weight'], out['norm.bias'] = get('Transformer/encoder_norm/scale'), get('Transformer/encoder_norm/bias')
  if has('head/kernel'):
    out['head.weight'], out['head.bias'] = _linear(get('head/kernel'), get('head/bias'))
  if has('MAPHead_0/probe'):
    map_, mha = 'MAPHead_0/', 'MAPHead_0/MultiHeadDotProductAttention_0/'
    out['attn_pool.latent'] = get(f'{map_}probe')
    q, kv = _attention(get, mha, ('query',)), _attention(get, mha, ('key', 'value'))
    out['attn_pool.q.weight'], out['attn_pool.q.bias'] = q['weight'], q['bias']
    out['attn_pool.kv.weight'], out['attn_pool.kv.bias'] = kv['weight'], kv['bias']
    out['attn_pool.proj.weight'], out['attn_pool.proj.bias'] = q['out_weight'], q['out_bias']
    out['attn_pool.norm.weight'], out['attn_pool.norm.bias'] = get(f'{map_}LayerNorm_0/scale'), get(f'{map_}LayerNorm_0/bias')
    _mlp(get, f'{map_}MlpBlock_0/', out, 'attn_pool.mlp')
  mha_sub, mlp_sub, ln2_sub = (0, 0, 1) if big_vision else (1, 3, 2)
  scanned = has('Transformer/encoderblock/LayerNorm_0/scale')
  depth = (get('Transformer/encoderblock/LayerNorm_0/scale').shape[0] if scanned else
           len({k[len(prefix):].split('/')[1] for k in w if k.startswith(f'{prefix}Transformer/encoderblock_')}))
  for i in range(depth):
    block = 'Transformer/encoderblock/' if scanned else f'Transformer/encoderblock_{i}/'
    idx = i if scanned else None
    at = lambda name, block=block, idx=idx: get(f'{block}{name}', idx)
    b = f'blocks.{i}.'
    out[b + 'norm1.weight'], out[b + 'norm1.bias'] = at('LayerNorm_0/scale'), at('LayerNorm_0/bias')
    attn = _attention(at, f'MultiHeadDotProductAttention_{mha_sub}/', ('query', 'key', 'value'))
    out[b + 'attn.qkv.weight'], out[b + 'attn.qkv.bias'] = attn['weight'], attn['bias']
    out[b + 'attn.proj.weight'], out[b + 'attn.proj.bias'] = attn['out_weight'], attn['out_bias']
    out[b + 'norm2.weight'], out[b + 'norm2.bias'] = at(f'LayerNorm_{ln2_sub}/scale'), at(f'LayerNorm_{ln2_sub}/bias')
    _mlp(at, f'MlpBlock_{mlp_sub}/', out, b + 'mlp')
  return {k: np.ascontiguousarray(v, dtype=np.float32) if np.issubdtype(v.dtype, np.floating) else v
          for k, v in out.items()}


def read_big_vision(path) -> dict[str, np.ndarray]:
  """A big_vision ``.npz`` file as a timm state dict (``big_vision_to_timm``)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'big_vision checkpoint not found: {path}')
  if not os.path.isfile(path):  # checked before opening: a FIFO would block
    raise ValueError(f'{path} is not a regular file (expected a big_vision .npz file)')
  try:
    with np.load(path, allow_pickle=False) as npz:
      return big_vision_to_timm(npz)
  except Exception as e:  # noqa: BLE001  (an empty or truncated download: EOFError, BadZipFile; arrays that disagree)
    if isinstance(e, ValueError) and str(e).startswith(('big_vision checkpoint', 'not a big_vision')):
      raise ValueError(f'{path}: {e}') from e
    reason = str(e).splitlines()[0] if str(e) else ''
    raise ValueError(f'cannot read {path} as a big_vision .npz checkpoint ({type(e).__name__}'
                     f'{": " + reason[:160] if reason else ""}; an empty or truncated file, or another layout)') from e

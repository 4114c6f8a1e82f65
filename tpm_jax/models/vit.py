"""Vision Transformer / DeiT in Flax NNX, with timm's names.

A timm reader should recognise every line: ``patch_embed.proj``, ``cls_token``, ``dist_token``,
``pos_embed``, ``blocks[i].norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2``, ``norm``,
``head``, ``head_dist``. Images are NHWC float32, already normalised.

Token reduction (``tpm_jax.reduction``) hooks into ``Block`` after the attention residual and
before the MLP; the attention can hand back, at no cost when unused, the CLS row of its
probabilities and its keys.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tpm_jax import reduction as reduction_lib
from tpm_jax.config import MultiscaleConfig, ReductionConfig, ViTConfig
from tpm_jax.models.layers import LayerNorm, layer_norm  # noqa: F401 (also vit.LayerNorm, vit.layer_norm)
from tpm_jax.models.multiscale import MultiScale

trunc_normal = nnx.initializers.truncated_normal


def _linear(cin, cout, dtype, rngs, *, bias=True, kernel_init=trunc_normal(0.02)):
  return nnx.Linear(cin, cout, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init, bias_init=nnx.initializers.zeros, rngs=rngs)


def _layernorm(dim, dtype, rngs, eps=1e-6):
  return LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def recompute_in_backward(f):
  """``f`` (arrays sharing a leading batch axis -> array with it) differentiated by running it
  again in the backward pass from its inputs, which are all it keeps (what ``jax.checkpoint``
  does). Each example's inputs to the recomputation are made to depend on that example's incoming
  cotangent (plus min(|ct|, 0) of one of its elements: a zero that XLA cannot fold away, NaN only
  where the cotangent is), so XLA cannot schedule the recomputation back into the forward pass;
  per example, so a batch sharded over devices needs no communication for it. XLA's CPU scheduler
  did that with ``jax.checkpoint`` (whose optimisation barriers XLA drops before scheduling) and
  kept every block's attention probabilities alive at once, as if nothing were recomputed."""

  @jax.custom_vjp
  def g(*args):
    return f(*args)

  def fwd(*args):
    return f(*args), args

  def bwd(args, ct):
    zero = jnp.minimum(jnp.abs(ct[(slice(None),) + (0,) * (ct.ndim - 1)]), 0)  # (batch,)
    args = jax.tree.map(lambda a: a + zero.reshape(zero.shape + (1,) * (a.ndim - 1)).astype(a.dtype), args)
    return jax.vjp(f, *args)[1](ct)

  g.defvjp(fwd, bwd)
  return g


def posemb_sincos_2d(h, w, width, temperature=10_000.0):
  """big_vision's 2-D sin-cos position table (1, h * w, width), rows first: [sin x, cos x, sin y,
  cos y], each over width / 4 frequencies from 1 to 1 / temperature."""
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / temperature ** (np.arange(width // 4) / max(1, width // 4 - 1))
  y, x = np.outer(y.ravel(), omega), np.outer(x.ravel(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return jnp.asarray(pe, jnp.float32)[None]


class PatchEmbed(nnx.Module):
  """Non-overlapping patches -> tokens: (B, H, W, C) -> (B, H/p * W/p, D)."""

  def __init__(self, patch_size, in_chans, embed_dim, *, bias=True, dtype, rngs):
    self.proj = nnx.Conv(in_chans, embed_dim, (patch_size, patch_size), strides=(patch_size, patch_size),
                         padding='VALID', use_bias=bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x):
    x = self.proj(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])


class Attention(nnx.Module):
  """Multi-head self-attention with fused qkv, through ``jax.nn.dot_product_attention`` (XLA's
  fused attention on CPU/TPU; cuDNN's on GPU for bfloat16/float16, see ``attention_implementation``).

  ``size_bias`` (B, N) is added to the logits of every query (ToMe's proportional attention
  passes log(size)), as the fused op's ``bias``. With ``return_extras`` it also returns the CLS row
  of the probabilities (B, heads, N), computed on its own from the CLS query and the keys (same
  scale and bias, float32 softmax), and the keys (B, N, heads, head_dim) for token reduction. A
  model without a class token passes ``query_weights`` (B, N): the row is then that of the
  weighted mean of the queries (a pseudo class token; ``VisionTransformer._importance_weights``).
  """

  def __init__(self, dim, num_heads, *, qkv_bias=True, dtype, rngs):
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.scale = self.head_dim ** -0.5
    self.qkv = _linear(dim, dim * 3, dtype, rngs, bias=qkv_bias)
    self.proj = _linear(dim, dim, dtype, rngs)

  def __call__(self, x, *, size_bias=None, return_extras=False, query_weights=None):
    B, N, C = x.shape
    # (B, N, H, hd) each: the fused op's layout. A split (its gradient a concatenation), not three
    # slices (three gradients padded to qkv's full size and added, 3x the memory of the result).
    q, k, v = (t.reshape(B, N, self.num_heads, self.head_dim) for t in jnp.split(self.qkv(x), 3, axis=-1))
    bias = None if size_bias is None else size_bias[:, None, None, :]  # (B, 1, 1, N): every head and query
    out = None
    if attention_implementation(q.dtype, self.head_dim) == 'cudnn':
      try:  # cuDNN takes a bias of the queries' dtype and full (query, key) extent
        cudnn_bias = None if bias is None else jnp.broadcast_to(bias.astype(q.dtype), (B, 1, N, N))
        out = jax.nn.dot_product_attention(q, k, v, bias=cudnn_bias, scale=self.scale, implementation='cudnn')
      except (ValueError, NotImplementedError, RuntimeError, TypeError):  # a shape or version cuDNN refuses
        out = None
    if out is None:  # XLA's attention keeps its probabilities for the backward (twice on the CPU): recomputed there
      attend = lambda q, k, v, bias: jax.nn.dot_product_attention(q, k, v, bias=bias, scale=self.scale)
      out = recompute_in_backward(attend)(q, k, v, bias)
    out = self.proj(out.reshape(B, N, C))
    if return_extras:
      with jax.named_scope('cls_attn'):
        if query_weights is None:
          q_ref = q[:, 0]
        else:  # (B, heads, hd): the weighted mean query
          w = query_weights / query_weights.sum(axis=1, keepdims=True)
          q_ref = jnp.einsum('bn,bnhd->bhd', w.astype(q.dtype), q)
        return out, cls_attention(q_ref, k, self.scale, size_bias), k
    return out


def cls_attention(q_cls, k, scale, size_bias=None):
  """The CLS row of the attention probabilities, (B, heads, N), in float32: softmax over the keys
  of scale * q_cls . k (+ size_bias), as inside the fused attention. q_cls (B, heads, hd)."""
  logits = jnp.einsum('bhd,bkhd->bhk', q_cls, k, preferred_element_type=jnp.float32) * scale
  if size_bias is not None:
    logits = logits + size_bias[:, None, :].astype(jnp.float32)
  return jax.nn.softmax(logits, axis=-1)


def attention_implementation(dtype, head_dim):
  """``implementation`` for ``jax.nn.dot_product_attention``: cuDNN's fused kernel on a GPU for
  bfloat16/float16 with a head size it takes (a multiple of 8, at most 128); otherwise None (XLA's,
  which JAX fuses on every backend, float32 included)."""
  if (jax.default_backend() == 'gpu' and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
      and head_dim % 8 == 0 and head_dim <= 128):
    return 'cudnn'
  return None


def _normal_cdf(x):
  return 0.5 * jax.lax.erfc(-x * np.asarray(np.sqrt(0.5), x.dtype))  # jax.nn.gelu's expression


@jax.custom_vjp
def gelu(x):
  """Exact (erf) GELU, timm's ``nn.GELU``: the same values as ``jax.nn.gelu(x, approximate=False)``.
  Its gradient keeps only the input for the backward pass and recomputes Phi(x) + x phi(x) there,
  as PyTorch does; XLA's own derivative of the erf expansion keeps several intermediates per
  element (about 74 MB more per DeiT-S block at batch 32) and ran 15% slower on the CPU."""
  return x * _normal_cdf(x)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  x, g = jax.lax.optimization_barrier((x, g))  # else XLA merges Phi(x) with the forward's and keeps it
  cdf = _normal_cdf(x)
  pdf = jnp.exp(x * x * np.asarray(-0.5, x.dtype)) * np.asarray((2 * np.pi) ** -0.5, x.dtype)
  return (g * (cdf + x * pdf),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def quick_gelu(x):
  """CLIP's GELU approximation, timm's ``QuickGELU``: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(np.asarray(1.702, x.dtype) * x)


ACTIVATIONS = {'gelu': gelu, 'quick_gelu': quick_gelu}


class Mlp(nnx.Module):

  def __init__(self, dim, hidden, *, act='gelu', dtype, rngs):
    self.act = ACTIVATIONS[act]  # timm: nn.GELU (exact erf) or QuickGELU
    self.fc1 = _linear(dim, hidden, dtype, rngs)
    self.fc2 = _linear(hidden, dim, dtype, rngs)

  def __call__(self, x):
    return self.fc2(self.act(self.fc1(x)))


class LayerScale(nnx.Module):
  """timm's LayerScale (CaiT, DeiT III, DINOv2): a learned per-channel gain on a residual branch."""

  def __init__(self, dim, init_values, *, rngs):
    self.gamma = nnx.Param(jnp.full((dim,), init_values, jnp.float32))

  def __call__(self, x):
    return x * self.gamma[...].astype(x.dtype)


class DropPath(nnx.Module):
  """Stochastic depth: drop the whole residual branch per sample (timm's DropPath)."""

  def __init__(self, rate, *, rngs):
    self.dropout = nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs)

  def __call__(self, x, *, train):
    return self.dropout(x, deterministic=not train)


class Block(nnx.Module):
  """Pre-norm transformer block. ``x = x + ls1(attn(norm1(x))); [reduce]; x = x + ls2(mlp(norm2(x)))``
  (``ls1``/``ls2``: LayerScale where the model has it)."""

  def __init__(self, dim, num_heads, mlp_ratio, *, qkv_bias, drop_path, act='gelu', layer_scale=None,
               eps=1e-6, dtype, rngs):
    self.norm1 = _layernorm(dim, dtype, rngs, eps)
    self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.ls1 = LayerScale(dim, layer_scale, rngs=rngs) if layer_scale else None
    self.drop_path1 = DropPath(drop_path, rngs=rngs)
    self.norm2 = _layernorm(dim, dtype, rngs, eps)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, dtype=dtype, rngs=rngs)
    self.ls2 = LayerScale(dim, layer_scale, rngs=rngs) if layer_scale else None
    self.drop_path2 = DropPath(drop_path, rngs=rngs)

  def __call__(self, x, *, train=False, size_bias=None, reduce=None, query_weights=None):
    """``reduce(x, cls_attn, keys) -> (x, aux)`` runs between attention and MLP when given;
    returns (x, aux), aux None without reduction."""
    aux = None
    with jax.named_scope('attn'):  # named scopes: the ops' names in profiles (benchmarks/profile_ops.py)
      y = self.attn(self.norm1(x), size_bias=size_bias, return_extras=reduce is not None, query_weights=query_weights)
      if reduce is not None:
        y, cls_attn, keys = y
      x = x + self.drop_path1(y if self.ls1 is None else self.ls1(y), train=train)
    if reduce is not None:
      with jax.named_scope('reduce'):
        x, aux = reduce(x, cls_attn, keys)
    with jax.named_scope('mlp'):
      y = self.mlp(self.norm2(x))
      x = x + self.drop_path2(y if self.ls2 is None else self.ls2(y), train=train)
    return x, aux


class AttentionPoolLatent(nnx.Module):
  """timm's ``AttentionPoolLatent`` (SigLIP's MAP head): one learned query attends over the tokens,
  then a residual MLP. ``size_bias`` (B, N): proportional attention's log(size) on the keys."""

  def __init__(self, dim, num_heads, mlp_ratio, *, act='gelu', eps=1e-6, dtype, rngs):
    self.num_heads, self.head_dim = num_heads, dim // num_heads
    self.latent = nnx.Param(trunc_normal(dim ** -0.5)(rngs.params(), (1, 1, dim)))
    self.q = _linear(dim, dim, dtype, rngs)
    self.kv = _linear(dim, dim * 2, dtype, rngs)
    self.proj = _linear(dim, dim, dtype, rngs)
    self.norm = _layernorm(dim, dtype, rngs, eps)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act, dtype=dtype, rngs=rngs)

  def __call__(self, x, size_bias=None):
    B, N, C = x.shape
    q = self.q(jnp.broadcast_to(self.latent[...].astype(x.dtype), (B, 1, C))).reshape(B, 1, self.num_heads, self.head_dim)
    k, v = (t.reshape(B, N, self.num_heads, self.head_dim) for t in jnp.split(self.kv(x), 2, axis=-1))
    bias = None if size_bias is None else size_bias[:, None, None, :].astype(q.dtype)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, scale=self.head_dim ** -0.5)
    out = self.proj(out.reshape(B, 1, C))
    out = out + self.mlp(self.norm(out))
    return out[:, 0]


class VisionTransformer(nnx.Module):
  """ViT / DeiT backbone (timm ``VisionTransformer`` / ``VisionTransformerDistilled``) with
  optional token reduction (``ReductionConfig``) and multi-scale fusion (``MultiscaleConfig``)."""

  def __init__(self, cfg: ViTConfig, *, reduction: ReductionConfig | None = None,
               multiscale: MultiscaleConfig | None = None, dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.reduction = reduction = ReductionConfig.from_any(reduction, depth=cfg.depth)
    self.multiscale_cfg = multiscale = MultiscaleConfig.from_any(multiscale)
    self.dtype = dtype
    D = cfg.embed_dim
    self.num_prefix_tokens = cfg.num_prefix_tokens
    # Static token counts: block index -> prunable tokens kept as destinations there.
    self.keep = {loc: k for loc, k, _ in reduction.schedule(cfg.num_prefix_tokens, cfg.num_patches)}
    eps = cfg.norm_eps
    self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, D, bias=not cfg.pre_norm, dtype=dtype, rngs=rngs)
    cls_key = rngs.params()  # drawn either way, so the other parameters do not depend on the family
    self.cls_token = nnx.Param(nnx.initializers.normal(1e-6)(cls_key, (1, 1, D))) if cfg.class_token else None
    self.dist_token = nnx.Param(trunc_normal(0.02)(rngs.params(), (1, 1, D))) if cfg.distilled else None
    self.reg_token = (nnx.Param(nnx.initializers.normal(1e-6)(rngs.params(), (1, cfg.reg_tokens, D)))
                      if cfg.reg_tokens else None)
    pos_shape = (1, cfg.pos_embed_prefix + cfg.num_patches, D)
    pos_key = rngs.params()  # drawn either way, so the other parameters do not depend on this choice
    if cfg.pos_embed_init == 'sincos2d':
      pos = posemb_sincos_2d(cfg.grid_size, cfg.grid_size, D)
      self.pos_embed = nnx.Param(jnp.concatenate([jnp.zeros((1, cfg.pos_embed_prefix, D)), pos], axis=1))
    else:
      self.pos_embed = nnx.Param(trunc_normal(0.02)(pos_key, pos_shape))
    self.norm_pre = _layernorm(D, dtype, rngs, eps) if cfg.pre_norm else None
    dpr = [float(r) for r in np.linspace(0.0, cfg.drop_path_rate, cfg.depth)]  # timm's per-block rates
    self.blocks = nnx.List([
        Block(D, cfg.num_heads, cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop_path=dpr[i], act=cfg.act,
              layer_scale=cfg.layer_scale, eps=eps, dtype=dtype, rngs=rngs)
        for i in range(cfg.depth)])
    self.multiscale = nnx.data(None)
    if multiscale.enabled:
      self.multiscale = MultiScale(multiscale, embed_dim=D, num_heads=cfg.num_heads, grid_size=cfg.grid_size,
                                   patch_size=cfg.patch_size, in_chans=cfg.in_chans, dtype=dtype, rngs=rngs)
    # timm: the final norm before pooling, or (fc_norm) after it
    self.norm = None if cfg.use_fc_norm else _layernorm(D, dtype, rngs, eps)
    self.attn_pool = (AttentionPoolLatent(D, cfg.num_heads, cfg.mlp_ratio, act=cfg.act, eps=eps, dtype=dtype,
                                          rngs=rngs) if cfg.global_pool == 'map' else None)
    self.fc_norm = _layernorm(D, dtype, rngs, eps) if cfg.use_fc_norm else None
    self.head = _linear(D, cfg.num_classes, dtype, rngs) if cfg.num_classes else None
    self.head_dist = _linear(D, cfg.num_classes, dtype, rngs) if cfg.distilled and cfg.num_classes else None

  @property
  def fusion_block(self) -> int:
    """The block whose input the multi-scale fusion rewrites: the first reduction location, else 0."""
    return min(self.keep) if self.keep else 0

  def embed(self, images):
    """Patch embedding + prefix tokens + position embedding (+ ``norm_pre``): (B, H, W, C) ->
    (B, P + N, D). Prefix tokens in timm's order: class, distillation, registers; with
    ``no_embed_class`` they are added after the position embedding, which covers the patches only."""
    x = self.patch_embed(images.astype(self.dtype))
    pos = self.pos_embed[...].astype(x.dtype)
    if self.cfg.no_embed_class:
      x = x + pos
    zeros = jnp.zeros_like(x[:, :1])  # (B, 1, D), sharded like the batch (also under explicit meshes)
    prefix = [zeros + t[...].astype(x.dtype) for t in (self.cls_token, self.dist_token, self.reg_token)
              if t is not None]
    x = jnp.concatenate(prefix + [x], axis=1) if prefix else x
    if not self.cfg.no_embed_class:
      x = x + pos
    return x if self.norm_pre is None else self.norm_pre(x)

  def _importance_weights(self, sizes):
    """None for a model with a class token (its attention row ranks the tokens); without one, the
    weights of the pseudo class token's query: the size-weighted mean of the patch tokens' queries
    (a merged token counts for the patches it stands for; protected registers count for nothing)."""
    if self.cfg.class_token:
      return None
    return sizes * (jnp.arange(sizes.shape[1]) >= self.num_prefix_tokens)

  def _reduce(self, block_idx, sizes, x, cls_attn, keys):
    """The reduction step of one block (called by ``Block`` between attention and MLP)."""
    scores = cls_attn.mean(axis=1)  # (B, N): CLS (or pseudo-CLS) attention averaged over heads
    use_keys = self.reduction.similarity == 'keys' or self.reduction.method == 'tome'  # ToMe matches keys
    metric = keys.mean(axis=2) if use_keys else x
    out = reduction_lib.get(self.reduction.method)(
        x, scores, metric, sizes, num_protected=self.num_prefix_tokens, k=self.keep[block_idx], cfg=self.reduction)
    return out.tokens, (scores, out)

  def forward_features(self, images, train=False, aux=None, sizes_out=None):
    """Images -> final-norm tokens (B, N', D); ``sizes_out`` (a list) gets the tokens' sizes (B, N')."""
    with jax.named_scope('embed'):
      x = self.embed(images)
    sizes = jnp.ones(x.shape[:2], jnp.float32)
    size_bias = None  # proportional attention's log(size): zero until the first reduction, so left out
    prop_attn = self.reduction.enabled and self.reduction.use_prop_attn
    for i, blk in enumerate(self.blocks):
      if self.multiscale is not None and i == self.fusion_block:
        with jax.named_scope('multiscale'):
          x = self.multiscale(x, images, self.num_prefix_tokens)
      reduce = functools.partial(self._reduce, i, sizes) if i in self.keep else None
      with jax.named_scope(f'blocks.{i}'):
        x, out = blk(x, train=train, size_bias=size_bias, reduce=reduce,
                     query_weights=self._importance_weights(sizes) if reduce is not None else None)
        if out is not None:
          scores, red = out
          sizes = red.sizes
          with jax.named_scope('reduce'):  # the next blocks' attention bias, part of this reduction's cost
            size_bias = jnp.log(sizes) if prop_attn else None
      if out is not None and aux is not None:
        aux.append(dict(block=i, scores=scores, kept=red.kept, assignment=red.assignment, sizes=red.sizes))
    if sizes_out is not None:
      sizes_out.append(sizes)
    with jax.named_scope('norm'):
      return x if self.norm is None else self.norm(x)

  def pool(self, x, sizes=None):
    """Tokens (B, N, D) -> (B, D) by ``global_pool``: the class token; the mean of the patch tokens,
    each weighted by its size (the patches a merged token stands for); or the MAP head over the patch tokens, whose
    attention takes proportional attention's log(size) when the reduction uses it."""
    P = self.num_prefix_tokens
    if self.cfg.global_pool == 'token':
      return x[:, 0]
    if self.cfg.global_pool == 'map':  # over the patch tokens only, as timm (pool_include_prefix=False)
      prop = self.reduction.enabled and self.reduction.use_prop_attn and sizes is not None
      return self.attn_pool(x[:, P:], size_bias=jnp.log(sizes[:, P:]) if prop else None)
    if sizes is None:
      return x[:, P:].mean(axis=1)
    w = sizes[:, P:, None].astype(x.dtype)
    return (x[:, P:] * w).sum(axis=1) / w.sum(axis=1)

  def forward_head(self, x, sizes=None):
    """Final-norm tokens -> logits (the pooled features when num_classes is 0). Distilled: mean of
    both heads (timm at inference). ``sizes`` (B, N): each token's size, for the pooling."""
    with jax.named_scope('head'):
      pooled = self.pool(x, sizes)
      if self.fc_norm is not None:
        pooled = self.fc_norm(pooled)
      if self.head is None:
        return pooled.astype(jnp.float32)
      logits = self.head(pooled)
      if self.head_dist is not None:
        logits = (logits + self.head_dist(x[:, 1])) / 2
      return logits.astype(jnp.float32)

  def __call__(self, images, train: bool = False, return_aux: bool = False):
    """Logits (B, num_classes); with ``return_aux`` also a list with one dict per reduction
    location: block, scores (B, N), kept (B, k) input indices, assignment (B, N) output index of
    every input token (-1 if discarded), sizes (B, N')."""
    c = self.cfg
    want = (c.img_size, c.img_size, c.in_chans)
    if len(images.shape) != 4 or tuple(images.shape[1:]) != want or images.shape[0] < 1:
      raise ValueError(f'images of shape {tuple(images.shape)} do not fit this model: expected (B, {c.img_size}, '
                       f'{c.img_size}, {c.in_chans}) with B >= 1 (NHWC; model img_size={c.img_size}, '
                       f'in_chans={c.in_chans})')
    aux = [] if return_aux else None
    sizes = []
    x = self.forward_features(images, train=train, aux=aux, sizes_out=sizes)
    logits = self.forward_head(x, sizes[0] if self.reduction.enabled else None)
    return (logits, aux) if return_aux else logits

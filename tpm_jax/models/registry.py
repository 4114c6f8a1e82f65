"""Models by timm name, and ``create_model``."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from tpm_jax.config import ConfigError, MultiscaleConfig, ReductionConfig, ViTConfig
from tpm_jax.models.vit import VisionTransformer

_TI = dict(embed_dim=192, depth=12, num_heads=3)
_S = dict(embed_dim=384, depth=12, num_heads=6)
_B = dict(embed_dim=768, depth=12, num_heads=12)
_L = dict(embed_dim=1024, depth=24, num_heads=16)

# name -> ViTConfig fields (timm's create_model names and sizes).
MODELS: dict[str, dict] = {
    'deit_tiny_patch16_224': _TI,
    'deit_small_patch16_224': _S,
    'deit_base_patch16_224': _B,
    'deit_base_patch16_384': dict(_B, img_size=384),
    'deit_tiny_distilled_patch16_224': dict(_TI, distilled=True),
    'deit_small_distilled_patch16_224': dict(_S, distilled=True),
    'deit_base_distilled_patch16_224': dict(_B, distilled=True),
    'deit_base_distilled_patch16_384': dict(_B, distilled=True, img_size=384),
    'vit_tiny_patch16_224': _TI,
    'vit_small_patch16_224': _S,
    'vit_base_patch16_224': _B,
    'vit_large_patch16_224': _L,
    'vit_tiny_patch16_384': dict(_TI, img_size=384),
    'vit_small_patch16_384': dict(_S, img_size=384),
    'vit_base_patch16_384': dict(_B, img_size=384),
    'vit_large_patch16_384': dict(_L, img_size=384),
    'vit_base_patch32_224': dict(_B, patch_size=32),
    # Not a timm model: a base for small test/quickstart models; override any size.
    'vit_custom': dict(embed_dim=192, depth=12, num_heads=3),
}


def list_models() -> list[str]:
  return sorted(MODELS)


def model_config(name: str | ViTConfig, **overrides) -> ViTConfig:
  """Resolve a timm name (or a ViTConfig) plus field overrides into a validated ViTConfig."""
  if isinstance(name, ViTConfig):
    base = name
  elif name in MODELS:
    base = ViTConfig(**MODELS[name])
  else:
    raise ConfigError(f'model.name={name!r} is not accepted: expected one of {", ".join(list_models())}')
  overrides = {k: v for k, v in overrides.items() if v is not None}
  return base.replace(**overrides)


def create_model(name, *, num_classes=None, img_size=None, reduction=None, multiscale=None,
                 dtype=jnp.float32, rngs=None, **overrides) -> nnx.Module:
  """Build a ViT/DeiT by timm name with optional token reduction.

  Args:
    name: a timm model name (``tpm_jax.list_models()``) or a ``ViTConfig``.
    num_classes, img_size: as in timm.
    reduction: None, a method name ('none', 'tpm', 'evit', 'drop', 'tome'), or a mapping /
      ConfigDict with ``ReductionConfig`` fields.
    multiscale: None, 'none', 'pool', 'cross', or a mapping with ``MultiscaleConfig`` fields.
    dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters stay float32.
    rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``), streams ``params`` and ``dropout``.
    **overrides: any ``ViTConfig`` field: depth, embed_dim, num_heads, patch_size, in_chans,
      mlp_ratio, qkv_bias, distilled, drop_path_rate, pos_embed_init ('trunc_normal' as timm, or
      'sincos2d': the learned position embedding starts from a 2-D sin-cos table).
  """
  cfg = model_config(name, num_classes=num_classes, img_size=img_size, **overrides)
  red = ReductionConfig.from_any(reduction, depth=cfg.depth)
  red.schedule(cfg.num_prefix_tokens, cfg.num_patches)  # validates token counts
  ms = MultiscaleConfig.from_any(multiscale)
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise ConfigError(f'dtype={dtype!r} is not accepted: expected float32, bfloat16 or float16')
  rngs = nnx.Rngs(params=0, dropout=1) if rngs is None else rngs
  return VisionTransformer(cfg, reduction=red, multiscale=ms, dtype=dtype, rngs=rngs)


def model_from_config(config, *, keep_rate=None, rngs=None) -> nnx.Module:
  """The model a training config (``configs/*.py``) describes: ``config.model``, ``config.reduction``
  and ``config.multiscale`` (``keep_rate`` overrides ``config.reduction.keep_rate``)."""
  m = config.model
  overrides = {k: m.get(k) for k in ('patch_size', 'embed_dim', 'depth', 'num_heads', 'in_chans', 'pos_embed_init')}
  reduction = config.reduction.to_dict()
  if keep_rate is not None:
    reduction['keep_rate'] = keep_rate
  return create_model(
      m.name, num_classes=m.num_classes, img_size=m.img_size, drop_path_rate=m.drop_path_rate,
      reduction=reduction, multiscale=config.multiscale.to_dict(), dtype=jnp.dtype(m.dtype),
      rngs=rngs or nnx.Rngs(params=config.seed, dropout=config.seed + 1), **overrides)

"""Models by timm name, and ``create_model``."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from tpm_jax.config import MODELS, ConfigError, MultiscaleConfig, ReductionConfig, RunConfig, model_config  # noqa: F401
from tpm_jax.models.vit import VisionTransformer
from tpm_jax.pretrained import weights_file
from tpm_jax.timm_weights import load_timm_weights, read_state_dict


def list_models() -> list[str]:
  return sorted(MODELS)


def create_model(name, *, pretrained=False, num_classes=None, img_size=None, reduction=None, multiscale=None,
                 dtype=jnp.float32, rngs=None, **overrides) -> nnx.Module:
  """Build a ViT by timm name with optional token reduction.

  Args:
    name: a timm model name (``tpm_jax.list_models()``), ``architecture.tag`` (the tag picks the
      pretrained weights), or a ``ViTConfig``.
    pretrained: load timm's weights from the Hugging Face Hub (``tpm_jax.pretrained``: its cache and
      offline mode); without ``num_classes`` the model keeps the checkpoint's head (none: features).
    num_classes, img_size: as in timm (another grid resamples the position embedding).
    reduction: None, a method name ('none', 'tpm', 'evit', 'drop', 'tome'), or a mapping /
      ConfigDict with ``ReductionConfig`` fields.
    multiscale: None, 'none', 'pool', 'cross', or a mapping with ``MultiscaleConfig`` fields.
    dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters stay float32.
    rngs: ``nnx.Rngs`` (default ``nnx.Rngs(0)``), streams ``params`` and ``dropout``.
    **overrides: any ``ViTConfig`` field: depth, embed_dim, num_heads, patch_size, in_chans,
      mlp_ratio, qkv_bias, distilled, drop_path_rate, pos_embed_init ('trunc_normal' as timm, or
      'sincos2d': the learned position embedding starts from a 2-D sin-cos table).
  """
  weights = None
  if pretrained:
    if not isinstance(name, str):
      raise ConfigError('pretrained=True needs a model name, not a ViTConfig')
    weights = read_state_dict(weights_file(name))
    if num_classes is None:  # timm: the pretrained checkpoint's own head
      num_classes = weights['head.weight'].shape[0] if 'head.weight' in weights else 0
  cfg = model_config(name, num_classes=num_classes, img_size=img_size, **overrides)
  red = ReductionConfig.from_any(reduction, depth=cfg.depth)
  red.schedule(cfg.num_prefix_tokens, cfg.num_patches)  # validates token counts
  ms = MultiscaleConfig.from_any(multiscale)
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise ConfigError(f'dtype={dtype!r} is not accepted: expected float32, bfloat16 or float16')
  rngs = nnx.Rngs(params=0, dropout=1) if rngs is None else rngs
  model = VisionTransformer(cfg, reduction=red, multiscale=ms, dtype=dtype, rngs=rngs)
  return model if weights is None else load_timm_weights(model, weights)


def model_from_config(run, *, keep_rate=None, rngs=None) -> nnx.Module:
  """The model a run describes (``run.model``, ``run.reduction``, ``run.multiscale``; a RunConfig,
  or anything ``RunConfig.from_any`` reads); ``keep_rate`` overrides the reduction's keep rate.
  Parameters start from ``nnx.Rngs(params=run.seed, dropout=run.seed + 1)`` unless ``rngs``."""
  run = RunConfig.from_any(run)
  reduction = run.reduction if keep_rate is None else dataclasses.replace(run.reduction, keep_rate=keep_rate)
  return VisionTransformer(run.vit, reduction=ReductionConfig.from_any(reduction, depth=run.vit.depth),
                           multiscale=run.multiscale, dtype=jnp.dtype(run.model.dtype),
                           rngs=rngs or nnx.Rngs(params=run.seed, dropout=run.seed + 1))


def with_weights_of(source: nnx.Module, run, *, rngs=None) -> tuple[nnx.Module, list[str], list[str]]:
  """The model ``run`` describes, its parameters taken from ``source`` (a trained model of the same
  backbone, e.g. under another token reduction): ``(model, fresh, left_out)``. ``fresh`` names the
  parameters ``source`` lacks, which start as in a new model (a multi-scale fusion a backbone never
  had: its zero-initialised output projections leave the function unchanged; a fusion of another
  method than ``source``'s); ``left_out`` those of ``source`` the new model has no place for (a fusion
  the new setting drops or replaces). A parameter of another shape raises ConfigError (another backbone)."""
  model = model_from_config(run, rngs=rngs)
  src = dict(nnx.to_flat_state(nnx.state(source, nnx.Param)))
  if source.multiscale_cfg != model.multiscale_cfg:  # another fusion: none of its parameters carry over
    src = {p: None if p[0] == 'multiscale' else v for p, v in src.items()}
  dst = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  name = lambda path: '.'.join(str(p) for p in path)
  carried = [p for p in dst if src.get(p) is not None]  # None: a parameter of another fusion, never carried
  wrong = [f'{name(p)} {tuple(src[p][...].shape)} (the model: {tuple(dst[p][...].shape)})' for p in carried
           if src[p][...].shape != dst[p][...].shape]
  if wrong:
    raise ConfigError(f'the weights are of another backbone: {", ".join(wrong[:3])}')
  nnx.update(model, nnx.from_flat_state([(p, src[p]) for p in carried]))
  fresh = sorted(name(p) for p in dst if src.get(p) is None)
  left_out = sorted(name(p) for p, v in src.items() if v is None or p not in dst)
  return model, fresh, left_out

"""Token schedules and compute: analytic multiply-adds (the DeiT/EViT papers' convention,
DeiT-S = 4.6 GMACs) and XLA's own count from the compiled forward."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from tpm_jax.config import MultiscaleConfig, ReductionConfig, ViTConfig


@dataclasses.dataclass(frozen=True)
class TokenSchedule:
  """Sequence lengths through the model (protected tokens included).

  per_block[i] = (tokens in block i's attention, tokens in its MLP); stages = the lengths between
  reductions, e.g. 197 -> 139 -> 98 -> 69 for DeiT-S at keep 0.7 at blocks (3, 6, 9)."""
  per_block: list[tuple[int, int]]
  stages: list[int]

  def __str__(self):
    return ' -> '.join(str(n) for n in self.stages)


def _resolve(config, **kw) -> tuple[ViTConfig, ReductionConfig, MultiscaleConfig]:
  """A model, a timm name (+ create_model kwargs) or an ml_collections training config."""
  from tpm_jax.models.registry import model_config
  if hasattr(config, 'cfg') and hasattr(config, 'reduction'):  # a VisionTransformer
    return config.cfg, config.reduction, config.multiscale_cfg
  if hasattr(config, 'model') and hasattr(config.model, 'name'):  # a training ConfigDict
    m = config.model
    kw = dict(num_classes=m.get('num_classes'), img_size=m.get('img_size'), reduction=config.get('reduction'),
              multiscale=config.get('multiscale'), **kw)
    config = m.name
  reduction, multiscale = kw.pop('reduction', None), kw.pop('multiscale', None)
  kw.pop('dtype', None), kw.pop('rngs', None)
  cfg = model_config(config, **kw)
  return cfg, ReductionConfig.from_any(reduction, depth=cfg.depth), MultiscaleConfig.from_any(multiscale)


def token_schedule(config, **kwargs) -> TokenSchedule:
  """Token counts per block for a model, a timm name with ``create_model`` kwargs, or a training
  config. ``print(tpm_jax.token_schedule('deit_small_patch16_224', reduction='tpm'))``."""
  cfg, red, _ = _resolve(config, **kwargs)
  n = cfg.num_prefix_tokens + cfg.num_patches
  after = {loc: n_out for loc, _, n_out in red.schedule(cfg.num_prefix_tokens, cfg.num_patches)}
  per_block, stages = [], [n]
  for i in range(cfg.depth):
    n_mlp = after.get(i, n)
    per_block.append((n, n_mlp))
    if i in after:
      stages.append(n_mlp)
    n = n_mlp
  return TokenSchedule(per_block, stages)


def analytic_macs(config, **kwargs) -> int:
  """Multiply-adds of one image's forward pass: every matmul, including the reduction's own
  similarity and merge contractions and the multi-scale fusion (norms, softmax and elementwise
  ops are not counted, as in the papers)."""
  cfg, red, ms = _resolve(config, **kwargs)
  D, P, hd = cfg.embed_dim, cfg.num_prefix_tokens, cfg.embed_dim // cfg.num_heads
  hidden = int(D * cfg.mlp_ratio)
  sched = token_schedule(config, **kwargs)
  keep = {loc: k for loc, k, _ in red.schedule(P, cfg.num_patches)}
  g = cfg.grid_size
  macs = cfg.num_patches * cfg.patch_size ** 2 * cfg.in_chans * D    # patch embedding
  macs += D * cfg.num_classes * (2 if cfg.distilled else 1)           # head(s)
  first = min(keep) if keep else 0
  for i, (n, n_mlp) in enumerate(sched.per_block):
    if ms.enabled and i == first:
      macs += _multiscale_macs(cfg, ms)
    macs += n * D * 3 * D + 2 * n * n * D + n * D * D  # qkv, q @ k, attn @ v, proj
    if i in keep:
      macs += _reduction_macs(red, n - P, keep[i], n, D, hd)
    macs += 2 * n_mlp * D * hidden
  return macs


def _reduction_macs(red: ReductionConfig, m: int, k: int, n: int, D: int, hd: int) -> int:
  if k >= m:
    return 0
  d_metric = hd if (red.similarity == 'keys' or red.method == 'tome') else D
  if red.method == 'tpm':
    rest = m - k
    return rest * k * d_metric + rest * k * (D + 2)  # cosine similarity; merge of tokens, weights, sizes
  if red.method == 'evit':
    return (m - k) * D  # the fused token
  if red.method == 'tome':
    na, nb = (n + 1) // 2, n // 2
    r = m - k
    return na * nb * d_metric + r * nb * (D + 1)
  return 0


def _multiscale_macs(cfg: ViTConfig, ms: MultiscaleConfig) -> int:
  D, g, M = cfg.embed_dim, cfg.grid_size, cfg.num_patches
  if ms.method == 'pool':
    return sum(math.ceil(g / s) ** 2 * D * D for s in ms.scales)
  if ms.source == 'patch':
    mc = (g // 2) ** 2
    conv = mc * (2 * cfg.patch_size) ** 2 * cfg.in_chans * D
  else:
    mc, conv = math.ceil(g / 2) ** 2, 0
  return conv + M * D * D + mc * 2 * D * D + 2 * M * mc * D + M * D * D  # q, kv, q @ k, attn @ v, proj


def xla_flops(model, img_size: int | None = None) -> float:
  """FLOPs XLA counts for the compiled forward of one image."""
  cfg = model.cfg
  img_size = img_size or cfg.img_size
  graphdef, state = nnx.split(model)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  x = jax.ShapeDtypeStruct((1, img_size, img_size, cfg.in_chans), jnp.float32)
  compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(abstract, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def count_flops(model, img_size: int | None = None) -> dict:
  """{'analytic_gmacs': multiply-adds per image / 1e9, 'xla_gflops': XLA's flops per image / 1e9}.

  XLA counts 2 flops per multiply-add, so ``xla_gflops ~= 2 * analytic_gmacs``. ``img_size``
  evaluates the same architecture at another resolution (a model with the same config at that
  size, built abstractly, no parameters allocated)."""
  if img_size and img_size != model.cfg.img_size:
    from tpm_jax.models.vit import VisionTransformer
    cfg = model.cfg.replace(img_size=img_size)
    model = nnx.eval_shape(lambda: VisionTransformer(cfg, reduction=model.reduction, multiscale=model.multiscale_cfg,
                                                     dtype=model.dtype, rngs=nnx.Rngs(0)))
  return dict(analytic_gmacs=analytic_macs(model) / 1e9, xla_gflops=xla_flops(model) / 1e9)

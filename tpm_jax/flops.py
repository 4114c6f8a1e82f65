"""Token schedules and compute: analytic multiply-adds (the DeiT/EViT papers' convention,
DeiT-S = 4.6 GMACs) and XLA's own count from the compiled forward."""
from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from tpm_jax.config import MultiscaleConfig, ReductionConfig, RunConfig, ViTConfig
from tpm_jax.models.registry import model_config
from tpm_jax.models.vit import VisionTransformer


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
  """A model, a timm name (+ create_model kwargs) or a training config (RunConfig, ConfigDict or mapping)."""
  if hasattr(config, 'cfg') and hasattr(config, 'reduction'):  # a VisionTransformer
    return config.cfg, config.reduction, config.multiscale_cfg
  if hasattr(config, 'model') and hasattr(config.model, 'name'):  # a training config: the model it describes
    run = RunConfig.from_any(config)
    return run.vit, run.reduction, run.multiscale
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
  macs = cfg.num_patches * cfg.patch_size ** 2 * cfg.in_chans * D    # patch embedding
  macs += D * cfg.num_classes * (2 if cfg.distilled else 1)           # head(s)
  if cfg.global_pool == 'map':  # the MAP head: one query over the final patch tokens, then its MLP
    n = sched.stages[-1] - P
    macs += D * D + n * D * 2 * D + 2 * n * D + D * D + 2 * D * hidden  # q, kv, q @ k, attn @ v, proj, mlp
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
    distinct = m * m * d_metric if red.distinct else 0  # every prunable token's nearest other one
    return distinct + rest * k * d_metric + rest * k * (D + 2)  # cosine similarity; merge of tokens, weights, sizes
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


def _lower_forward(model):
  """The forward of one image, lowered for XLA."""
  cfg = model.cfg
  graphdef, state = nnx.split(model)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  x = jax.ShapeDtypeStruct((1, cfg.img_size, cfg.img_size, cfg.in_chans), jnp.float32)
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(abstract, x)


def xla_flops(lowered, compile: bool = True) -> float:
  """FLOPs XLA's cost analysis counts for the compiled program (matmuls and elementwise ops);
  ``compile=False`` analyses the program before XLA's optimisations (about 10x faster; the
  counts agree within 0.01%, checked in tests/test_flops.py). Backends without a pre-optimisation
  analysis (GPU) analyse the compiled program."""
  cost = lowered.compile().cost_analysis() if compile else lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  if not cost and not compile:
    return xla_flops(lowered, compile=True)
  return float(cost['flops'])


_FUNC = re.compile(r'func\.func (?:public |private )?@([\w.$-]+)\(')
_CALL = re.compile(r'(?:func\.)?call @([\w.$-]+)\(')
_DOT = re.compile(r'stablehlo\.dot_general .*contracting_dims = \[([\d, ]*)\] x .*: \((tensor<[^>]*>), .*-> (tensor<[^>]*>)')
_CONV = re.compile(r'stablehlo\.convolution.*\]x\[([^\]]*)\]->.*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)')


def _dims(tensor_type: str) -> list[int]:
  return [int(d) for d in tensor_type[len('tensor<'):-1].split('x')[:-1]]


def xla_matmul_flops(lowered) -> float:
  """2 x multiply-adds of every dot_general and convolution in the lowered XLA program (calls to
  private functions counted as often as they are called): the papers' scope, counted on the
  program XLA compiles rather than on the model's description."""
  own, calls, current = {}, {}, None
  for line in lowered.as_text().splitlines():
    if m := _FUNC.search(line):
      current = m.group(1)
      own[current], calls[current] = 0, []
      continue
    if current is None:
      continue
    if m := _DOT.search(line):
      lhs, out = _dims(m.group(2)), _dims(m.group(3))
      contract = math.prod(lhs[int(i)] for i in m.group(1).split(',') if i.strip())
      own[current] += 2 * math.prod(out) * contract
    elif m := _CONV.search(line):
      labels = [l.strip() for l in m.group(1).split(',')]
      kernel, out = _dims(m.group(3)), _dims(m.group(4))
      own[current] += 2 * math.prod(out) * math.prod(kernel) // kernel[labels.index('o')]
    for c in _CALL.findall(line):
      calls[current].append(c)

  @functools.cache
  def total(fn):
    return own.get(fn, 0) + sum(total(c) for c in calls.get(fn, []))
  return float(total('main'))


def count_flops(model, img_size: int | None = None, *, compile: bool = True) -> dict:
  """Per image: ``analytic_gmacs`` (multiply-adds / 1e9, the papers' convention), ``xla_gflops``
  (XLA's ``cost_analysis()`` of the compiled forward / 1e9: matmuls at 2 flops per multiply-add
  plus the elementwise work the papers leave out) and ``xla_matmul_gflops`` (2 x the multiply-adds
  of the dot/convolution ops in the lowered program / 1e9, the papers' scope). ``img_size``
  evaluates the same architecture at another resolution (a model with the same config at that
  size, built abstractly, no parameters allocated)."""
  if img_size and img_size != model.cfg.img_size:
    cfg = model.cfg.replace(img_size=img_size)
    model = nnx.eval_shape(lambda: VisionTransformer(cfg, reduction=model.reduction, multiscale=model.multiscale_cfg,
                                                     dtype=model.dtype, rngs=nnx.Rngs(0)))
  lowered = _lower_forward(model)
  return dict(analytic_gmacs=analytic_macs(model) / 1e9, xla_gflops=xla_flops(lowered, compile) / 1e9,
              xla_matmul_gflops=xla_matmul_flops(lowered) / 1e9)

"""Configuration: every setting, its default and its value checks, in one module.

* The model side: ``ViTConfig`` (a backbone's sizes; ``MODELS``: timm's names), ``ReductionConfig``,
  ``MultiscaleConfig``, built by ``create_model`` and the ``*.from_any`` constructors.
* The run: ``RunConfig``, typed and frozen, with one section per part (``ModelSpec``,
  ``DataConfig``, ``AugConfig``, ``OptimConfig``, ...), built once at the entry points from a
  ConfigDict or a saved config.json. Functions below the entry points receive the section they use.

Bad input fails here, before anything is traced, compiled or written, with one line that names the
field and what it accepts (``ConfigError``). Checks that need the world (devices, data on disk,
weights, workdirs, output paths) are in ``tpm_jax.preflight``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
  """A configuration value is not accepted. The message is one line naming the field."""


def _fail(field: str, value: Any, accepted: str):
  raise ConfigError(f'{field}={value!r} is not accepted: expected {accepted}')


def _as_dict(value: Any, field: str) -> dict:
  """ConfigDict / Mapping / dataclass -> plain dict (one level)."""
  if dataclasses.is_dataclass(value):
    return dataclasses.asdict(value)
  if hasattr(value, "to_dict"):  # a ConfigDict (read, never imported here)
    return dict(value.to_dict())
  if isinstance(value, Mapping):
    return dict(value)
  _fail(field, value, 'a mapping, a ConfigDict or a method name')


def _check_keys(d: Mapping, allowed: Sequence[str], prefix: str):
  unknown = sorted(set(d) - set(allowed))
  if unknown:
    raise ConfigError(f'{prefix}.{unknown[0]} is not a known field: accepted fields are {", ".join(sorted(allowed))}')


def _from_any(cls, value: Any, section: str):
  """None (the defaults) | a method name | a mapping, ConfigDict or dataclass of ``cls.FIELDS`` |
  an instance of ``cls`` -> an instance, not yet validated."""
  if value is None:
    return cls()
  if isinstance(value, cls):
    return value
  if isinstance(value, str):
    return cls(method=value)
  d = _as_dict(value, section)
  _check_keys(d, cls.FIELDS, section)
  return cls(**d)


def _choice(field: str, value: Any, choices: Sequence[str]) -> str:
  if value not in choices:
    _fail(field, value, 'one of ' + ', '.join(repr(c) for c in choices))
  return value


def _int_tuple(field: str, value: Any) -> tuple[int, ...]:
  if isinstance(value, (int,)) and not isinstance(value, bool):
    return (int(value),)
  if isinstance(value, str):  # "3,6,9" from a command line
    value = [v for v in value.replace(' ', '').split(',') if v]
  try:
    out = tuple(int(v) for v in value)
  except (TypeError, ValueError):
    _fail(field, value, 'a sequence of block indices (ints)')
  if any(float(v) != int(v) for v in value):
    _fail(field, value, 'a sequence of block indices (ints)')
  return out


# ----------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------
GLOBAL_POOLS = ('token', 'avg', 'map')
ACTIVATIONS = ('gelu', 'quick_gelu')
POS_EMBED_INITS = ('trunc_normal', 'sincos2d')


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Sizes of a ViT/DeiT backbone (timm's VisionTransformer arguments, same names)."""
  img_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  num_classes: int = 1000
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  distilled: bool = False  # DeiT distillation token + head_dist
  drop_path_rate: float = 0.0
  # How the learned pos_embed starts: 'trunc_normal' (timm, std 0.02) or 'sincos2d' (big_vision's
  # 2-D sin-cos table, prefix tokens 0): from scratch on small data it learns much faster.
  pos_embed_init: str = 'trunc_normal'
  # The families (timm's VisionTransformer arguments): CLIP (pre_norm, act='quick_gelu', norm_eps=1e-5),
  # SigLIP (class_token=False, global_pool='map'), DINOv2 / DeiT III (layer_scale, reg_tokens,
  # no_embed_class), GAP ViTs (class_token=False, global_pool='avg').
  class_token: bool = True
  reg_tokens: int = 0            # register tokens after the class token (protected, like it)
  no_embed_class: bool = False   # pos_embed covers the patches only; prefix tokens get none
  pre_norm: bool = False         # CLIP: a LayerNorm after the embedding (norm_pre), patch_embed without bias
  global_pool: str = 'token'     # token (the class token) | avg (size-weighted patch mean) | map (attention pool)
  fc_norm: bool | None = None    # the final norm after pooling instead of before; None: for avg pooling
  layer_scale: float | None = None  # LayerScale's initial value (timm's init_values); None: none
  act: str = 'gelu'              # the MLPs' activation: gelu (exact) | quick_gelu (CLIP's x * sigmoid(1.702 x))
  norm_eps: float = 1e-6

  @property
  def grid_size(self) -> int:
    return self.img_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid_size ** 2

  @property
  def num_prefix_tokens(self) -> int:
    """Protected tokens in front of the patches: the class token, the distillation token, the registers."""
    return int(self.class_token) + int(self.distilled) + self.reg_tokens

  @property
  def pos_embed_prefix(self) -> int:
    """Rows of pos_embed in front of the patches' (none with ``no_embed_class``)."""
    return 0 if self.no_embed_class else self.num_prefix_tokens

  @property
  def use_fc_norm(self) -> bool:
    return self.global_pool == 'avg' if self.fc_norm is None else bool(self.fc_norm)

  def replace(self, **kw) -> 'ViTConfig':
    fields = {f.name for f in dataclasses.fields(self)}
    _check_keys(kw, fields, 'model')
    return dataclasses.replace(self, **kw).validated()

  def validated(self) -> 'ViTConfig':
    for name in ('img_size', 'patch_size', 'in_chans', 'embed_dim', 'depth', 'num_heads'):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        _fail(f'model.{name}', v, 'a positive int')
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
      _fail('model.num_classes', self.num_classes, 'a non-negative int (0: no head, the pooled features)')
    if self.img_size % self.patch_size:
      _fail('model.img_size', self.img_size, f'a multiple of model.patch_size={self.patch_size}')
    if self.embed_dim % self.num_heads:
      _fail('model.embed_dim', self.embed_dim, f'a multiple of model.num_heads={self.num_heads}')
    if not self.mlp_ratio > 0:
      _fail('model.mlp_ratio', self.mlp_ratio, 'a positive float')
    if not 0.0 <= self.drop_path_rate < 1.0:
      _fail('model.drop_path_rate', self.drop_path_rate, 'a float in [0, 1)')
    _choice('model.pos_embed_init', self.pos_embed_init, POS_EMBED_INITS)
    if self.pos_embed_init == 'sincos2d' and self.embed_dim % 4:
      _fail('model.embed_dim', self.embed_dim, "a multiple of 4 for model.pos_embed_init='sincos2d'")
    for name in ('class_token', 'no_embed_class', 'pre_norm', 'distilled', 'qkv_bias'):
      if not isinstance(getattr(self, name), bool):
        _fail(f'model.{name}', getattr(self, name), 'true or false')
    if isinstance(self.reg_tokens, bool) or not isinstance(self.reg_tokens, int) or self.reg_tokens < 0:
      _fail('model.reg_tokens', self.reg_tokens, 'a non-negative int')
    _choice('model.global_pool', self.global_pool, GLOBAL_POOLS)
    _choice('model.act', self.act, ACTIVATIONS)
    if self.global_pool == 'token' and not self.class_token:
      _fail('model.global_pool', self.global_pool, "avg or map for a model without a class token (class_token=false)")
    if self.distilled and (not self.class_token or self.reg_tokens or self.global_pool != 'token'):
      _fail('model.distilled', self.distilled, 'false unless the model has a class token, no registers and '
            "global_pool='token' (DeiT's layout)")
    if self.fc_norm is not None and not isinstance(self.fc_norm, bool):
      _fail('model.fc_norm', self.fc_norm, 'true, false or None (None: for avg pooling)')
    if self.layer_scale is not None and (isinstance(self.layer_scale, bool) or not isinstance(self.layer_scale, (int, float))
                                         or not self.layer_scale > 0):
      _fail('model.layer_scale', self.layer_scale, 'a positive float (initial value) or None')
    if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
      _fail('model.norm_eps', self.norm_eps, 'a positive float')
    return self


# ----------------------------------------------------------------------------------------------
# Token reduction
# ----------------------------------------------------------------------------------------------
REDUCTION_METHODS = ('none', 'tpm', 'evit', 'drop', 'tome')
DEFAULT_LOCATIONS = (3, 6, 9)
PROP_ATTN_METHODS = ('tpm', 'tome')  # prop_attn None: on for these
MAX_STEPS = 2 ** 31 - 1  # a run's steps: the optimizer's step counter is a 32-bit int
TPM_DISTINCT = 2.0  # tpm's default reduction.distinct (docs/RESULTS.md, section 0)
SIZED_METHODS = ('tpm', 'evit', 'tome')  # their tokens stand for several patches; drop's for one: prop_attn changes nothing


@dataclasses.dataclass(frozen=True)
class ReductionConfig:
  """Where and how tokens are reduced. See README "Token reduction" for each field.

  ``locations`` None means: (3, 6, 9) for tpm/evit/drop and for tome with ``r='keep'``, every block
  for tome with an integer r. ``r='keep'`` (``MATCHED``): ToMe on equal terms, r at each location is
  the number of tokens ``keep_rate`` removes there under tpm's schedule, so the token counts are tpm's
  (EViT's, drop's); resolved from the final model and locations, whatever set them.
  ``prop_attn`` None means: on for the methods that merge by size-weighted average (tpm, tome), off
  for evit and drop. On for tpm since docs/RESULTS.md: +1.4 top-1 at keep 0.5 (3 seeds, same budget).
  tpm's ranking and merging (only tpm reads ``similarity``, ``weight``, ``distinct``): tokens' cosine similarity,
  size-weighted merges, crucial tokens ranked by attention and distinctness (``distinct`` None: ``TPM_DISTINCT`` for
  tpm, 0 otherwise). Fine-tuned on the converged Fashion-MNIST backbone (docs/RESULTS.md, section 0) these lose 0.40
  and 1.30 points at keep 0.7 and 0.5, against 1.12 and 2.10 for keys/importance/0 and 0.54 and 1.81 for ToMe (paired
  over 3 seeds).
  """
  method: str = 'none'
  keep_rate: float | tuple[float, ...] = 0.7
  locations: tuple[int, ...] | None = None
  r: int | tuple[int, ...] | str = 8
  similarity: str = 'tokens'
  assign: str = 'hard'
  tau: float = 0.1
  weight: str = 'size'
  prop_attn: bool | None = None
  distinct: float | None = None

  FIELDS = ('method', 'keep_rate', 'locations', 'r', 'similarity', 'assign', 'tau', 'weight', 'prop_attn', 'distinct')
  MATCHED = 'keep'  # r: matched to keep_rate

  @property
  def matched(self) -> bool:
    """ToMe's r is matched to the keep rate (``r='keep'``)."""
    return self.r == self.MATCHED

  @classmethod
  def from_any(cls, value: Any, depth: int | None = None) -> 'ReductionConfig':
    """None | method name | mapping | ConfigDict | ReductionConfig -> validated ReductionConfig. A mapping with
    every field but ``distinct`` was saved (config.json, a checkpoint, an export, a sweep's records) by a version
    before ``distinct`` existed (tpm_jax before 2026-12-06), when tpm ranked by attention alone: ``distinct`` 0, the
    model it trained, not today's default."""
    r = _from_any(cls, value, 'reduction')
    if value is not None and not isinstance(value, (str, cls)) and \
        set(cls.FIELDS) - set(_as_dict(value, 'reduction')) == {'distinct'}:
      r = dataclasses.replace(r, distinct=0.0)
    return r.validated(depth)

  @property
  def enabled(self) -> bool:
    return self.method != 'none'

  @property
  def use_prop_attn(self) -> bool:
    """Whether attention takes log(size): never for drop, whose tokens all have size 1 (log 1 = 0: the same model,
    hostile pass 18's K05, SR5)."""
    if self.method not in SIZED_METHODS:
      return False
    return (self.method in PROP_ATTN_METHODS) if self.prop_attn is None else bool(self.prop_attn)

  def validated(self, depth: int | None = None) -> 'ReductionConfig':
    _choice('reduction.method', self.method, REDUCTION_METHODS)
    _choice('reduction.similarity', self.similarity, ('keys', 'tokens'))
    _choice('reduction.assign', self.assign, ('hard', 'soft'))
    _choice('reduction.weight', self.weight, ('importance', 'size', 'uniform'))
    if self.prop_attn not in (None, True, False):
      _fail('reduction.prop_attn', self.prop_attn, 'true, false or None (method default)')
    if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not 1e-3 <= self.tau <= 1e6:
      _fail('reduction.tau', self.tau, 'a float in [0.001, 1e6] (smaller is hard assignment: assign=hard)')  # pass 18's E15
    if self.distinct is None:  # the method's default
      return dataclasses.replace(self, distinct=TPM_DISTINCT if self.method == 'tpm' else 0.0).validated(depth)
    if isinstance(self.distinct, bool) or not isinstance(self.distinct, (int, float)) or not 0 <= self.distinct <= 1e6:
      _fail('reduction.distinct', self.distinct, 'a float in [0, 1e6] (0: rank by attention alone)')
    if self.distinct and self.method != 'tpm':
      _fail('reduction.distinct', self.distinct, f"0 for method {self.method!r} (it ranks tpm's crucial tokens only)")

    locations = self.locations
    if locations is not None:
      locations = _int_tuple('reduction.locations', locations)
    elif depth is not None:
      locations = (tuple(range(depth)) if self.method == 'tome' and not self.matched
                   else tuple(l for l in DEFAULT_LOCATIONS if l < depth))
    if locations is not None:
      if not locations and self.enabled:  # pass 12b's B8: a run labelled tpm that reduces nothing
        _fail('reduction.locations', self.locations, f"at least one block index for method {self.method!r} (no "
              f"reduction: method 'none')" + ('' if self.locations is not None else
                                              f'; the default blocks {DEFAULT_LOCATIONS} are past depth {depth}'))
      if any(b <= a for a, b in zip(locations, locations[1:])):
        _fail('reduction.locations', locations, 'strictly increasing block indices')
      if depth is not None and any(not 0 <= l < depth for l in locations):
        _fail('reduction.locations', locations, f'block indices in [0, {depth}) (model depth {depth})')

    keep = self.keep_rate
    if isinstance(keep, str):
      keep = [v for v in keep.replace(' ', '').split(',') if v]
    keep_t = (keep,) if isinstance(keep, (int, float)) and not isinstance(keep, bool) else tuple(keep)
    try:
      keep_t = tuple(float(k) for k in keep_t)
    except (TypeError, ValueError):
      _fail('reduction.keep_rate', self.keep_rate, 'a float in (0, 1] or one per location')
    if not keep_t or any(not 0.0 < k <= 1.0 for k in keep_t):
      _fail('reduction.keep_rate', self.keep_rate, 'a float in (0, 1] or one per location')

    r = self.r
    accepted = f"a non-negative int or one per location, or {self.MATCHED!r} (matched to keep_rate)"
    if isinstance(r, str) and r.strip() == self.MATCHED:
      r_t = (self.MATCHED,)
    else:
      if isinstance(r, str):
        r = [v for v in r.replace(' ', '').split(',') if v]
      r_t = (r,) if isinstance(r, int) and not isinstance(r, bool) else tuple(r)
      try:
        r_t = tuple(int(v) for v in r_t)
      except (TypeError, ValueError):
        _fail('reduction.r', self.r, accepted)
      if not r_t or any(v < 0 for v in r_t):
        _fail('reduction.r', self.r, accepted)

    if locations is not None and (self.method in ('tpm', 'evit', 'drop') or self.method == 'tome' and r_t == (
        self.MATCHED,)) and len(keep_t) not in (1, len(locations)):
      _fail('reduction.keep_rate', self.keep_rate,
            f'one float, or one per location ({len(locations)} locations: {locations})')
    if locations is not None and self.method == 'tome' and len(r_t) not in (1, len(locations)):
      _fail('reduction.r', self.r, f'one int, or one per location ({len(locations)} locations: {locations})')

    keep_v = keep_t[0] if len(keep_t) == 1 else keep_t
    r_v = r_t[0] if len(r_t) == 1 else r_t
    return dataclasses.replace(self, locations=locations, keep_rate=keep_v, r=r_v)

  # What each method reads besides ``method`` (the model and count_flops read no other field): a field outside
  # it changes nothing the run computes, so two runs that differ only there are one run (a sweep's labels).
  READ_BY = {'none': (), 'tpm': ('keep_rate', 'locations', 'similarity', 'assign', 'tau', 'weight', 'prop_attn', 'distinct'),
             'evit': ('keep_rate', 'locations', 'prop_attn'), 'drop': ('keep_rate', 'locations'),
             'tome': ('r', 'locations', 'prop_attn')}  # ToMe always matches keys

  def unread(self) -> tuple[str, ...]:
    """The fields this method does not read (``tau`` is read by soft assignment only; ``keep_rate`` by
    ToMe when its r is matched to it)."""
    read = set(self.READ_BY[self.method]) - ({'tau'} if self.assign != 'soft' else set())
    if self.method == 'tome' and self.matched:
      read.add('keep_rate')
    return tuple(f for f in self.FIELDS if f != 'method' and f not in read)

  def per_location(self, value) -> tuple:
    n = len(self.locations)
    return tuple(value) if isinstance(value, tuple) else (value,) * n

  def schedule(self, num_prefix: int, num_patches: int) -> list[tuple[int, int, int]]:
    """[(location, k, tokens_after)] where k is the number of prunable tokens kept there as
    destinations (the crucial tokens; for ToMe the unmerged ones) and tokens_after the sequence
    length leaving the reduction (protected tokens included). Raises ConfigError if none is left."""
    out = []
    if not self.enabled:
      return out
    m = num_patches
    keeps = self.per_location(self.keep_rate)
    rs = self.tome_r(num_patches) if self.method == 'tome' else ()
    for i, loc in enumerate(self.locations):
      if self.method == 'tome':
        k = m - min(rs[i], m // 2)  # ToMe caps r at half the prunable tokens
        m = k
      else:
        k = _kept(keeps[i], m)
        m = k + (1 if self.method == 'evit' and k < m else 0)  # EViT's fused token
      if m < 1:
        _fail('reduction.r', self.r, f'values that leave at least 1 token (none left after block {loc})')
      out.append((loc, k, num_prefix + m))
    return out

  def warmup_keep_rates(self, stages: int) -> list:
    """EViT's keep-rate warmup quantised into ``stages`` rates from 1 to ``keep_rate`` (one or one per
    location), each a separately compiled train step (``RunConfig.keep_stages``)."""
    target = self.keep_rate

    def rate(i):
      f = i / (stages - 1)
      return tuple(1 - (1 - t) * f for t in target) if isinstance(target, tuple) else 1 - (1 - target) * f
    return [rate(i) for i in range(stages)]

  def tome_r(self, num_patches: int) -> tuple[int, ...]:
    """ToMe's r at each location: ``r`` itself, or (``r='keep'``) the tokens the keep rate removes there
    under tpm's schedule, so that the counts are tpm's. ToMe merges at most half the prunable tokens at
    a block, so below keep 0.5 its counts stay higher (``schedule`` says so)."""
    if not self.matched:
      return self.per_location(self.r)
    m, out = num_patches, []
    for keep in self.per_location(self.keep_rate):
      k = _kept(keep, m)
      out.append(m - k)
      m = k
    return tuple(out)


def _kept(keep: float, m: int) -> int:
  """K = ceil(keep_rate * M): the prunable tokens a keep rate leaves of M (at least 1)."""
  return max(1, min(m, math.ceil(keep * m - 1e-9)))


# ----------------------------------------------------------------------------------------------
# Multi-scale fusion
# ----------------------------------------------------------------------------------------------
MULTISCALE_METHODS = ('none', 'pool', 'cross')


@dataclasses.dataclass(frozen=True)
class MultiscaleConfig:
  """Multi-scale feature fusion applied once, before the first reduction location.

  method: none | pool | cross.  source (cross only): 'pool' (patch grid pooled 2x2) or 'patch'
  (a second patch embedding at twice the patch size).  scales (pool only): pooling factors.
  """
  method: str = 'none'
  source: str = 'pool'
  scales: tuple[int, ...] = (2, 4)

  FIELDS = ('method', 'source', 'scales')

  @classmethod
  def from_any(cls, value: Any) -> 'MultiscaleConfig':
    """None | method name | mapping | ConfigDict | MultiscaleConfig -> validated MultiscaleConfig."""
    return _from_any(cls, value, 'multiscale').validated()

  @property
  def enabled(self) -> bool:
    return self.method != 'none'

  def unread(self) -> tuple[str, ...]:
    """The fields this fusion does not read: ``source`` is cross's, ``scales`` pool's; none reads neither."""
    read = {'none': (), 'pool': ('scales',), 'cross': ('source',)}[self.method]
    return tuple(f for f in self.FIELDS if f != 'method' and f not in read)

  def validated(self) -> 'MultiscaleConfig':
    _choice('multiscale.method', self.method, MULTISCALE_METHODS)
    _choice('multiscale.source', self.source, ('pool', 'patch'))
    scales = _int_tuple('multiscale.scales', self.scales)
    if not scales or any(s < 2 for s in scales):
      _fail('multiscale.scales', self.scales, 'pooling factors >= 2')
    return dataclasses.replace(self, scales=scales)


# ----------------------------------------------------------------------------------------------
# Named backbones (timm's create_model names and sizes)
# ----------------------------------------------------------------------------------------------
_TI = dict(embed_dim=192, depth=12, num_heads=3)
_S = dict(embed_dim=384, depth=12, num_heads=6)
_B = dict(embed_dim=768, depth=12, num_heads=12)
_L = dict(embed_dim=1024, depth=24, num_heads=16)

# name -> ViTConfig fields
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
    # CLIP image towers: pre-norm, LayerNorm eps 1e-5, patch embedding without bias
    'vit_base_patch16_clip_224': dict(_B, pre_norm=True, norm_eps=1e-5),
    'vit_base_patch16_clip_quickgelu_224': dict(_B, pre_norm=True, norm_eps=1e-5, act='quick_gelu', num_classes=512),
    # SigLIP image towers: no class token; attention pooling (MAP) or the patches' mean
    'vit_base_patch16_siglip_224': dict(_B, class_token=False, global_pool='map', num_classes=0),
    'vit_base_patch16_siglip_gap_224': dict(_B, class_token=False, global_pool='avg', fc_norm=False, num_classes=0),
    # DINOv2 (patch 14 at 518) and DeiT III: LayerScale; registers without position embedding
    'vit_small_patch14_dinov2': dict(_S, patch_size=14, img_size=518, layer_scale=1e-5, num_classes=0),
    'vit_small_patch14_reg4_dinov2': dict(_S, patch_size=14, img_size=518, layer_scale=1e-5, reg_tokens=4,
                                          no_embed_class=True, num_classes=0),
    'deit3_small_patch16_224': dict(_S, layer_scale=1e-6, no_embed_class=True),
    # global-average-pool ViTs, without a class token (and with registers)
    'vit_base_patch16_gap_224': dict(_B, num_heads=16, class_token=False, global_pool='avg', fc_norm=False),
    'vit_medium_patch16_reg4_gap_256': dict(embed_dim=512, depth=12, num_heads=8, img_size=256, layer_scale=1e-5,
                                            class_token=False, no_embed_class=True, reg_tokens=4, global_pool='avg'),
    # Not a timm model: a base for small test/quickstart models; override any size.
    'vit_custom': dict(embed_dim=192, depth=12, num_heads=3),
}


def split_model_name(name: str) -> tuple[str, str | None]:
  """timm's ``architecture.tag``: ``'vit_base_patch16_siglip_224.webli'`` -> (architecture, 'webli');
  the tag picks pretrained weights, never the architecture."""
  arch, _, tag = name.partition('.')
  return arch, tag or None


# timm's default pretrained tag of each architecture (timm 1.0's ``default_cfgs`` order)
DEFAULT_TAGS = {
    'deit_tiny_patch16_224': 'fb_in1k', 'deit_small_patch16_224': 'fb_in1k', 'deit_base_patch16_224': 'fb_in1k',
    'deit_base_patch16_384': 'fb_in1k', 'deit_tiny_distilled_patch16_224': 'fb_in1k',
    'deit_small_distilled_patch16_224': 'fb_in1k', 'deit_base_distilled_patch16_224': 'fb_in1k',
    'deit_base_distilled_patch16_384': 'fb_in1k', 'deit3_small_patch16_224': 'fb_in1k',
    'vit_tiny_patch16_224': 'augreg_in21k_ft_in1k', 'vit_small_patch16_224': 'augreg_in21k_ft_in1k',
    'vit_base_patch16_224': 'augreg2_in21k_ft_in1k', 'vit_large_patch16_224': 'augreg_in21k_ft_in1k',
    'vit_tiny_patch16_384': 'augreg_in21k_ft_in1k', 'vit_small_patch16_384': 'augreg_in21k_ft_in1k',
    'vit_base_patch16_384': 'augreg_in21k_ft_in1k', 'vit_large_patch16_384': 'augreg_in21k_ft_in1k',
    'vit_base_patch32_224': 'augreg_in21k_ft_in1k',
    'vit_base_patch16_clip_224': 'laion2b_ft_in12k_in1k', 'vit_base_patch16_clip_quickgelu_224': 'metaclip_2pt5b',
    'vit_base_patch16_siglip_224': 'v2_webli', 'vit_base_patch16_siglip_gap_224': 'v2_webli',
    'vit_small_patch14_dinov2': 'lvd142m', 'vit_small_patch14_reg4_dinov2': 'lvd142m',
    'vit_medium_patch16_reg4_gap_256': 'sbb_in12k_ft_in1k',
}
# architectures whose weights timm keeps under another architecture's name
HUB_ARCHITECTURE = {'vit_base_patch16_clip_quickgelu_224': 'vit_base_patch16_clip_224'}


def pretrained_repo(name: str) -> str | None:
  """The Hub repository of ``name``'s pretrained weights, ``timm/<architecture>.<tag>`` (timm's default tag where
  the name gives none), or None where there is no default (``pretrained.hub_repo`` says so). Two names with one
  repository load the same weights: ``deit_small_patch16_224`` and ``deit_small_patch16_224.fb_in1k``."""
  arch, tag = split_model_name(name)
  tag = tag or DEFAULT_TAGS.get(arch)
  return None if tag is None else f'timm/{HUB_ARCHITECTURE.get(arch, arch)}.{tag}'


def model_config(name: str | ViTConfig, **overrides) -> ViTConfig:
  """Resolve a timm name (``architecture`` or ``architecture.tag``; or a ViTConfig) plus field
  overrides (None: the named model's) into a validated ViTConfig."""
  if isinstance(name, str):
    name = split_model_name(name)[0]
  if isinstance(name, ViTConfig):
    base = name
  elif isinstance(name, str) and name in MODELS:
    base = ViTConfig(**MODELS[name])
  else:
    raise ConfigError(f'model.name={name!r} is not accepted: expected one of {", ".join(sorted(MODELS))}')
  return base.replace(**{k: v for k, v in overrides.items() if v is not None})


# ----------------------------------------------------------------------------------------------
# Augmentation strings
# ----------------------------------------------------------------------------------------------
def parse_randaugment(spec: str) -> dict | None:
  """timm's config string ('rand-m9-mstd0.5-inc1', 'rand-m9-n2'; also -p0.5, -mmax10) -> rand_augment() kwargs."""
  if not spec:
    return None
  if not isinstance(spec, str) or spec.split('-')[0] != 'rand':
    raise ConfigError(f'aug.randaugment={spec!r}: expected a timm RandAugment string like rand-m9-mstd0.5-inc1, '
                      f'or empty')
  kw = dict(num_layers=2, magnitude=9, magnitude_std=0.0, increasing=False)
  for part in spec.split('-')[1:]:
    key, value = (re.split(r'(\d.*)', part) + [''])[:2]
    try:
      if key == 'mstd':
        kw['magnitude_std'] = float(value) if float(value) <= 100 else float('inf')  # timm: > 100 is uniform
      elif key == 'mmax':
        kw['magnitude_max'] = int(value)
      elif key == 'inc':
        kw['increasing'] = bool(int(value))
      elif key == 'm':
        kw['magnitude'] = int(value)
      elif key == 'n':
        kw['num_layers'] = int(value)
      elif key == 'p':
        kw['prob'] = float(value)
      else:
        raise ValueError
    except ValueError:
      raise ConfigError(f'aug.randaugment={spec!r}: unknown part {part!r}') from None
  return kw


# ----------------------------------------------------------------------------------------------
# The run: every training setting, typed and frozen, with its default and its checks.
#
# Built once at the entry points (train.py, eval.py, export, sweep, quickstart) from a ConfigDict
# (``--config``), a saved config.json or a checkpoint's meta: ``RunConfig.from_any(x)``. Nothing
# below the entry points reads a ConfigDict; functions receive the section they use
# (``run.optim``, ``run.dataset``, ``run.aug``, ...). ``to_dict()`` is what config.json holds.
# The checks that need the world (devices, data on disk, weights, the workdir) are in
# ``tpm_jax.preflight``.
# ----------------------------------------------------------------------------------------------
def _typed(field: str, value: Any, kind: str) -> Any:
  """``value`` as ``kind`` (a field's annotation: int, float, bool, str, 'X | None', tuple[...])
  or ConfigError naming ``field``."""
  if kind.endswith(' | None'):
    return None if value is None else _typed(field, value, kind[:-len(' | None')])
  if kind == 'bool':
    if isinstance(value, bool):
      return value
    _fail(field, value, 'true or false')
  if kind == 'int':
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
      _fail(field, value, 'an int')
    return int(value)
  if kind == 'float':
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      _fail(field, value, 'a finite number')
    return float(value)
  if kind == 'str':
    if not isinstance(value, str):
      _fail(field, value, 'a string')
    return value
  if kind.startswith('tuple['):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
      _fail(field, value, 'a sequence of numbers')
    return tuple(_typed(field, v, 'float') for v in value)
  return value  # Any: checked by the section itself


class _Section:
  """A frozen dataclass of settings read from a mapping: unknown fields refused, each value typed."""
  SECTION = ''

  @classmethod
  def from_dict(cls, d: Mapping | None):
    d = {} if d is None else _as_dict(d, cls.SECTION)
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(d, names, cls.SECTION)
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    return cls(**{k: _typed(f'{cls.SECTION}.{k}', v, kinds[k]) for k, v in d.items()}).validated()

  def validated(self):
    return self

  def to_dict(self) -> dict:
    return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

  def get(self, name: str, default=None):
    """Mapping-style read, for the data modules that also take plain dicts."""
    return getattr(self, name, default)


def _jsonable(v):
  if isinstance(v, tuple):
    return [_jsonable(x) for x in v]
  if dataclasses.is_dataclass(v):
    return {f.name: _jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
  return v


def epochs_in_steps(field: str, epochs: float, steps_per_epoch: float, rounding) -> int:
  """``epochs`` (the value of ``field``) of ``steps_per_epoch`` steps as a whole number of steps
  (``rounding``: ``round`` or ``math.ceil``); more than ``MAX_STEPS`` is refused naming the field (hostile
  passes 20-21's AR13, OS13, OS14: 1e308 epochs ended in an OverflowError traceback)."""
  if not epochs * steps_per_epoch <= MAX_STEPS:
    _fail(field, epochs, f'at most {MAX_STEPS} steps ({steps_per_epoch:g} steps per epoch here)')
  return int(rounding(epochs * steps_per_epoch))


def _at_least(field: str, value, low, accepted: str, *, strict: bool = False):
  if value < low or (strict and value == low):
    _fail(field, value, accepted)


@dataclasses.dataclass(frozen=True)
class ModelSpec(_Section):
  """The backbone by timm name; the size fields override the named model's (None: its own)."""
  SECTION = 'model'
  name: str = 'deit_small_patch16_224'
  num_classes: int = 1000
  img_size: int = 224
  drop_path_rate: float = 0.1
  dtype: str = 'float32'            # compute dtype: float32 | bfloat16 (parameters stay float32)
  pos_embed_init: str = 'trunc_normal'
  patch_size: int | None = None
  embed_dim: int | None = None
  depth: int | None = None
  num_heads: int | None = None
  in_chans: int | None = None

  def validated(self):
    _choice('model.dtype', self.dtype, ('float32', 'bfloat16'))
    if isinstance(self.num_classes, int) and not isinstance(self.num_classes, bool) and self.num_classes == 0:
      _fail('model.num_classes', 0, 'a positive int (the classes of the dataset: a run trains a head)')
    self.vit()
    return self

  def vit(self) -> ViTConfig:
    """The validated ViTConfig this spec describes."""
    return model_config(self.name, num_classes=self.num_classes, img_size=self.img_size,
                        drop_path_rate=self.drop_path_rate, pos_embed_init=self.pos_embed_init,
                        patch_size=self.patch_size, embed_dim=self.embed_dim, depth=self.depth,
                        num_heads=self.num_heads, in_chans=self.in_chans)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
  SECTION = 'dataset'
  name: str = 'imagenet2012'        # any TFDS image-classification dataset
  data_dir: str | None = None
  manual_dir: str | None = None     # imagenet2012: where the ILSVRC2012 tars are
  image_folder: str | None = None   # a local root/split/class/*.jpg tree instead of a TFDS name
  train_split: str = 'train'
  eval_split: str = 'validation'
  workers: int = 2                  # Grain worker processes that decode and augment (0: threads of the trainer)
  threads: int = 8                  # reading and prefetching threads per process

  def validated(self):
    _at_least('dataset.workers', self.workers, 0, 'a non-negative int (worker processes; 0 reads in the training '
              'process)')
    _at_least('dataset.threads', self.threads, 1, 'a positive int')
    for field in ('train_split', 'eval_split'):
      if not getattr(self, field).strip():
        _fail(f'dataset.{field}', getattr(self, field), 'a split name or slice, like train or train[:90%]')
    for field in ('data_dir', 'manual_dir', 'image_folder'):  # '' was the current folder (hostile pass 19's PR05)
      if getattr(self, field) is not None and not getattr(self, field).strip():
        _fail(f'dataset.{field}', getattr(self, field), 'a folder (or leave it out)')
    return self

  @property
  def where(self) -> str:
    return f'image folder {self.image_folder}' if self.image_folder else self.name

  def replace_split(self, eval_split: str) -> 'DataConfig':
    """The same data with another eval split (eval.py's --split), checked."""
    return dataclasses.replace(self, eval_split=eval_split).validated()


@dataclasses.dataclass(frozen=True)
class AugConfig(_Section):
  SECTION = 'aug'
  crop_scale: tuple[float, ...] = (0.08, 1.0)   # random resized crop area range
  hflip: bool = True
  randaugment: str = 'rand-m9-mstd0.5-inc1'     # timm string (DeiT's: m9, 2 ops); '' disables
  random_erasing: float = 0.25
  mixup: float = 0.8                            # mixup alpha (0 disables)
  cutmix: float = 1.0                           # cutmix alpha (0 disables)
  label_smoothing: float = 0.1
  eval_crop_pct: float = 224 / 256              # eval: resize to img_size / pct, centre crop img_size
  mean: tuple[float, ...] = (0.485, 0.456, 0.406)
  std: tuple[float, ...] = (0.229, 0.224, 0.225)

  def validated(self):
    if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
      _fail('aug.crop_scale', self.crop_scale, 'two area fractions (min, max) with 0 < min <= max <= 1')
    parse_randaugment(self.randaugment)
    if not 0 <= self.random_erasing <= 1:
      _fail('aug.random_erasing', self.random_erasing, 'a probability in [0, 1]')
    for field in ('mixup', 'cutmix'):
      _at_least(f'aug.{field}', getattr(self, field), 0, "a float >= 0 (the Beta distribution's alpha; 0: off)")
    if not 0 <= self.label_smoothing < 1:
      _fail('aug.label_smoothing', self.label_smoothing, 'a float in [0, 1)')
    if not 0 < self.eval_crop_pct <= 1:
      _fail('aug.eval_crop_pct', self.eval_crop_pct, 'a float in (0, 1]')
    return self


@dataclasses.dataclass(frozen=True)
class OptimConfig(_Section):
  SECTION = 'optim'
  lr: float = 2e-5                  # per 512 images: scaled by batch_size / 512
  min_lr: float = 2e-6
  warmup_epochs: float = 0.0
  weight_decay: float = 1e-6        # not applied to norms, biases, position embeddings, special tokens
  b1: float = 0.9
  b2: float = 0.999
  grad_clip: float = 0.0            # global-norm clip (0 disables)
  ema_decay: float = 0.0            # EMA of parameters (0 disables)

  def warmup_steps(self, steps_per_epoch: float) -> int:
    """The learning-rate warmup in steps: ``warmup_epochs`` epochs, rounded."""
    return epochs_in_steps('optim.warmup_epochs', self.warmup_epochs, steps_per_epoch, round)

  def validated(self):
    _at_least('optim.lr', self.lr, 0, 'a float > 0 (per 512 images)', strict=True)
    _at_least('optim.min_lr', self.min_lr, 0, 'a float >= 0')
    _at_least('optim.warmup_epochs', self.warmup_epochs, 0, 'a number >= 0 (0: no warmup)')
    _at_least('optim.weight_decay', self.weight_decay, 0, 'a float >= 0')
    _at_least('optim.grad_clip', self.grad_clip, 0, 'a float >= 0 (0: no clipping)')
    for field in ('b1', 'b2', 'ema_decay'):
      if not 0 <= getattr(self, field) < 1:
        _fail(f'optim.{field}', getattr(self, field), 'a float in [0, 1)' + (' (0: no EMA)' if field == 'ema_decay' else ''))
    return self


@dataclasses.dataclass(frozen=True)
class DistillConfig(_Section):
  SECTION = 'distill'
  alpha: float = 0.0                # self-distillation from the unpruned backbone (0: off)

  def validated(self):
    if not 0 <= self.alpha <= 1:
      _fail('distill.alpha', self.alpha, 'a float in [0, 1] (0: no self-distillation)')
    return self


@dataclasses.dataclass(frozen=True)
class InitConfig(_Section):
  SECTION = 'init'
  timm_checkpoint: str | None = None   # timm weights (.safetensors / .pth) or big_vision's (.npz) to start from
  checkpoint: str | None = None        # an export of this project (python -m tpm_jax.export)
  pretrained: bool = False             # timm's weights for model.name (architecture or architecture.tag) from
                                       # the Hugging Face Hub, through huggingface_hub's cache and offline mode

  def validated(self):
    if not isinstance(self.pretrained, bool):
      raise ConfigError(f'init.pretrained={self.pretrained!r} is not accepted: expected true or false')
    if self.pretrained and self.timm_checkpoint:
      raise ConfigError('init.pretrained=true is not accepted with init.timm_checkpoint: expected one source of '
                        'timm weights')
    if self.checkpoint and (self.timm_checkpoint or self.pretrained):
      other = 'init.timm_checkpoint' if self.timm_checkpoint else 'init.pretrained=true'
      raise ConfigError(f'init.checkpoint is not accepted with {other}: expected one source of weights (an export '
                        f'holds every parameter, so the other would have no effect)')
    return self


@dataclasses.dataclass(frozen=True)
class MeshConfig(_Section):
  SECTION = 'mesh'
  data: int = -1                    # -1 fills with the remaining devices
  fsdp: int = 1

  def validated(self):
    sizes = (self.data, self.fsdp)
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
      raise ConfigError(f'mesh=(data={self.data}, fsdp={self.fsdp}) is not accepted: expected positive sizes, at most '
                        f'one -1')
    return self

  def shape(self, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) for ``num_devices``, -1 filled with the remaining devices."""
    sizes = [self.data, self.fsdp]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ConfigError(f'mesh=(data={self.data}, fsdp={self.fsdp}) is not accepted: {num_devices} devices are not '
                          f'divisible by {known}')
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ConfigError(f'mesh=(data={self.data}, fsdp={self.fsdp}) is not accepted: sizes must multiply to the '
                        f'{num_devices} devices')
    return tuple(sizes)


PROGRESS_MODES = ('auto', 'bar', 'lines', 'off')


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Every setting of a training run. Build with ``RunConfig.from_any(configdict_or_mapping)``:
  unknown fields, wrong types and out-of-range values raise ConfigError (one line naming the field)."""
  seed: int = 0
  model: ModelSpec = ModelSpec()
  reduction: ReductionConfig = ReductionConfig()
  multiscale: MultiscaleConfig = MultiscaleConfig()
  dataset: DataConfig = DataConfig()
  aug: AugConfig = AugConfig()
  batch_size: int = 1024            # global
  eval_batch_size: int = 0          # 0: batch_size
  total_steps: int = 0              # 0: from num_epochs
  num_epochs: float = 30.0
  num_train_examples: int = 0       # 0: the train split's size
  grad_accum_steps: int = 1
  keep_warmup_epochs: float = 0.0   # EViT keep-rate warmup: keep rate 1 -> target over these epochs
  keep_warmup_stages: int = 4       # ... quantised into at most this many compiled train steps
  optim: OptimConfig = OptimConfig()
  distill: DistillConfig = DistillConfig()
  init: InitConfig = InitConfig()
  mesh: MeshConfig = MeshConfig()
  fsdp_min_size: int = 2 ** 14      # parameters smaller than this stay replicated under FSDP
  log_every_steps: int = 50
  eval_every_steps: int = 1000      # and at the last step; 0: no evaluation
  checkpoint_every_steps: int = 1000
  keep_checkpoints: int = 3
  preemption_check_every_steps: int = 10  # several processes: agree on a stop every N steps (a collective)
  progress: str = 'auto'            # auto | bar | lines | off
  overwrite: bool = False           # start over in a workdir that holds another run (the old one is kept aside)

  SECTIONS = {'model': ModelSpec, 'dataset': DataConfig, 'aug': AugConfig, 'optim': OptimConfig,
              'distill': DistillConfig, 'init': InitConfig, 'mesh': MeshConfig}
  # What identifies a run: a workdir's checkpoints continue only under the same values (resume
  # refuses others); the rest (learning rate, total_steps, ...) may change between invocations.
  # init: where the weights came from (a resumed run continues from its checkpoint; an init added or
  # changed on resume would be recorded as the origin of weights it never loaded)
  IDENTITY = ('model', 'reduction', 'multiscale', 'dataset.name', 'dataset.image_folder', 'dataset.train_split',
              'seed', 'batch_size', 'init')

  @classmethod
  def from_any(cls, value: Any) -> 'RunConfig':
    """A RunConfig, a ConfigDict (``to_dict()``), or a mapping (a config.json) -> validated RunConfig."""
    if isinstance(value, cls):
      return value
    d = _as_dict(value, 'config')
    _check_keys(d, [f.name for f in dataclasses.fields(cls)], 'config')
    kw = {}
    for f in dataclasses.fields(cls):
      if f.name not in d:
        continue
      if f.name in cls.SECTIONS:
        kw[f.name] = cls.SECTIONS[f.name].from_dict(d[f.name])
      elif f.name in ('reduction', 'multiscale'):
        kw[f.name] = d[f.name]  # resolved against the model's depth below
      else:
        kw[f.name] = _typed(f.name, d[f.name], f.type)
    model = kw.get('model', ModelSpec())
    depth = model.vit().depth
    kw['reduction'] = ReductionConfig.from_any(kw.get('reduction'), depth=depth)
    kw['multiscale'] = MultiscaleConfig.from_any(kw.get('multiscale'))
    return cls(**kw).validated()

  def validated(self) -> 'RunConfig':
    vit = self.model.vit()
    self.reduction.schedule(vit.num_prefix_tokens, vit.num_patches)  # at least one token left everywhere
    if not self.reduction.enabled and self.multiscale.enabled:
      _fail('multiscale.method', self.multiscale.method,
            "'none' when reduction.method='none' (the plain backbone; multi-scale fusion comes only with a reduction)")
    if not 0 <= self.seed < 2 ** 31:
      _fail('seed', self.seed, 'an int in [0, 2**31)')
    for field in ('batch_size', 'grad_accum_steps', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                  'preemption_check_every_steps', 'keep_warmup_stages', 'fsdp_min_size'):
      _at_least(field, getattr(self, field), 1, 'a positive int')
    if self.batch_size % self.grad_accum_steps:
      _fail('batch_size', self.batch_size, f'a multiple of grad_accum_steps={self.grad_accum_steps}')
    _at_least('total_steps', self.total_steps, 0, 'an int >= 0 (0: from num_epochs)')
    if self.total_steps > MAX_STEPS:
      _fail('total_steps', self.total_steps, f'at most {MAX_STEPS} (the step counter is a 32-bit int)')
    if not math.isfinite(self.num_epochs):  # hostile pass 20's AR13: inf epochs ended in an OverflowError traceback
      _fail('num_epochs', self.num_epochs, 'a finite number >= 0 (> 0 when total_steps=0)')
    _at_least('num_epochs', self.num_epochs, 0, 'a number >= 0 (> 0 when total_steps=0)')
    if not (self.total_steps > 0 or self.num_epochs > 0):
      _fail('total_steps', self.total_steps, 'a positive number of steps, or num_epochs > 0')
    _at_least('eval_batch_size', self.eval_batch_size, 0, 'an int >= 0 (0: batch_size)')
    _at_least('eval_every_steps', self.eval_every_steps, 0, 'an int >= 0 (0: no evaluation)')
    _at_least('num_train_examples', self.num_train_examples, 0, 'an int >= 0 (0: read from the dataset)')
    _at_least('keep_warmup_epochs', self.keep_warmup_epochs, 0, 'a number >= 0 (0: no keep-rate warmup)')
    if self.keep_warmup_epochs and self.reduction.method == 'tome' and not self.reduction.matched:
      _fail('keep_warmup_epochs', self.keep_warmup_epochs, f"0 for ToMe with an integer r ({self.reduction.r!r}: no keep "
            f"rate to warm up; with reduction.r='keep' its counts warm up with the keep rate's)")
    _choice('progress', self.progress, PROGRESS_MODES)
    for field in ('mean', 'std'):
      v = getattr(self.aug, field)
      if len(v) != 1 and len(v) < vit.in_chans or field == 'std' and any(not x > 0 for x in v):
        _fail(f'aug.{field}', v, f'one number per image channel ({vit.in_chans}), or one for all'
              + (', each > 0' if field == 'std' else ''))
    return self

  # -- derived values ----------------------------------------------------------------------------
  @property
  def vit(self) -> ViTConfig:
    return self.model.vit()

  @property
  def eval_batch(self) -> int:
    return self.eval_batch_size or self.batch_size

  def replace(self, **changes) -> 'RunConfig':
    """A changed copy, validated; sections are replaced by field: ``run.replace(seed=1)``,
    ``run.replace(init=dict(checkpoint=path))`` (merged into the section)."""
    d = self.to_dict()
    for k, v in changes.items():
      if isinstance(v, Mapping) and isinstance(d.get(k), dict):
        merged = dict(d[k], **v)
        if k == 'reduction' and merged['method'] != d[k]['method'] and 'distinct' not in v:
          merged['distinct'] = None  # another method, its own default (tpm's 2 is refused for the others: the
        d[k] = merged                # distillation teacher, method none, was)
      else:
        d[k] = _jsonable(v)
    return RunConfig.from_any(d)

  def to_dict(self) -> dict:
    """The JSON form (config.json, a checkpoint's meta); ``from_any`` reads it back."""
    return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

  # How a run is carried out, not what it computes: left out where two runs are compared whole (a sweep's
  # finished runs, the same command on a finished run). A run retrained in its folder with overwrite=true
  # is the planned run (hostile pass 11's OW_collect, OW_sweep).
  OPERATIONAL = ('overwrite', 'progress')

  def whole(self) -> dict:
    """Every dotted field with its value but the ``OPERATIONAL`` ones: what two runs must share to be one."""
    return {k: v for k, v in flat_dict(self.to_dict()).items() if k not in self.OPERATIONAL}

  def unread(self) -> tuple[str, ...]:
    """The dotted fields the run does not read: its reduction's and fusion's settings that their
    methods leave unused (``ReductionConfig.unread``, ``MultiscaleConfig.unread``), ``num_epochs`` when
    ``total_steps`` is given, the keep-rate warmup where there is none (ToMe, none; the stages without
    warmup epochs), and how the position embedding starts when weights are loaded over it."""
    out = (tuple(f'reduction.{f}' for f in self.reduction.unread())
           + tuple(f'multiscale.{f}' for f in self.multiscale.unread()))
    if self.total_steps:
      out += ('num_epochs',)
    if not self.warms_up:
      out += ('keep_warmup_epochs', 'keep_warmup_stages') if self.reduction.method in ('none', 'tome') else (
          ('keep_warmup_stages',) if not self.keep_warmup_epochs else ())
    if self.init.checkpoint or self.init.timm_checkpoint or self.init.pretrained:
      out += ('model.pos_embed_init',)
    return out

  @property
  def warms_up(self) -> bool:
    """The keep rate is warmed up (1 -> keep_rate in ``keep_warmup_stages`` compiled steps; tpm, EViT, drop, and
    ToMe matched to the keep rate)."""
    red = self.reduction
    return (self.keep_warmup_epochs > 0 and self.keep_warmup_stages > 1
            and (red.method in ('tpm', 'evit', 'drop') or red.method == 'tome' and red.matched))

  def steps(self, steps_per_epoch: float) -> int:
    """The steps the run trains: ``total_steps``, or ``num_epochs`` epochs of ``steps_per_epoch`` (the train
    split's examples, or ``num_train_examples``, over ``batch_size``), rounded up. At most ``MAX_STEPS``."""
    if self.total_steps:
      return int(self.total_steps)
    return epochs_in_steps('num_epochs', self.num_epochs, steps_per_epoch, math.ceil)

  def keep_stages(self, steps_per_epoch: float) -> list[tuple[int, object]]:
    """EViT's keep-rate warmup (1 -> target over ``keep_warmup_epochs``), quantised into at most
    ``keep_warmup_stages`` rates, each a separately compiled train step: [(first_step, keep_rate)], only the
    stages that train a step (a warmup of a few steps leaves some out). Without warmup, or one that rounds to
    no step: [(1, None)] (the configured rate). Token counts are shapes, so a smooth schedule would recompile
    every time a count changes; a few stages bound the compilations."""
    if not self.warms_up:  # keep_warmup_epochs is not read: not checked either, as a sweep's plan does not (pass 22's EP12)
      return [(1, None)]
    warm_steps = epochs_in_steps('keep_warmup_epochs', self.keep_warmup_epochs, steps_per_epoch, round)
    if warm_steps <= 0:
      return [(1, None)]
    n, last = self.keep_warmup_stages, self.steps(steps_per_epoch)
    stages = [(1 + (i * warm_steps) // (n - 1), rate) for i, rate in enumerate(self.reduction.warmup_keep_rates(n))]
    return [(first, rate) for i, (first, rate) in enumerate(stages)
            if (first <= last or i == 0) and (i + 1 == len(stages) or stages[i + 1][0] > first)]

  # The model fields ``ModelSpec.vit`` resolves (with the name): compared as the ViTConfig they give
  MODEL_SHAPE = ('name', 'num_classes', 'img_size', 'drop_path_rate', 'pos_embed_init', 'patch_size', 'embed_dim',
                 'depth', 'num_heads', 'in_chans')

  def computed(self, steps_per_epoch: float | None = None) -> dict:
    """What the run computes: ``whole()`` without the fields it does not read, the model as the ViTConfig
    its name and sizes give (the name stays where it picks pretrained weights) and the reduction's keep
    rate and r as the token counts they give. Two runs with the same are one run, whatever their labels
    say (a sweep refuses to train it twice under two names: keep 0.49 and 0.5 of 64 patches, DeiT-Ti
    and DeiT-S with the same sizes given, ToMe's r past its cap). With ``steps_per_epoch`` (where the
    train split's size is known) what is given in epochs is compared as the steps it gives: the number of
    steps, the learning-rate warmup's, and the keep-rate warmup's stages by their first step (epochs 1 and
    1.0005 of 468.75 steps are 469 steps both; a keep-rate warmup that rounds to no step is none)."""
    out = self._as_read(self.whole(), steps_per_epoch)
    for f in self.MODEL_SHAPE:
      if f != 'name' or not self.init.pretrained:
        out.pop(f'model.{f}', None)
    if self.init.pretrained:  # the name picks the weights: compared as the repository they come from
      out['model.name'] = pretrained_repo(self.model.name) or self.model.name
    unread = set(self.unread())
    out.update({f'model.vit.{k}': v for k, v in flat_dict(_jsonable(self.vit)).items() if f'model.{k}' not in unread})
    return out

  def _as_read(self, flat: dict, steps_per_epoch: float | None = None) -> dict:
    """``flat`` (dotted fields) without the fields the run does not read, ``prop_attn`` as the run uses it,
    and the reduction's keep rate and r as the token counts they give (at each warmup stage where the keep
    rate is warmed up). A reduction that removes no token anywhere, without a fusion, is the plain model
    (keep 1.0, ToMe's r=0: the same computation as method none). With ``steps_per_epoch``: epochs as the
    steps they give (``computed``)."""
    unread = set(self.unread())
    out = {k: v for k, v in flat.items() if k not in unread}
    if 'reduction.prop_attn' in out:  # None: the method's default
      out['reduction.prop_attn'] = self.reduction.use_prop_attn
    if steps_per_epoch is not None:
      for k in ('num_epochs', 'total_steps', 'num_train_examples', 'keep_warmup_epochs', 'keep_warmup_stages'):
        out.pop(k, None)
      out['steps'] = self.steps(steps_per_epoch)
      if out.pop('optim.warmup_epochs', None) is not None:
        out['optim.warmup_steps'] = self.optim.warmup_steps(steps_per_epoch)
    red, vit = self.reduction, self.vit
    if not red.enabled or 'reduction.method' not in out:
      return out
    if steps_per_epoch is None:
      firsts, rates = None, red.warmup_keep_rates(self.keep_warmup_stages) if self.warms_up else [red.keep_rate]
    else:  # the stages that train, then evaluation at the keep rate itself (reached or not: a warmup longer than
      stages = self.keep_stages(steps_per_epoch)  # the run trains keep 1 and evaluates keep_rate, hostile pass 16a's N06)
      firsts = [f for f, _ in stages] + ['eval']
      rates = [red.keep_rate if k is None else k for _, k in stages] + [red.keep_rate]
    schedules = [[list(t) for t in dataclasses.replace(red, keep_rate=k).schedule(vit.num_prefix_tokens,
                                                                                   vit.num_patches)] for k in rates]
    if self.multiscale.method == 'none' and all(after == vit.num_prefix_tokens + vit.num_patches
                                                for sched in schedules for _, _, after in sched):
      return {k: v for k, v in out.items() if not k.startswith(('reduction.', 'keep_warmup_'))} | {
          'reduction.method': 'none'}
    out.pop('reduction.keep_rate', None)
    out.pop('reduction.r', None)
    if firsts is None:
      out['reduction.schedule'] = schedules if self.warms_up else schedules[0]
    elif len(schedules) == 2 and schedules[0] == schedules[1]:  # trained and evaluated at one count: as without warmup
      out['reduction.schedule'] = schedules[0]
    else:  # each stage as its first step and counts, then the evaluation's
      out['reduction.schedule'] = [[f, s] for f, s in zip(firsts, schedules)]
    return out

  def identity(self) -> dict:
    """The dotted fields that identify the run (``IDENTITY``) with their values, as the run reads them: a
    setting its method does not read does not matter (the plain backbone's reduction settings), and ToMe's
    r is compared as the token counts it gives (a run saved as r=(19, 13) is the run r='keep' resumes)."""
    flat = flat_dict(self.to_dict())
    return self._as_read({k: v for k, v in flat.items() if any(k == f or k.startswith(f + '.') for f in self.IDENTITY)})

  MODEL_SECTIONS = ('model.', 'reduction.', 'multiscale.')
  NOT_THE_FUNCTION = ('model.dtype', 'model.drop_path_rate')  # compute precision, a training-only regulariser

  def model_differences(self, other: 'RunConfig') -> list[str]:
    """'field=<self's> (<other's>)' for each setting of the model's function that differs: the
    backbone, the reduction and the fusion (not the compute dtype or stochastic depth), but fields neither model
    reads (a method-none model's similarity or prop_attn: hostile pass 20's EC01 refused the backbone's own
    recipe as another model)."""
    mine, theirs = flat_dict(self.to_dict()), flat_dict(other.to_dict())
    unread = set(self.unread()) & set(other.unread())
    return [f'{k}={mine[k]!r} (the other: {theirs.get(k)!r})' for k in sorted(mine)
            if k.startswith(self.MODEL_SECTIONS) and k not in self.NOT_THE_FUNCTION and k not in unread
            and mine[k] != theirs.get(k)]

  def identity_differences(self, other: 'RunConfig') -> list[str]:
    """'field=<other's> there, <self's> now' for each identity field that differs."""
    return field_differences(other.identity(), self.identity(), 'now')


def field_differences(there: Mapping, here: Mapping, here_is: str) -> list[str]:
  """'field=<there's value> there, <here's value> <here_is>' for each dotted field whose values differ,
  sorted: how a saved run (a workdir's, a checkpoint's, a sweep's plan) differs from another."""
  return [f'{k}={there.get(k)!r} there, {here.get(k)!r} {here_is}' for k in sorted(set(there) | set(here))
          if there.get(k) != here.get(k)]


def flat_dict(d: Mapping, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}: nested config dicts as dotted field names."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(flat_dict(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


# The field names other tools and README refer to.
RUN_IDENTITY_FIELDS = RunConfig.IDENTITY
refuse = _fail        # refuse(field, value, accepted): raise the one-line ConfigError
check_choice = _choice

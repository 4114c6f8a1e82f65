"""Model-side configuration: the one place where model, reduction and multi-scale settings are validated.

Every user-facing entry point (``create_model``, ``train.py``, ``eval.py``) goes through the
``*.from_any`` constructors below, so bad input fails here, before anything is traced or
compiled, with one line that names the field and what it accepts (``ConfigError``).
"""
from __future__ import annotations

import dataclasses
import math
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
  if hasattr(value, 'to_dict'):  # ml_collections.ConfigDict
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

  @property
  def grid_size(self) -> int:
    return self.img_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid_size ** 2

  @property
  def num_prefix_tokens(self) -> int:
    """Protected tokens in front of the patches: CLS, plus the distillation token."""
    return 2 if self.distilled else 1

  def replace(self, **kw) -> 'ViTConfig':
    fields = {f.name for f in dataclasses.fields(self)}
    _check_keys(kw, fields, 'model')
    return dataclasses.replace(self, **kw).validated()

  def validated(self) -> 'ViTConfig':
    for name in ('img_size', 'patch_size', 'in_chans', 'num_classes', 'embed_dim', 'depth', 'num_heads'):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        _fail(f'model.{name}', v, 'a positive int')
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
    return self


# ----------------------------------------------------------------------------------------------
# Token reduction
# ----------------------------------------------------------------------------------------------
REDUCTION_METHODS = ('none', 'tpm', 'evit', 'drop', 'tome')
DEFAULT_LOCATIONS = (3, 6, 9)
PROP_ATTN_METHODS = ('tpm', 'tome')  # prop_attn None: on for these


@dataclasses.dataclass(frozen=True)
class ReductionConfig:
  """Where and how tokens are reduced. See README "Token reduction" for each field.

  ``locations`` None means: (3, 6, 9) for tpm/evit/drop, every block for tome.
  ``prop_attn`` None means: on for the methods that merge by size-weighted average (tpm, tome), off
  for evit and drop. On for tpm since docs/RESULTS.md: +1.4 top-1 at keep 0.5 (3 seeds, same budget).
  """
  method: str = 'none'
  keep_rate: float | tuple[float, ...] = 0.7
  locations: tuple[int, ...] | None = None
  r: int | tuple[int, ...] = 8
  similarity: str = 'keys'
  assign: str = 'hard'
  tau: float = 0.1
  weight: str = 'importance'
  prop_attn: bool | None = None

  FIELDS = ('method', 'keep_rate', 'locations', 'r', 'similarity', 'assign', 'tau', 'weight', 'prop_attn')

  @classmethod
  def from_any(cls, value: Any, depth: int | None = None) -> 'ReductionConfig':
    """None | method name | mapping | ConfigDict | ReductionConfig -> validated ReductionConfig."""
    return _from_any(cls, value, 'reduction').validated(depth)

  @property
  def enabled(self) -> bool:
    return self.method != 'none'

  @property
  def use_prop_attn(self) -> bool:
    return (self.method in PROP_ATTN_METHODS) if self.prop_attn is None else bool(self.prop_attn)

  def validated(self, depth: int | None = None) -> 'ReductionConfig':
    _choice('reduction.method', self.method, REDUCTION_METHODS)
    _choice('reduction.similarity', self.similarity, ('keys', 'tokens'))
    _choice('reduction.assign', self.assign, ('hard', 'soft'))
    _choice('reduction.weight', self.weight, ('importance', 'size', 'uniform'))
    if self.prop_attn not in (None, True, False):
      _fail('reduction.prop_attn', self.prop_attn, 'true, false or None (method default)')
    if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not self.tau > 0:
      _fail('reduction.tau', self.tau, 'a positive float')

    locations = self.locations
    if locations is not None:
      locations = _int_tuple('reduction.locations', locations)
    elif depth is not None:
      locations = tuple(range(depth)) if self.method == 'tome' else tuple(l for l in DEFAULT_LOCATIONS if l < depth)
    if locations is not None:
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
    if isinstance(r, str):
      r = [v for v in r.replace(' ', '').split(',') if v]
    r_t = (r,) if isinstance(r, int) and not isinstance(r, bool) else tuple(r)
    try:
      r_t = tuple(int(v) for v in r_t)
    except (TypeError, ValueError):
      _fail('reduction.r', self.r, 'a non-negative int or one per location')
    if not r_t or any(v < 0 for v in r_t):
      _fail('reduction.r', self.r, 'a non-negative int or one per location')

    if locations is not None and self.method in ('tpm', 'evit', 'drop') and len(keep_t) not in (1, len(locations)):
      _fail('reduction.keep_rate', self.keep_rate,
            f'one float, or one per location ({len(locations)} locations: {locations})')
    if locations is not None and self.method == 'tome' and len(r_t) not in (1, len(locations)):
      _fail('reduction.r', self.r, f'one int, or one per location ({len(locations)} locations: {locations})')

    keep_v = keep_t[0] if len(keep_t) == 1 else keep_t
    r_v = r_t[0] if len(r_t) == 1 else r_t
    return dataclasses.replace(self, locations=locations, keep_rate=keep_v, r=r_v)

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
    keeps, rs = self.per_location(self.keep_rate), self.per_location(self.r)
    for i, loc in enumerate(self.locations):
      if self.method == 'tome':
        k = m - min(rs[i], m // 2)  # ToMe caps r at half the prunable tokens
        m = k
      else:
        k = max(1, min(m, math.ceil(keeps[i] * m - 1e-9)))  # K = ceil(keep_rate * M)
        m = k + (1 if self.method == 'evit' and k < m else 0)  # EViT's fused token
      if m < 1:
        _fail('reduction.r', self.r, f'values that leave at least 1 token (none left after block {loc})')
      out.append((loc, k, num_prefix + m))
    return out


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

  def validated(self) -> 'MultiscaleConfig':
    _choice('multiscale.method', self.method, MULTISCALE_METHODS)
    _choice('multiscale.source', self.source, ('pool', 'patch'))
    scales = _int_tuple('multiscale.scales', self.scales)
    if not scales or any(s < 2 for s in scales):
      _fail('multiscale.scales', self.scales, 'pooling factors >= 2')
    return dataclasses.replace(self, scales=scales)


# ----------------------------------------------------------------------------------------------
# Training configs: what identifies a run (the checks themselves: tpm_jax.train_checks)
# ----------------------------------------------------------------------------------------------
# Fields whose change makes an existing workdir's checkpoints a different run.
RUN_IDENTITY_FIELDS = ('model', 'reduction', 'multiscale', 'dataset.name', 'dataset.image_folder', 'seed')
# Fields added after runs were written: a config.json without one had its default.
ADDED_FIELD_DEFAULTS = {'model.pos_embed_init': ViTConfig.pos_embed_init}


def flat_dict(d: Mapping, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}: nested config dicts as dotted field names."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(flat_dict(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def __getattr__(name):
  # validate_train_config moved beside the trainer (it needs models, data and checkpoints, which
  # import this module); the old name keeps working, resolved only when asked for.
  if name == 'validate_train_config':
    import tpm_jax.train_checks
    return tpm_jax.train_checks.validate_train_config
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

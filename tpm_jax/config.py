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
    if value is None:
      cfg = cls()
    elif isinstance(value, ReductionConfig):
      cfg = value
    elif isinstance(value, str):
      cfg = cls(method=value)
    else:
      d = _as_dict(value, 'reduction')
      _check_keys(d, cls.FIELDS, 'reduction')
      cfg = cls(**d)
    return cfg.validated(depth)

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
    if value is None:
      cfg = cls()
    elif isinstance(value, MultiscaleConfig):
      cfg = value
    elif isinstance(value, str):
      cfg = cls(method=value)
    else:
      d = _as_dict(value, 'multiscale')
      _check_keys(d, cls.FIELDS, 'multiscale')
      cfg = cls(**d)
    return cfg.validated()

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
# Training configs (train.py / eval.py): checked before anything is written or compiled
# ----------------------------------------------------------------------------------------------
IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
# Fields whose change makes an existing workdir's checkpoints a different run.
RUN_IDENTITY_FIELDS = ('model', 'reduction', 'multiscale', 'dataset.name', 'dataset.image_folder', 'seed')
# Fields added after runs were written: a config.json without one had its default.
ADDED_FIELD_DEFAULTS = {'model.pos_embed_init': ViTConfig.pos_embed_init}


def _positive_int(field, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    _fail(field, value, 'a positive int')


def validate_train_config(config, *, num_devices: int, process_count: int = 1, workdir: str | None = None) -> None:
  """Every check train.py needs, in one place, before it writes or compiles anything."""
  import os
  from flax import nnx
  from tpm_jax.models.registry import model_from_config
  m = config.model
  _choice('model.dtype', m.dtype, ('float32', 'bfloat16'))
  # Building the model abstractly runs every model, reduction and multi-scale check (no allocation).
  abstract = nnx.eval_shape(lambda: model_from_config(config))
  if config.reduction.method == 'none' and config.multiscale.method != 'none':
    _fail('multiscale.method', config.multiscale.method,
          "'none' when reduction.method='none' (the plain backbone; multi-scale fusion comes only with a reduction)")

  _positive_int('batch_size', config.batch_size)
  _positive_int('grad_accum_steps', config.grad_accum_steps)
  if config.batch_size % (num_devices * config.grad_accum_steps):
    _fail('batch_size', config.batch_size,
          f'a multiple of the {num_devices} devices x grad_accum_steps={config.grad_accum_steps}')
  if config.batch_size % process_count:
    _fail('batch_size', config.batch_size, f'a multiple of the {process_count} processes')
  if config.eval_batch_size and config.eval_batch_size % num_devices:
    _fail('eval_batch_size', config.eval_batch_size, f'a multiple of the {num_devices} devices (or 0: batch_size)')
  from tpm_jax.sharding import mesh_shape
  mesh_shape(config.mesh, num_devices)

  def number(field, ok, accepted):  # a numeric field (absent: nothing to check) that ok() accepts
    section, _, name = field.rpartition('.')
    holder = config.get(section) if section else config
    if holder is None or name not in holder:
      return
    v = holder[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
      _fail(field, v, accepted)

  number('total_steps', lambda v: v >= 0 and v == int(v), 'an int >= 0 (0: from num_epochs)')
  number('num_epochs', lambda v: v >= 0, 'a number >= 0 (used when total_steps=0)')
  if not (config.total_steps > 0 or config.num_epochs > 0):
    _fail('total_steps', config.total_steps, 'a positive number of steps, or num_epochs > 0')
  number('eval_batch_size', lambda v: v >= 0 and v == int(v), 'an int >= 0 (0: batch_size)')
  number('eval_every_steps', lambda v: v >= 0 and v == int(v), 'an int >= 0 (0: no evaluation)')
  number('num_train_examples', lambda v: v >= 0 and v == int(v), 'an int >= 0 (0: read from the dataset)')
  number('keep_warmup_epochs', lambda v: v >= 0, 'a number >= 0 (0: no keep-rate warmup)')
  number('optim.lr', lambda v: v > 0, 'a float > 0 (per 512 images)')
  number('optim.min_lr', lambda v: v >= 0, 'a float >= 0')
  number('optim.warmup_epochs', lambda v: v >= 0, 'a number >= 0 (0: no warmup)')
  number('optim.weight_decay', lambda v: v >= 0, 'a float >= 0')
  number('optim.grad_clip', lambda v: v >= 0, 'a float >= 0 (0: no clipping)')
  number('optim.ema_decay', lambda v: 0 <= v < 1, 'a float in [0, 1) (0: no EMA)')
  for field in ('optim.b1', 'optim.b2'):
    number(field, lambda v: 0 <= v < 1, 'a float in [0, 1)')
  number('distill.alpha', lambda v: 0 <= v <= 1, 'a float in [0, 1] (0: no self-distillation)')
  number('aug.label_smoothing', lambda v: 0 <= v < 1, 'a float in [0, 1)')
  for field in ('aug.mixup', 'aug.cutmix'):
    number(field, lambda v: v >= 0, 'a float >= 0 (the Beta distribution\'s alpha; 0: off)')
  number('aug.random_erasing', lambda v: 0 <= v <= 1, 'a probability in [0, 1]')
  number('aug.eval_crop_pct', lambda v: 0 < v <= 1, 'a float in (0, 1]')
  a = config.get('aug')
  if a is not None:
    scale = a.get('crop_scale', (0.08, 1.0))
    try:
      lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
      lo = hi = float('nan')
    if not 0 < lo <= hi <= 1:
      _fail('aug.crop_scale', scale, 'two area fractions (min, max) with 0 < min <= max <= 1')
    from tpm_jax.data.input_pipeline import parse_randaugment
    try:
      parse_randaugment(a.get('randaugment', ''))
    except ValueError as e:
      raise ConfigError(str(e)) from None
    chans = abstract.cfg.in_chans
    for field in ('mean', 'std'):
      v = a.get(field)
      if v is None:
        continue
      vals = tuple(v) if isinstance(v, (list, tuple)) else ()
      if (len(vals) != 1 and len(vals) < chans
          or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in vals)
          or field == 'std' and any(not x > 0 for x in vals)):
        _fail(f'aug.{field}', v, f'one number per image channel ({chans}), or one for all'
              + (', each > 0' if field == 'std' else ''))
  _positive_int('dataset.shuffle_buffer', config.dataset.get('shuffle_buffer', 1))
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    _positive_int(field, config.get(field))
  _positive_int('preemption_check_every_steps', config.get('preemption_check_every_steps', 10))
  if config.get('keep_warmup_stages', 1) < 1:
    _fail('keep_warmup_stages', config.keep_warmup_stages, 'an int >= 1')

  d = config.dataset
  if not d.get('image_folder'):
    import tensorflow_datasets as tfds
    if d.name not in tfds.list_builders():
      _fail('dataset.name', d.name, 'a TFDS dataset name (tfds.list_builders()), or set dataset.image_folder')
    if d.name == 'imagenet2012' and not _tfds_prepared(d):
      manual = os.path.expanduser(d.get('manual_dir') or '')
      missing = [f for f in IMAGENET_MANUAL_FILES if not os.path.exists(os.path.join(manual, f))]
      if missing:
        _fail('dataset.manual_dir', d.get('manual_dir'),
              f'a folder holding {" and ".join(IMAGENET_MANUAL_FILES)} (missing: {", ".join(missing)})')
  # Splits and slices against the real split sizes; an image folder's classes, one image of each decoded.
  from tpm_jax.data.checks import check_dataset
  check_dataset(d, num_classes=m.num_classes)
  for field in ('timm_checkpoint', 'checkpoint'):
    path = config.init.get(field)
    if path and not os.path.exists(os.path.expanduser(path)):
      _fail(f'init.{field}', path, 'an existing file or directory')
  if config.init.get('checkpoint'):  # an export: parameter names and shapes from its metadata
    _check_export_fits(config.init.checkpoint, abstract)
  if config.init.get('timm_checkpoint'):  # names and shapes checked against the abstract model
    from tpm_jax.timm_weights import load_timm_weights
    try:
      load_timm_weights(abstract, os.path.expanduser(config.init.timm_checkpoint))
    except (ValueError, OSError) as e:
      raise ConfigError(f'init.timm_checkpoint={config.init.timm_checkpoint!r} does not fit model '
                        f'{m.name}: {str(e).splitlines()[0]}') from e
  if workdir:
    _check_workdir(config, workdir)


def _check_export_fits(path, abstract_model) -> None:
  import os
  import jax
  import orbax.checkpoint as ocp
  from flax import nnx
  try:
    saved = ocp.StandardCheckpointer().metadata(os.path.join(os.path.abspath(os.path.expanduser(path)), 'params'))
    saved = getattr(saved, 'item_metadata', saved)
    saved_shapes = {tuple(str(k.key if hasattr(k, 'key') else k) for k in p): tuple(v.shape)
                    for p, v in jax.tree_util.tree_leaves_with_path(saved, is_leaf=_is_array_metadata)}
  except Exception as e:  # noqa: BLE001
    raise ConfigError(f'init.checkpoint={path!r} is not accepted: expected an export directory '
                      f'(python -m tpm_jax.export), could not read it ({type(e).__name__})') from e
  has_multiscale = any(k[0] == 'multiscale' for k in saved_shapes)
  for p, v in nnx.to_flat_state(nnx.state(abstract_model, nnx.Param)):
    key = tuple(str(k) for k in p)
    if key[0] == 'multiscale' and not has_multiscale:
      continue  # a backbone's export: the fusion starts from its own (zero-output) initialisation
    got = next((shape for k, shape in saved_shapes.items() if k[:len(key)] == key), None)
    if got is None or got != tuple(v.shape):
      raise ConfigError(f'init.checkpoint={path!r} does not fit the model: {".".join(key)} is '
                        f'{got if got is not None else "missing"} there, the model needs {tuple(v.shape)}')


def _is_array_metadata(x) -> bool:
  return hasattr(x, 'shape') and not isinstance(x, dict)


def _tfds_prepared(d) -> bool:
  import tensorflow_datasets as tfds
  try:
    return tfds.builder(d.name, data_dir=d.get('data_dir')).is_prepared()
  except Exception:  # noqa: BLE001
    return False


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _check_workdir(config, workdir: str) -> None:
  """Refuse a workdir that holds a run with another model, method or data (unless config.overwrite)."""
  import json
  import os
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} is a file: expected a directory (existing or to be created)')
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK):
    raise ConfigError(f'workdir {workdir}: {existing} is not writable (read-only file system or permissions)')
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path) or config.get('overwrite', False):
    return
  with open(path) as f:
    old = dict(ADDED_FIELD_DEFAULTS, **_flat(json.load(f)))
  new = _flat(json.loads(config.to_json_best_effort()))
  for key in sorted(set(old) | set(new)):
    if any(key == f or key.startswith(f + '.') for f in RUN_IDENTITY_FIELDS) and old.get(key) != new.get(key):
      raise ConfigError(f'workdir {workdir} holds a run with {key}={old.get(key)!r}, not {new.get(key)!r}: '
                        f'use another workdir, or --config.overwrite=true to start over there')

"""Shared pieces of the ml_collections configs: the base config and big_vision-style arg strings.

``python train.py --config configs/deit.py:model=deit_small_patch16_224,method=tpm,keep=0.7``
passes ``model=...,method=tpm,keep=0.7`` to ``get_config(arg)``; ``smoke`` shrinks any config to a
run of seconds. Every field can also be set with ``--config.<field>=<value>``.
"""
from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from tpm_jax.config import RunConfig

_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')

# The arg-string keys naming what ``smoke`` sets (the model and its shape): refused beside it, not ignored.
SMOKE_SETS = ('model', 'width', 'depth', 'patch')


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'a=1,b=x,flag' -> ConfigDict(a=1, b='x', flag=True), typed by ``defaults`` (which also lists
  the accepted keys; an unknown key is an error naming the accepted ones)."""
  out, given = ml_collections.ConfigDict(defaults), []
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'config arg {key!r} is not known: accepted are {", ".join(sorted(defaults))}')
    twice = [g for g in given if g.partition('=')[0].strip() == key]
    if twice:  # hostile pass 18's Z03: keep=0.7,keep=0.5 trained 0.5 without a word
      raise ValueError(f'config arg {key} is given twice ({twice[0]}, then {item}): give it once')
    default = defaults[key]
    if _ and not value.strip():  # hostile pass 20's AR02, AR09: distinct=, multiscale=, prop_attn= trained the default
      raise ValueError(f'config arg {key}= has no value: give {key}=<value>, or leave {key} out for its default')
    if not _:
      if not isinstance(default, bool):  # hostile pass 19's A02: a bare keep trained at keep 1.0 (float(True))
        raise ValueError(f'config arg {key} needs a value ({key}=...); only true/false keys stand alone')
      value = True
    elif isinstance(default, bool):  # a typo is refused, not read as false (hostile pass 18's Z25: smoke=treu)
      if value.strip().lower() not in _TRUE + _FALSE:
        raise ValueError(f'config arg {key}={value!r} is not accepted: expected true or false (or {key} alone: true)')
      value = value.strip().lower() in _TRUE
    elif isinstance(default, (int, float)):
      try:
        value = type(default)(value)
      except ValueError:
        raise ValueError(f'config arg {key}={value!r} is not accepted: expected {"an int" if isinstance(default, int) else "a number"}') from None
    with out.unlocked():
      out[key] = value
    given.append(item)
  ignored = [item for item in given if out.get('smoke') and item.partition('=')[0].strip() in SMOKE_SETS]
  if ignored:  # hostile pass 17b's N6: smoke,width=96 trained width 48 without a word
    raise ValueError(f'config arg {ignored[0]} is not accepted with smoke, which sets the model (a tiny vit_custom): '
                     f'give one or the other')
  return out


def base_config() -> ml_collections.ConfigDict:
  """Every field of a run with its default: ``tpm_jax.config.RunConfig``'s, as a ConfigDict (the
  defaults live there, once). Settings that may be None are typed placeholders, so that
  ``--config.<field>=<value>`` parses them; the reduction's keep_rate, r and locations are strings,
  one value or one per location ('0.7' or '0.9,0.7,0.5'). Recipes override what they need."""
  c = ml_collections.ConfigDict()
  for f in dataclasses.fields(RunConfig):
    default = f.default
    if dataclasses.is_dataclass(default):
      section = ml_collections.ConfigDict()
      for g in dataclasses.fields(default):
        section[g.name] = _cli_value(f.name, g.name, getattr(default, g.name), g.type)
      c[f.name] = section
    else:
      c[f.name] = default
  return c


_AS_STRINGS = {('reduction', 'keep_rate'), ('reduction', 'r'), ('reduction', 'locations')}


def _cli_value(section, name, value, annotation):
  if (section, name) in _AS_STRINGS:
    return config_dict.placeholder(str) if value is None else ','.join(map(str, value)) if isinstance(
        value, tuple) else str(value)
  if value is None:  # 'int | None' -> a placeholder of int
    kind = annotation.split(' | ')[0]
    return config_dict.placeholder({'int': int, 'float': float, 'str': str, 'bool': bool}[kind])
  return value


# The arg-string keys every recipe accepts, with their defaults. r=keep: ToMe matched to ``keep``.
RECIPE_ARGS = dict(model='deit_small_patch16_224', method='tpm', keep=0.7, r='keep', multiscale='', seed=0, smoke=False,
                   similarity='', weight='', prop_attn='', distinct='')  # '': the default (multiscale: pool with a
# reduction, none without)

# The field each arg-string key names: a run labelled key=value (a sweep's run) trains that field at that
# value. ``python -m tpm_jax.sweep`` reads a config file's ARG_FIELDS to refuse a --config.* flag on the
# field of a swept key and a label its run does not hold (e.g. model=... with smoke, which sets the model).
ARG_FIELDS = dict(model='model.name', method='reduction.method', keep='reduction.keep_rate', r='reduction.r',
                  multiscale='multiscale.method', seed='seed', similarity='reduction.similarity',
                  weight='reduction.weight', prop_attn='reduction.prop_attn', distinct='reduction.distinct')


def apply_arg(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The common arg-string keys: model, method, keep, r (ToMe's: an int, one per location, or keep:
  matched to the keep rate, ``reduction.r='keep'``), multiscale, similarity, weight, prop_attn (on|off),
  distinct (a float), seed, smoke."""
  if 'model' in a and a.model:
    c.model.name = a.model
  if 'method' in a and a.method:
    c.reduction.method = a.method
  if 'keep' in a and a.keep:
    c.reduction.keep_rate = str(a.keep)
  if 'r' in a:
    c.reduction.r = str(a.r)
  if a.get('multiscale'):  # as given: with method=none, refused as --config.multiscale.method is (hostile pass
    c.multiscale.method = a.multiscale  # 19's A07: multiscale=pool beside method=none was dropped without a word)
  elif 'multiscale' in a:  # the default: the plain backbone has none, multi-scale fusion comes with a reduction
    c.multiscale.method = 'none' if c.reduction.method == 'none' else 'pool'
  if a.get('similarity'):
    c.reduction.similarity = a.similarity
  if a.get('weight'):
    c.reduction.weight = a.weight
  if a.get('distinct') not in (None, ''):
    try:
      c.reduction.distinct = float(a.distinct)
    except ValueError:
      raise ValueError(f'config arg distinct={a.distinct!r} is not accepted: expected a number in [0, 1e6]') from None
  if a.get('prop_attn'):
    if a.prop_attn not in ('on', 'off'):
      raise ValueError(f'config arg prop_attn={a.prop_attn!r}: accepted are on, off')
    c.reduction.prop_attn = a.prop_attn == 'on'
  if 'seed' in a:
    c.seed = a.seed
  if a.get('smoke'):
    smoke(c)
  return c


def smoke(c: ml_collections.ConfigDict) -> None:
  """Shrink to a run of seconds on one CPU: a tiny ViT at 32 px, a few steps, small batches."""
  c.model.name = 'vit_custom'
  c.model.img_size, c.model.patch_size, c.model.embed_dim, c.model.depth, c.model.num_heads = 32, 4, 48, 4, 3
  c.model.drop_path_rate = 0.0
  c.model.dtype = 'float32'  # a CPU run
  c.reduction.locations = '1,2'
  c.dataset.workers = 0  # 16-image batches: threads suffice, no worker processes to start
  c.batch_size = 16
  c.total_steps = 6
  c.log_every_steps = 2
  c.eval_every_steps = 6
  c.checkpoint_every_steps = 6
  c.optim.lr = 1e-3 * 512 / 16 / 10
  c.optim.min_lr = 0.0

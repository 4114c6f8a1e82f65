"""A token reduction as one string, for ``eval.py --reduction``, the sweep's ``--reductions`` and the
benchmarks' ``--settings``: ``method[+multiscale][:value][@key=value...]``.

  none                      the unpruned model
  tpm:0.7                   tpm at keep rate 0.7, no multi-scale fusion, the reduction's defaults
  tpm+pool:0.7              with multi-scale ``pool`` fusion (``cross`` likewise)
  tpm:0.7@prop_attn=off     ``@key=value`` sets one more reduction field: similarity=keys|tokens,
                            weight=importance|size|uniform, prop_attn=on|off, assign=hard|soft,
                            tau=<float>, distinct=<float>, locations=<block>/<block>/... (e.g.
                            locations=3/6/9)
  evit:0.5, drop:0.7        EViT, plain dropping at a keep rate
  tome:8                    ToMe merging r = 8 tokens (an integer) at every block, ToMe's way
  tome:0.7                  ToMe matched to a keep rate (a number with a decimal point): at the same
                            blocks as the others (3, 6, 9), r at each is the number of tokens the keep
                            rate removes there, so the token counts equal tpm's, EViT's and drop's

The blocks are the run's own ``reduction.locations`` where its config names them (the Fashion-MNIST
configs scale DeiT's (3, 6, 9) to their depth), else (3, 6, 9) (ToMe with an integer r: every block).
"""
from __future__ import annotations

import dataclasses
import math

from tpm_jax.config import (
  DEFAULT_LOCATIONS,
  MULTISCALE_METHODS,
  REDUCTION_METHODS,
  ConfigError,
  MultiscaleConfig,
  ReductionConfig,
  RunConfig,
  ViTConfig,
)

SYNTAX = 'method[+multiscale][:value][@key=value...]'
KEYS = {'similarity': str, 'weight': str, 'assign': str, 'tau': float, 'distinct': float, 'prop_attn': bool,
        'locations': tuple}


@dataclasses.dataclass(frozen=True)
class ReductionSetting:
  """A parsed setting: ``name`` is the string as given; ``keep`` the keep rate (tome: matched), ``r``
  ToMe's integer r; ``fields`` the ``@key=value`` reduction fields, typed."""
  name: str
  method: str
  multiscale: str = 'none'
  keep: float | None = None
  r: int | None = None
  fields: tuple[tuple[str, object], ...] = ()

  def reduction(self, vit: ViTConfig, locations=None) -> ReductionConfig:
    """The ReductionConfig for a model of shape ``vit`` whose run reduces at ``locations`` (None: the
    defaults above), validated against the model's depth and token count."""
    fields = dict(self.fields)
    named = fields.pop('locations', None)
    locs = named or locations
    if self.method == 'none':
      return ReductionConfig.from_any('none', depth=vit.depth)
    d = dict(method=self.method, **fields)
    if self.method == 'tome':
      if self.r is not None:
        d['r'] = self.r
        d['locations'] = named  # None: every block, ToMe's way
      else:
        d['locations'] = locs or _default_locations(vit.depth)
        d['r'] = matched_tome_r(vit, 0.7 if self.keep is None else self.keep, d['locations'])
    else:
      d['locations'] = locs or _default_locations(vit.depth)
      if self.keep is not None:
        d['keep_rate'] = self.keep
    red = ReductionConfig.from_any(d, depth=vit.depth)
    red.schedule(vit.num_prefix_tokens, vit.num_patches)  # a token count that runs out: ConfigError now
    return red

  def apply(self, run: RunConfig) -> RunConfig:
    """``run`` with this reduction and multi-scale fusion (its source and scales kept from ``run``
    where it had the same method); its blocks are ``run``'s named ``reduction.locations``."""
    vit = run.vit
    try:
      red = self.reduction(vit, run.reduction.locations)
      multiscale = run.multiscale if self.multiscale == run.multiscale.method else MultiscaleConfig(self.multiscale)
      multiscale = dataclasses.asdict(multiscale)
      return run.replace(reduction=dataclasses.asdict(red), multiscale=multiscale)
    except ConfigError as e:
      raise ConfigError(f'reduction setting {self.name!r} does not fit the model ({run.model.name}, depth '
                        f'{vit.depth}, {vit.num_patches} patches): {e}') from None


def _default_locations(depth: int) -> tuple[int, ...]:
  return tuple(l for l in DEFAULT_LOCATIONS if l < depth)


def matched_tome_r(vit: ViTConfig, keep: float, locations) -> tuple[int, ...]:
  """ToMe's r at each of ``locations`` that leaves the token counts tpm (and EViT, drop) leave at keep
  rate ``keep`` there: ToMe on equal terms (``ReductionConfig.tome_r`` with ``r='keep'``)."""
  matched = ReductionConfig.from_any(dict(method='tome', r=ReductionConfig.MATCHED, keep_rate=keep,
                                          locations=tuple(locations)), depth=vit.depth)
  return matched.tome_r(vit.num_patches)


def _refuse(text: str, why: str):
  raise ConfigError(f'reduction setting {text!r} is not accepted: {why} (expected {SYNTAX}, e.g. tpm:0.7, '
                    f'tpm+pool:0.7@prop_attn=off, evit:0.5, drop:0.7, tome:8, tome:0.7, none)')


def parse_setting(text: str) -> ReductionSetting:
  """One setting (see the module's docstring); a malformed one raises ConfigError (one line)."""
  if not isinstance(text, str) or not text.strip():
    _refuse(str(text), 'it is empty')
  text = text.strip()
  base, *extras = text.split('@')
  head, colon, value = base.partition(':')
  method, plus, multiscale = head.partition('+')
  if method not in REDUCTION_METHODS:
    _refuse(text, f'method {method!r} is none of {", ".join(REDUCTION_METHODS)}')
  if plus and multiscale not in MULTISCALE_METHODS[1:]:
    _refuse(text, f'multi-scale fusion {multiscale!r} is none of {", ".join(MULTISCALE_METHODS[1:])}')
  if method == 'none' and (plus or colon or extras):
    _refuse(text, 'none takes no fusion, value or keys')
  keep = r = None
  if colon:
    try:
      number = float(value)
    except ValueError:
      _refuse(text, f'{value!r} is not a number')
    if not math.isfinite(number):
      _refuse(text, f'{value!r} is not a finite number')
    if method == 'tome' and '.' not in value and 'e' not in value.lower():
      r = int(number)
      if r < 0:
        _refuse(text, f'ToMe\'s r={r} is negative')
    elif not 0 < number <= 1:
      _refuse(text, f'keep rate {value} is not in (0, 1]')
    else:
      keep = number
  fields = {}
  for e in extras:
    key, eq, v = e.partition('=')
    if key in KEYS and not v:  # a known key without its value (hostile pass 18's E06)
      _refuse(text, f'@{key}= has no value')
    if key not in KEYS or not eq:
      _refuse(text, f'@{e}: accepted keys are {", ".join(f"{k}=" for k in KEYS)}')
    if key in fields:
      _refuse(text, f'@{key} is given twice')
    kind = KEYS[key]
    try:
      if kind is bool:
        if v not in ('on', 'off'):
          raise ValueError
        fields[key] = v == 'on'
      elif kind is float:
        fields[key] = float(v)
      elif kind is tuple:
        fields[key] = tuple(int(b) for b in v.split('/'))
        if min(fields[key]) < 0:
          raise ValueError
      else:
        fields[key] = v
    except ValueError:
      _refuse(text, f'@{e}: {"on or off" if kind is bool else "a number" if kind is float else "blocks as 3/6/9"}')
  setting = ReductionSetting(text, method, multiscale if plus else 'none', keep, r, tuple(fields.items()))
  try:  # the fields' own checks (a similarity, weight or assign that does not exist), on a DeiT-S shape
    # deep enough for the blocks asked (they are checked against the real model when the setting is applied)
    setting.reduction(ViTConfig(depth=max([12, *(b + 1 for b in fields.get('locations', ()))])))
  except ConfigError as e:
    _refuse(text, str(e))
  return setting


def parse_settings(text: str) -> list[ReductionSetting]:
  """Comma-separated settings; ConfigError names the first malformed one."""
  settings = [parse_setting(s) for s in str(text).split(',')]
  names = [s.name for s in settings]
  if len(set(names)) < len(names):
    raise ConfigError(f'reduction settings {text!r}: {sorted({n for n in names if names.count(n) > 1})[0]!r} '
                      f'is given twice')
  return settings

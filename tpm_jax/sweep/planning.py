"""What a sweep plans: its runs (the product of --sweep values over a config file), the labels checked against what each run
trains, one run per label (``RunConfig.computed``), and finished runs compared with the asked ones."""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import re
import sys
from collections.abc import Mapping

import jax
from flax import nnx

from tpm_jax import preflight
from tpm_jax.checkpoint import newest_saved_config
from tpm_jax.config import ConfigError, RunConfig, field_differences, flat_dict
from tpm_jax.data.sources import known_split_size
from tpm_jax.files import read_json_object
from tpm_jax.models.registry import model_from_config
from tpm_jax.sweep.config_file import load_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


PLAN = preflight.SWEEP_PLAN  # a sweep folder's plan: the runs, their configs and labels


TRAIN_PY = os.path.join(ROOT, 'train.py')


@dataclasses.dataclass
class Run:
  name: str
  values: dict               # swept key -> value (strings), in --sweep order
  config: str                # '<config file>:<arg string>', as train.py takes it
  workdir: str
  overrides: tuple = ()      # --config.<field>=<value> flags, passed on unchanged
  run_config: RunConfig | None = None  # the whole run, as train.py will build it
  base: str = ''             # what the swept values were added to: '<config file name>:<arg string> <flags>'

  def saved_config(self) -> tuple[str, dict] | None:
    """(file, config) of what the run's workdir holds: final.json's config, else the config its newest
    checkpoint step was saved with, else config.json (a record a user may edit: hostile pass 12's
    CFG_edit_nofinal); None when it holds none. ConfigError naming the file when it is unreadable."""
    for name in ('final.json', 'checkpoint', 'config.json'):
      if name == 'checkpoint':
        saved = newest_saved_config(self.workdir)
        if saved is not None:
          return saved
        continue
      path = os.path.join(self.workdir, name)
      if os.path.lexists(path):
        try:
          d = read_json_object(path)
          return path, (d['config'] if name == 'final.json' else d)
        except (OSError, ValueError, KeyError, TypeError) as e:
          raise ConfigError(f'{path} is unreadable ({type(e).__name__}): move the run\'s folder '
                            f'{self.workdir} aside to retrain it') from None
    return None

  def differences(self) -> list[str]:
    """How the run in the workdir differs from the one asked for: in what it computes (``RunConfig.computed``:
    every field it reads; a run saved as ToMe r=(19, 13) is the run asked as r='keep' when the counts agree)."""
    saved = self.saved_config()
    if saved is None or self.run_config is None:
      return []
    path, config = saved
    try:
      old = RunConfig.from_any(config)
    except ConfigError as e:
      return [f'{path} is not a readable run config ({e})']
    diffs = _run_differences(old, self.run_config, 'asked')
    return [f'{os.path.relpath(path, self.workdir)} records {diffs[0]}', *diffs[1:]] if diffs else []

  @property
  def finished(self) -> bool:
    """It has final.json, made with exactly the config asked for (``differences`` is empty)."""
    return os.path.lexists(os.path.join(self.workdir, 'final.json')) and not self.differences()

  def command(self, python: str | None = None) -> list[str]:
    return [python or sys.executable, TRAIN_PY, '--config', self.config, '--workdir', self.workdir, *self.overrides]


def parse_sweeps(sweeps) -> dict[str, list[str]]:
  """{key: [values]} from a mapping or from 'key=v1,v2,...' strings."""
  items = sweeps.items() if isinstance(sweeps, dict) else [s.partition('=')[::2] for s in sweeps]
  out = {}
  for key, values in items:
    key, values = key.strip(), [str(v).strip() for v in (values.split(',') if isinstance(values, str) else values)]
    if '.' in key:  # hostile pass 21's SP06: the values were blamed
      raise ConfigError(f'--sweep {key}: a --config.{key} field cannot be swept; sweep keys are the config file\'s '
                        f'arg-string keys (give the field as --config.{key}=VALUE, one value per sweep)')
    if not re.fullmatch(r'\w+', key) or not all(values):
      raise ConfigError(f'--sweep {key}={",".join(values)}: expected key=v1,v2,... (non-empty values)')
    if key in out:
      raise ConfigError(f'--sweep {key} is given twice')
    out[key] = values
  return out


def run_name(values: dict) -> str:
  return '_'.join(f'{k}-{re.sub(r"[^A-Za-z0-9.+-]", "-", v)}' for k, v in values.items())


def model_key(cfg: RunConfig) -> str:
  d = cfg.to_dict()
  return json.dumps([d['model'], d['reduction'], d['multiscale']], sort_keys=True, default=str)


def plan(config: str, sweeps, workdir: str, overrides=()) -> list[Run]:
  """The runs of a sweep; every config is built and its model checked (abstractly), so a bad key
  or value raises ``ConfigError`` naming it before anything runs."""
  file, _, base = config.partition(':')
  if not os.path.isfile(file):
    raise ConfigError(f'--config {file}: no such file')
  file, sweeps, checked = os.path.abspath(file), parse_sweeps(sweeps), set()
  if not sweeps:
    raise ConfigError('--sweep key=v1,v2,... is needed (at least one)')

  def build(values, what):
    arg = _arg_string(base, values)
    try:
      cfg = load_run_config(f'{file}:{arg}', overrides)
      if model_key(cfg) not in checked:
        nnx.eval_shape(lambda: model_from_config(cfg))
        checked.add(model_key(cfg))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ConfigError(f'{what}: {msg}' if what else msg) from e
    return f'{file}:{arg}', cfg

  build({}, None)  # the base config and the passed-on flags
  alone, contexts = {}, {}
  for key, values in sweeps.items():  # each value alone first, so an error names it; a value that holds only beside
    others = {k: vs for k, vs in sweeps.items() if k != key}  # another key's (multiscale=pool, distinct=2 beside
    for v in values:  # method=tpm over a method-none base: hostile pass 20's SW20, SW19f) is checked in the first
      try:  # combination where it holds
        alone[key, v], contexts[key, v] = build({key: v}, f'--sweep {key}={v}')[1], {}
      except ConfigError as refused:
        for combo in itertools.product(*others.values()):
          try:
            context = dict(zip(others, combo))
            alone[key, v], contexts[key, v] = build({**context, key: v}, None)[1], context
            break
          except ConfigError:
            continue
        else:
          raise refused from None
  declared = _arg_fields(file)
  declared = {**_check_labels(file, base, sweeps, overrides, alone, declared, contexts), **declared}
  runs = []
  for combo in itertools.product(*sweeps.values()):
    values = dict(zip(sweeps, combo))
    name = run_name(values)
    config, cfg = build(values, f'run {name}')
    runs.append(Run(name, values, config, os.path.join(os.path.abspath(workdir), 'runs', name), tuple(overrides), cfg,
                    ' '.join([f'{shown(file)}:{base}'.rstrip(':'), *_computing(overrides)])))
  for r in runs:  # each value may hold alone and not beside another key's (multiscale=pool with method=none)
    flat, unread = flat_dict(r.run_config.to_dict()), r.run_config.unread()
    for key, v in r.values.items():
      f = declared.get(key)
      if f in flat and not _holds(flat[f], v):
        raise ConfigError(f'--sweep: run {r.name} would train {f}={flat[f]!r}, not {v} (another swept value sets it): '
                          f'its label would name what was not trained; sweep these keys apart')
      if f in unread:  # keep for ToMe with an integer r (hostile pass 13a's TOME_rflag), r for tpm
        red, cfg = r.run_config.reduction, r.run_config
        why = (f'total_steps={cfg.total_steps} is given' if f == 'num_epochs' else 'init weights are loaded over it'
               if f == 'model.pos_embed_init' else f'reduction.method={red.method!r}'
               + (f', reduction.r={red.r!r}' if red.method == 'tome' else ''))
        apart = 'apart from this method' if f.startswith(('reduction.', 'multiscale.', 'keep_warmup')) else 'apart'
        raise ConfigError(f'--sweep: run {r.name} does not read {f} ({why}): its label would name what '
                          f'was not trained; sweep {key} {apart}' + (
                              " (ToMe reads keep with reduction.r='keep', the recipes' default)"
                              if f == 'reduction.keep_rate' and red.method == 'tome' else ''))
  names = [r.name for r in runs]
  twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
  if twice is not None:  # a value given twice (seed=0,0: hostile pass 18's K11), or two spelled alike (keep=0.5,0:5)
    raise ConfigError(f'--sweep: two runs get the same name {twice} (a value given twice, or values that differ only '
                      f'in punctuation): give each value once')
  return runs


def _computing(overrides) -> list[str]:
  """The --config.* flags that change what a run computes: not ``RunConfig.OPERATIONAL`` ones (progress, overwrite),
  which a table's base column leaves out (hostile pass 14a's N_OPFLAG_replan)."""
  return [o for o in overrides if o.split('=')[0][len('--config.'):] not in RunConfig.OPERATIONAL]


def shown(file: str) -> str:
  """A config file as a table shows it: relative to the repository when inside it, else whole (two
  files of one name are two bases: hostile pass 13a's MIXU)."""
  return os.path.relpath(file, ROOT) if file.startswith(ROOT + os.sep) else file


def _arg_string(base: str, values: dict) -> str:
  """The config's argument string of a run: the base's, then each swept key=value (in place of the base's own value
  of that key: a config refuses a key given twice)."""
  kept = [item for item in (base or '').split(',') if item.strip() and item.partition('=')[0].strip() not in values]
  return ','.join(kept + [f'{k}={v}' for k, v in values.items()])


def _arg_fields(file: str) -> dict:
  """The config file's ``ARG_FIELDS`` (arg-string key -> the dotted field it names; configs/common.py),
  {} when it declares none."""
  try:
    spec = importlib.util.spec_from_file_location('_tpm_jax_sweep_config', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception:  # noqa: BLE001 - load_run_config already read the file: a second reading that fails declares nothing
    return {}
  fields = getattr(module, 'ARG_FIELDS', None)
  return {str(k): str(v) for k, v in fields.items()} if isinstance(fields, Mapping) else {}


def _check_labels(file: str, base: str, sweeps: dict, overrides, alone: dict, declared: dict, contexts: dict) -> dict:
  """ConfigError unless every run trains what its label says. A key the config file declares
  (``ARG_FIELDS``) names one field of a run config (a declaration naming none is refused: pass 13a's
  OWN_typo): each value must leave that field at the value (not the config's own code, as ``smoke``
  sets the model; hostile pass 12's IGN_smoke_model, IGN_none_ms) and no --config.* flag may set it (pass 10's SW10,
  SW11; pass 11's N1, N2; pass 12's N1_*). Another key must change the config (pass 13a's
  OWN_smoke_model, OWN_none_ms: a user's config without ``ARG_FIELDS``), and a flag may not set a field
  its values (or other values of it) change. ``alone``: (key, value) -> the RunConfig of that value
  alone (or beside ``contexts[key, value]``, the other keys' values it needs), flags included, as plan() built it;
  ``declared``: ``_arg_fields``. Returns the field each undeclared key
  changes, where it changes one (for plan()'s check that each run reads it: a user's config without ``ARG_FIELDS``
  labelled method-none runs keep-0.5)."""

  def fields(values):  # without the flags
    try:
      return flat_dict(load_run_config(f'{file}:{_arg_string(base, values)}').to_dict())
    except ConfigError:  # a config that needs a flag to be valid: its own check, in plan(), named it
      return None
  plain = fields({}) if overrides or set(sweeps) - set(declared) else None
  inferred = {}
  for key, values in sweeps.items():
    if key in declared:
      mine = {v: fields({**contexts[key, v], key: v}) for v in values}
      f = declared[key]
      for v in values:
        given = flat_dict(alone[key, v].to_dict())
        if f not in given:
          raise ConfigError(f'{os.path.basename(file)}: ARG_FIELDS names {f!r} for --sweep {key}, which is no field '
                            f'of a run config (e.g. reduction.keep_rate): the labels could not be checked; name the '
                            f'field {key} sets')
        if mine[v] is None or not _holds(mine[v].get(f), v):
          trains = given[f] if mine[v] is None else mine[v].get(f)
          raise ConfigError(f'--sweep {key}={v}: the run would train {f}={trains!r}, not {v} (the config sets '
                            f'{f} itself here{", or a --config.* flag does" if overrides else ""}): its label '
                            f'would name what was not trained; sweep {key} with another base config, or leave it out')
        if given.get(f) != mine[v].get(f):
          _refuse_flag(key, v, f, given[f], mine[v][f], overrides)
      continue
    context = next((contexts[key, v] for v in values if contexts[key, v]), {})  # the same beside for all its values
    mine = {v: fields({**context, key: v}) for v in values}
    here = fields(context) if context else plain
    if here is None or any(m is None for m in mine.values()):
      continue
    # what the key changes: the fields its values set differently; a value that is the recipe's own (keep=0.7
    # where keep is 0.7 anyway) changes nothing, so other values of the key are tried (hostile pass 11's N1, N2)
    # (only the fields that then hold the value itself: a probe method=none also turns the fusion off)
    probes = [m for m in (fields({**context, key: p}) for p in _probes(values)) if m is not None]
    swept = [f for f in here if any(m.get(f) != here[f] for m in mine.values())
             or (any(m.get(f) != here[f] for m in probes) and all(_holds(mine[v].get(f), v) for v in values))]
    if len(swept) == 1:
      inferred[key] = swept[0]
    if not swept:  # no value of the key changes the config: it is ignored, or overridden (smoke sets the model)
      unheld = [v for v in values if not any(_holds(x, v) for x in mine[v].values())]
      if probes:
        v = (unheld or values)[0]
        raise ConfigError(f'--sweep {key}={v}: {os.path.basename(file)} trains the same config whatever {key} is '
                          f'(it ignores {key}, or sets what {key} names itself here): its label would name what was '
                          f'not trained; leave {key} out, or sweep it with a base config that reads it (a config '
                          f'file\'s ARG_FIELDS names the field each key sets, for these checks)')
      if unheld:
        raise ConfigError(f'--sweep {key}={unheld[0]}: the value leaves {os.path.basename(file)}\'s config as it is and '
                          f'no field holds it, so its label cannot be checked (the config may ignore {key}): leave '
                          f'{key} out (a key at the config\'s own value names nothing), or declare the field it sets '
                          f'in the config file\'s ARG_FIELDS')
    for v in values:
      given = flat_dict(alone[key, v].to_dict())
      lost = [f for f in swept if given.get(f) != mine[v].get(f)]
      if lost:
        _refuse_flag(key, v, lost[0], given[lost[0]], mine[v][lost[0]], overrides)
  return inferred


def _refuse_flag(key: str, v: str, f: str, given, own, overrides):
  flag = next((o.split('=')[0] for o in overrides
               if f == o.split('=')[0][len('--config.'):] or f.startswith(o.split('=')[0][len('--config.'):] + '.')),
              'a --config.* flag')
  raise ConfigError(f'--sweep {key}={v}: {flag} sets {f}={given!r}, which --sweep {key} changes (to {own!r} here): '
                    f'every run would train the flag\'s value under its own label; drop the flag or the sweep of {key}')


def check_one_run_per_label(runs: list[Run], earlier: dict | None = None) -> None:
  """ConfigError when two runs of the sweep, or a run and one the folder's ``sweep.json`` already plans
  under another name (``earlier``), would train the same run (``RunConfig.computed``: equal but for
  fields the run does not read, like keep for ToMe's r or method none): its result would be reported
  under two labels, or counted twice over seeds (hostile pass 12's IGN_*, SEED_00, AGG)."""
  seen = {}
  for r in earlier.get('runs', []) if earlier else []:
    try:
      config = r.get('run_config')
      if not config and runs:  # a plan written before it recorded run_config: what the run's folder holds (pass
        saved = Run(r['name'], {}, '', os.path.join(os.path.dirname(runs[0].workdir), r['name'])).saved_config()
        config = saved[1] if saved else None  # 14a's N_OLD_norc_dup)
      if config and r['name'] not in {x.name for x in runs}:
        cfg = RunConfig.from_any(config)
        seen.setdefault(computed_key(cfg), (r['name'], cfg, True))
    except (ConfigError, OSError, ValueError, AttributeError):
      continue  # a damaged plan entry or final.json: collecting names it
  for r in runs:
    key = computed_key(r.run_config)
    if key in seen:
      other, cfg, planned = seen[key]
      a, b = cfg.whole(), r.run_config.whole()
      differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
      why = (f'they differ only in {", ".join(differ)}, which change nothing it computes (not read by its method, '
             f'its default spelled out, or the same model, token counts or step counts by another name)' if differ
             else 'the values give the same config')
      where = (f'as {other}, which this folder\'s {PLAN} already plans: its table would count it twice; sweep the '
               f'other values only' if planned else f'as {other}: its result would be reported under two labels; '
               f'drop one of the values')
      raise ConfigError(f'--sweep: run {r.name} would train the same run {where} ({why})')
    seen[key] = (r.name, r.run_config, False)


def _computed(run: RunConfig) -> dict:
  """What ``run`` computes (``RunConfig.computed``), with its epochs as steps where its train split's size is known
  now (``num_train_examples``, an image folder, a prepared TFDS dataset): two epoch counts that give one step count
  are one run (hostile pass 15's N_EP_ceil, N_WARM_round0). Data not prepared yet is compared by its epochs."""
  n = run.num_train_examples or _split_size(run.dataset, run.dataset.train_split)
  return run.computed(n / run.batch_size if n else None)


_SPLIT_SIZES = {}  # known sizes only: data prepared by the sweep's first run is known from then on


def _split_size(data, spec: str) -> int | None:
  if (data, spec) not in _SPLIT_SIZES:
    n = known_split_size(data, spec)
    if n is None:
      return None
    _SPLIT_SIZES[data, spec] = n
  return _SPLIT_SIZES[data, spec]


def check_inputs(runs: list[Run]) -> None:
  """What train.py checks at its start, but its workdir (``preflight.check_run``: the data, the init weights, the
  devices), for the runs still to train, once per data, init weights and model: bad input is one line, exit 2, before
  the sweep writes anything (hostile passes 16a's N25, 17's N25_init). Not for ``--print_commands``, whose runs may
  train elsewhere, where their data and weights are."""
  seen = set()
  for r in runs:
    c = r.run_config
    key = None if c is None else (c.dataset, c.init, model_key(c))
    if key is None or key in seen or r.finished:
      continue
    seen.add(key)
    preflight.check_run(c, num_devices=jax.device_count())


def same_run_as(run: Run, earlier: list[Run]) -> str | None:
  """The name of the first of ``earlier`` that trains the same run as ``run`` (``computed_key``), or None. The sweep
  asks again before each run: data prepared by an earlier run gives epochs as steps (hostile pass 16a's N12). An
  earlier run's key is computed again only once more split sizes are known (``_SPLIT_SIZES`` only grows): a sweep of
  n runs computes about n keys, not n^2 / 2."""
  key = computed_key(run.run_config)  # first: it reads its data's size, known now if an earlier run prepared it
  return next((r.name for r in earlier if r.run_config is not None and _key_now(r.run_config) == key), None)


_KEYS = {}  # id(run config) -> (the run config, how many split sizes were known, its computed_key then)


def _key_now(run: RunConfig) -> str:
  held = _KEYS.get(id(run))
  if held is None or held[0] is not run or held[1] != len(_SPLIT_SIZES):
    held = _KEYS[id(run)] = (run, len(_SPLIT_SIZES), computed_key(run))
  return held[2]


def computed_key(run: RunConfig, but=()) -> str:
  """What ``run`` computes (``_computed``) as one comparable string, without the fields ``but``: two runs with the
  same are one run."""
  return json.dumps({k: v for k, v in _computed(run).items() if k not in but}, sort_keys=True, default=str)


def _holds(value, v: str) -> bool:
  """Whether a config field's value is the swept value ``v`` itself (0.7, '0.7', (0.7,), 'tpm'), or one of
  a pair it sets (crop_min=0.6 -> aug.crop_scale=(0.6, 1.0))."""
  if isinstance(value, (list, tuple)):
    return any(_holds(x, v) for x in value)
  if isinstance(value, bool):  # prop_attn=on|off; another word is no boolean
    words = {'on': True, 'true': True, '1': True, 'yes': True, 'off': False, 'false': False, '0': False, 'no': False}
    return words.get(v.lower()) is value
  try:
    return str(value) == v or float(value) == float(v)
  except (TypeError, ValueError):
    return False


def _probes(values) -> list[str]:
  """Other values of a swept key, to see which fields it sets: for numbers half, double and one more;
  otherwise 'none' (a method, a fusion)."""
  out = []
  for v in values:
    try:
      x = float(v)
    except ValueError:
      out.append('none')
      continue
    out += [str(x / 2), str(x * 2)] + ([str(int(x) + 1)] if x == int(x) else [])
  return [p for p in dict.fromkeys(out) if p not in values]


def check_existing(runs: list[Run]) -> None:
  """ConfigError (exit 2, before anything runs) when any run's workdir holds a run made with other
  settings than asked for now: its results would be reported under the wrong label."""
  differ = [(r, d) for r in runs for d in [r.differences()] if d]
  if differ:
    r, d = differ[0]
    names = ', '.join(x.name for x, _ in differ[:5]) + (f' and {len(differ) - 5} more' if len(differ) > 5 else '')
    raise ConfigError(f'{len(differ)} runs in this sweep\'s workdir were made with other settings ({names}; '
                      f'{r.name}: {"; ".join(d[:3])}): use another --workdir for these settings (the runs there stay '
                      f'as they are), or the settings they were made with')


def _run_differences(there: RunConfig, here: RunConfig, here_is: str) -> list[str]:
  """How two runs differ in what they compute (``RunConfig.computed``), named by the fields as set (keep_rate=0.3,
  not the token counts it gives), leaving out those neither reads; [] for one run."""
  if _computed(there) == _computed(here):
    return []
  unread = set(there.unread()) & set(here.unread())
  as_set = lambda run: {k: v for k, v in run.whole().items() if k not in unread}
  return field_differences(as_set(there), as_set(here), here_is) or field_differences(_computed(there),
                                                                                      _computed(here), here_is)


def check_made_as_planned(planned: dict, rdir: str, made: RunConfig) -> None:
  """ConfigError (exit 2, nothing written) when a finished run's final.json records other settings than
  the sweep planned for it (a train.py --config.overwrite=true in its folder, say): its results would
  be reported under the planned label (hostile pass 10's SW13). Plans written before sweep.json
  recorded each run's whole config are not checked."""
  if not planned.get('run_config'):
    return
  try:
    old = RunConfig.from_any(planned['run_config'])
  except ConfigError as e:
    raise ConfigError(f'{PLAN}: the run_config planned for {planned["name"]} is not a run config ({e}): move the '
                      f'sweep\'s folder aside, or restore its {PLAN}') from None
  diffs = _run_differences(made, old, 'planned')
  if diffs:
    raise ConfigError(f'{rdir}/final.json records other settings than the sweep planned for {planned["name"]} '
                      f'({"; ".join(diffs[:3])}): move the run\'s folder aside (the sweep then trains it as planned)')

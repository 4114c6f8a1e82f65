"""Sweeps: one train.py run per point of a product of arg-string values, then a table and a Pareto
plot of top-1 against compute and measured speed.

  python -m tpm_jax.sweep --config configs/deit.py:model=deit_small_patch16_224 \\
      --sweep keep=0.5,0.6,0.7,0.8 --sweep method=tpm,evit,drop,tome --workdir DIR \\
      [--print_commands] [--collect_only] [--python PY] [--throughput_batch 64] [--config.<field>=<value> ...]

``--sweep key=v1,v2,...`` names an arg-string key of the config file's ``get_config(arg)`` (method,
keep, multiscale, similarity, weight, prop_attn, distinct, seed, ...); the runs are the product, first
``--sweep`` outermost. Run ``keep-0.7_method-tpm`` trains in ``DIR/runs/keep-0.7_method-tpm``
(output in its ``train.log``) with ``train.py --config <file>:<args>,keep=0.7,method=tpm`` and the
trailing ``--config.*`` flags. Every run's config is built and its model checked before anything
runs. A run whose workdir has ``final.json`` is finished and skipped; an interrupted one resumes
from its checkpoint. ``--print_commands`` prints the unfinished runs' command lines (for a cluster
launcher) instead of running them; ``--collect_only`` only collects.

Collecting writes ``DIR/results.csv``, ``DIR/results.md`` (mean and spread over seeds when ``seed``
is swept) and ``DIR/pareto.png``. images/s is inference throughput measured in the collecting
process: each distinct model once (random parameters), the configs timed in interleaved rounds,
medians, so the numbers of one table compare with each other.

Python: ``runs = plan(config, sweeps, workdir)``, ``run(runs)``, ``rows = collect(workdir)``, ``main(argv)``.
"""
from __future__ import annotations

import os
import sys

from tpm_jax.cli import stop_during_start_up

if __name__ == '__main__':  # python -m tpm_jax.sweep: until main takes the signals over
  stop_during_start_up('stopped by {signal} during start-up: nothing was run or written', 0)

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tpm_jax import evaluation  # noqa: E402
from tpm_jax.checkpoint import CheckpointError, WorkdirLock, checkpoint_dir, newest_saved_config  # noqa: E402
from tpm_jax.cli import Interrupted as Stopped  # noqa: E402
from tpm_jax.cli import (  # noqa: E402
  describe_flag_error,
  error_line,
  exit_process,
  finished,
  quiet_library_logs,
  raise_if_stopped,
  stop_on_signals,
)
from tpm_jax.config import ConfigError, RunConfig, field_differences, flat_dict  # noqa: E402
from tpm_jax.data.input_pipeline import DataError  # noqa: E402
from tpm_jax.data.sources import known_split_size  # noqa: E402
from tpm_jax.files import read_json_object, sha256, write_json, written_whole  # noqa: E402
from tpm_jax.flops import count_flops  # noqa: E402
from tpm_jax.models.registry import model_from_config, with_weights_of  # noqa: E402
from tpm_jax.preflight import check_outside_workdirs_and_exports, check_workdir_path  # noqa: E402
from tpm_jax.reduction_setting import parse_setting, parse_settings  # noqa: E402
from tpm_jax.throughput import images_per_sec  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, 'train.py')
PLAN = 'sweep.json'
OUTPUTS = ('results.csv', 'results.md', 'pareto.png')  # the tables a sweep writes into its folder (runs/ may come first, from --print_commands)


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
    if not re.fullmatch(r'\w+', key) or not all(values):
      raise ConfigError(f'--sweep {key}={",".join(values)}: expected key=v1,v2,... (non-empty values)')
    if key in out:
      raise ConfigError(f'--sweep {key} is given twice')
    out[key] = values
  return out


def run_name(values: dict) -> str:
  return '_'.join(f'{k}-{re.sub(r"[^A-Za-z0-9.+-]", "-", v)}' for k, v in values.items())


def load_config(config: str, overrides=()):
  """The ConfigDict train.py builds from ``--config <config>`` and the overrides (parsed as it does)."""
  fv, argv = flags.FlagValues(), ['sweep', '--config', config, *overrides]
  config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True, sys_argv=argv)
  try:
    fv(argv)
  except Exception as e:  # noqa: BLE001 - absl, ml_collections and get_config raise many kinds
    raise ConfigError(describe_flag_error(e, argv).split('Error whilst parsing config file: ')[-1]) from e
  return fv.config


def _model_key(cfg: RunConfig) -> str:
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
      cfg = RunConfig.from_any(load_config(f'{file}:{arg}', overrides))
      if _model_key(cfg) not in checked:
        nnx.eval_shape(lambda: model_from_config(cfg))
        checked.add(_model_key(cfg))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ConfigError(f'{what}: {msg}' if what else msg) from e
    return f'{file}:{arg}', cfg

  build({}, None)  # the base config and the passed-on flags
  alone = {(key, v): build({key: v}, f'--sweep {key}={v}')[1]  # each value alone first, so an error names it
           for key, values in sweeps.items() for v in values}
  declared = _arg_fields(file)
  _check_labels(file, base, sweeps, overrides, alone, declared)
  runs = []
  for combo in itertools.product(*sweeps.values()):
    values = dict(zip(sweeps, combo))
    name = run_name(values)
    config, cfg = build(values, f'run {name}')
    runs.append(Run(name, values, config, os.path.join(os.path.abspath(workdir), 'runs', name), tuple(overrides), cfg,
                    ' '.join([f'{_shown(file)}:{base}'.rstrip(':'), *_computing(overrides)])))
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
  if len({r.name for r in runs}) < len(runs):
    raise ConfigError('--sweep: two runs get the same name (values that differ only in punctuation)')
  return runs


def _computing(overrides) -> list[str]:
  """The --config.* flags that change what a run computes: not ``RunConfig.OPERATIONAL`` ones (progress, overwrite),
  which a table's base column leaves out (hostile pass 14a's N_OPFLAG_replan)."""
  return [o for o in overrides if o.split('=')[0][len('--config.'):] not in RunConfig.OPERATIONAL]


def _shown(file: str) -> str:
  """A config file as a table shows it: relative to the repository when inside it, else whole (two
  files of one name are two bases: hostile pass 13a's MIXU)."""
  return os.path.relpath(file, ROOT) if file.startswith(ROOT + os.sep) else file


def _arg_string(base: str, values: dict) -> str:
  """The config's argument string of a run: the base's, then each swept key=value."""
  return ','.join(([base] if base else []) + [f'{k}={v}' for k, v in values.items()])


def _arg_fields(file: str) -> dict:
  """The config file's ``ARG_FIELDS`` (arg-string key -> the dotted field it names; configs/common.py),
  {} when it declares none."""
  try:
    spec = importlib.util.spec_from_file_location('_tpm_jax_sweep_config', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception:  # noqa: BLE001 - load_config already read the file: a second reading that fails declares nothing
    return {}
  fields = getattr(module, 'ARG_FIELDS', None)
  return {str(k): str(v) for k, v in fields.items()} if isinstance(fields, Mapping) else {}


def _check_labels(file: str, base: str, sweeps: dict, overrides, alone: dict, declared: dict) -> None:
  """ConfigError unless every run trains what its label says. A key the config file declares
  (``ARG_FIELDS``) names one field of a run config (a declaration naming none is refused: pass 13a's
  OWN_typo): each value must leave that field at the value (not the config's own code, as ``smoke``
  sets the model; hostile pass 12's IGN_smoke_model, IGN_none_ms) and no --config.* flag may set it (pass 10's SW10,
  SW11; pass 11's N1, N2; pass 12's N1_*). Another key must change the config (pass 13a's
  OWN_smoke_model, OWN_none_ms: a user's config without ``ARG_FIELDS``), and a flag may not set a field
  its values (or other values of it) change. ``alone``: (key, value) -> the RunConfig of that value
  alone, flags included, as plan() built it; ``declared``: ``_arg_fields``."""

  def fields(values):  # without the flags
    try:
      return flat_dict(RunConfig.from_any(load_config(f'{file}:{_arg_string(base, values)}')).to_dict())
    except ConfigError:  # a config that needs a flag to be valid: its own check, in plan(), named it
      return None
  plain = fields({}) if overrides or set(sweeps) - set(declared) else None
  for key, values in sweeps.items():
    mine = {v: fields({key: v}) for v in values}
    if key in declared:
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
    if plain is None or any(m is None for m in mine.values()):
      continue
    # what the key changes: the fields its values set differently; a value that is the recipe's own (keep=0.7
    # where keep is 0.7 anyway) changes nothing, so other values of the key are tried (hostile pass 11's N1, N2)
    # (only the fields that then hold the value itself: a probe method=none also turns the fusion off)
    probes = [m for m in (fields({key: p}) for p in _probes(values)) if m is not None]
    swept = [f for f in plain if any(m.get(f) != plain[f] for m in mine.values())
             or (any(m.get(f) != plain[f] for m in probes) and all(_holds(mine[v].get(f), v) for v in values))]
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
        seen.setdefault(_computed_key(cfg), (r['name'], cfg, True))
    except (ConfigError, OSError, ValueError, AttributeError):
      continue  # a damaged plan entry or final.json: collecting names it
  for r in runs:
    key = _computed_key(r.run_config)
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


@functools.lru_cache(maxsize=None)
def _split_size(data, spec: str) -> int | None:
  return known_split_size(data, spec)


def _computed_key(run: RunConfig, but=()) -> str:
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


class Interrupted(Exception):
  """SIGTERM or SIGINT reached the sweep: the running train.py was stopped the same way (it saves)."""


def run(runs: list[Run], python: str | None = None) -> list[Run]:
  """Train the unfinished runs one after another (train.py subprocesses, output appended to each
  run's train.log), one progress line per run; returns the runs that failed. A SIGTERM or SIGINT to
  the sweep goes on to the running train.py, which saves and stops; then ``Interrupted``."""
  failed, received, child = [], [], [None]

  def forward(signum, frame):
    del frame
    received.append(signum)
    if child[0] is not None and child[0].poll() is None:
      child[0].send_signal(signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} \
      if threading.current_thread() is threading.main_thread() else {}
  try:
    return _run_all(runs, python, failed, received, child)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _run_all(runs, python, failed, received, child):
  for i, r in enumerate(runs, 1):
    head = f'[{i}/{len(runs)}] {r.name}:'
    if received:
      raise Interrupted(f'{signal.Signals(received[0]).name} received before {r.name}')
    if r.finished:
      print(f'{head} skipped (finished), top-1 {_final(r.workdir)["top1"]:.4f}', flush=True)
      continue
    os.makedirs(r.workdir, exist_ok=True)
    log = os.path.join(r.workdir, 'train.log')
    print(f'{head} running ...', end=' ', flush=True)
    t = time.time()
    with open(log, 'a') as f:
      child[0] = subprocess.Popen(r.command(python), stdout=f, stderr=subprocess.STDOUT)
      code = child[0].wait()
      child[0] = None
    if received:
      print(f'stopped by {signal.Signals(received[0]).name} ({time.time() - t:.0f}s)', flush=True)
      raise Interrupted(f'{signal.Signals(received[0]).name}: {r.name} was stopped (exit code {code}; it saved '
                        f'its state if it had started training); run the same sweep to go on')
    if code == 0 and r.finished:
      print(f'finished, top-1 {_final(r.workdir)["top1"]:.4f}, {time.time() - t:.0f}s', flush=True)
      continue
    failed.append(r)
    with open(log) as f:
      tail = f.read().splitlines()[-15:]
    why = f'exit code {code}' if code else 'exit code 0 but no final.json (preempted?)'
    print(f'FAILED ({why}, {time.time() - t:.0f}s); end of {log}:', *('    ' + l for l in tail), sep='\n', flush=True)
  return failed


def read_plan(workdir: str, kind: str) -> dict | None:
  """``workdir``'s sweep.json (None if it has none); ConfigError (one line) if it is unreadable or
  records the other kind of sweep: ``'training'`` (runs of train.py) or ``'reductions'`` (one
  checkpoint under several token reductions)."""
  path = os.path.join(workdir, PLAN)
  if not os.path.lexists(path):
    return None
  try:
    meta = read_json_object(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} is unreadable ({e}): use another --workdir') from None
  if meta.get('kind', 'training') not in ('training', 'reductions'):
    raise ConfigError(f'{path} is not a sweep plan this version reads (kind={meta.get("kind")!r}): restore it, or use '
                      f'another --workdir')
  if meta.get('kind', 'training') != kind:
    held = ('a sweep of training runs' if kind == 'reductions' else
            'the evaluations of one checkpoint under --reductions (read them with --checkpoint and --reductions)')
    raise ConfigError(f'--workdir={workdir} holds {held}; this sweep needs a folder of its own')
  wrong = _plan_damage(meta, kind)
  if wrong:  # a hand-edited plan: one line naming it (hostile pass 12's CO_f ... CO_i)
    raise ConfigError(f'{path} is not a sweep plan this version reads ({wrong}): restore it, or use another --workdir')
  return meta


def _plan_damage(meta: dict, kind: str) -> str | None:
  """What is wrong with a sweep.json's layout, None when nothing."""
  strings = lambda x: isinstance(x, list) and all(isinstance(v, str) for v in x)
  if kind == 'reductions':
    return None if strings(meta.get('settings')) else "'settings' is not a list of setting strings"
  if not isinstance(meta.get('config'), str):
    return "'config' is not a string"
  if not strings(meta.get('keys')):
    return "'keys' is not a list of strings"
  if not isinstance(meta.get('runs'), list):
    return "'runs' is not a list"
  names = set()
  for i, r in enumerate(meta['runs']):
    if not (isinstance(r, dict) and isinstance(r.get('name'), str) and isinstance(r.get('values'), dict)
            and all(isinstance(v, str) for v in r['values'].values()) and isinstance(r.get('config'), str)
            and isinstance(r.get('base', ''), str) and isinstance(r.get('run_config'), (dict, type(None)))):
      return f'runs[{i}] is not a run with a name, its values, config, base and run_config'
    if r['name'] != run_name(r['values']) or r['name'] in names:  # a label edited by hand, a run listed twice
      return f'runs[{i}] is named {r["name"]!r}, which its values do not give or another run has'
    names.add(r['name'])
    if r.get('run_config') is not None:
      try:
        RunConfig.from_any(r['run_config'])
      except ConfigError as e:
        return f'runs[{i}].run_config is not a run config ({e})'
  return None


def save_plan(workdir: str, config: str, runs: list[Run], overrides=()) -> None:
  """Record the runs in ``workdir``'s sweep.json, added to those of earlier sweeps into the same
  workdir (a baseline swept on its own, ablations one key at a time): one table collects them all,
  with '-' where a run's sweep did not set a key."""
  path = os.path.join(workdir, PLAN)
  meta = read_plan(workdir, 'training') or dict(config=config, keys=[], runs=[])
  meta['keys'] += [k for k in runs[0].values if k not in meta['keys']]
  planned = {r['name']: r for r in meta['runs']}  # a run planned again: as planned now (its folder was checked)
  planned.update({r.name: dict(name=r.name, values=r.values, config=r.config, base=r.base,
                               run_config=r.run_config.to_dict() if r.run_config else None) for r in runs})
  meta['runs'] = list(planned.values())
  meta['overrides'] = list(overrides)
  os.makedirs(workdir, exist_ok=True)
  write_json(path, meta)


def _final(workdir: str) -> dict:
  """A finished run's final.json, with top1/top5 (NaN if the run never evaluated). ConfigError
  naming the file when it is unreadable or lacks the run's config."""
  path = os.path.join(workdir, 'final.json')
  try:
    final = read_json_object(path)
    RunConfig.from_any(final['config'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f'{path} is unreadable or has no readable run config ({type(e).__name__}: '
                      f'{str(e).splitlines()[0][:100] if str(e) else ""}): move the run\'s folder aside to retrain it') from None
  return dict(final, top1=final.get('eval_top1', float('nan')), top5=final.get('eval_top5', float('nan')))


def measure(configs: dict, batch: int = 64, rounds: int = 5) -> dict:
  """name -> (analytic GMACs, images/s) for {name: training config}: each distinct model built once
  (random parameters) and timed with ``tpm_jax.throughput.images_per_sec`` (its forward compiled
  for ``batch`` random images and warmed up, then all timed in interleaved rounds; the median)."""
  models = {}
  for cfg in configs.values():
    if _model_key(cfg) not in models:
      models[_model_key(cfg)] = model_from_config(cfg)
  measured = measure_models(models, batch, rounds)
  return {name: measured[_model_key(c)] for name, c in configs.items()}


def aggregate(rows: list[dict], keys: list[str]) -> list[dict]:
  """Rows grouped by every swept key but seed: n, top-1 mean, std, min, max; mean GMACs and images/s."""
  others, groups = [k for k in keys if k != 'seed'], {}
  for r in rows:  # runs of other configs (``_group``; else other base texts) are other groups
    groups.setdefault(tuple(r[k] for k in others) + (r.get('group', r.get('base', '')),), []).append(r)
  mean = lambda rs, f: statistics.mean(r[f] for r in rs)
  return [dict(zip(others, g), base=rs[0].get('base', ''), n=len(rs), top1=mean(rs, 'top1'),
               std=statistics.stdev([r['top1'] for r in rs]) if len(rs) > 1 else 0.0,
               min=min(r['top1'] for r in rs), max=max(r['top1'] for r in rs),
               analytic_gmacs=mean(rs, 'analytic_gmacs'), images_per_sec=mean(rs, 'images_per_sec'))
          for g, rs in groups.items()]


def pareto_front(points, minimize_x=True) -> list[tuple]:
  """The (x, y) points no other point beats on both x and y (higher y is better), sorted by x."""
  best, front = float('-inf'), []
  for x, y in sorted(points, key=lambda p: (p[0] if minimize_x else -p[0], -p[1])):
    if y > best:
      front.append((x, y))
      best = y
  return sorted(front)


def plot(points: list[dict], keys: list[str], title: str, path: str, batch: int) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  by = 'method' if 'method' in keys else next((k for k in keys if k != 'seed'), None)
  groups = {}
  for p in points:
    groups.setdefault(p[by] if by else 'runs', []).append(p)
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  for ax, x, minimize, label in ((axes[0], 'analytic_gmacs', True, 'GMACs per image (analytic)'),
                                 (axes[1], 'images_per_sec', False, f'images/s (inference, batch {batch})')):
    for i, (g, ps) in enumerate(groups.items()):
      ax.errorbar([p[x] for p in ps], [100 * p['top1'] for p in ps], fmt='osD^v<>p*h'[i % 10], capsize=3,
                  yerr=[100 * p['std'] for p in ps] if 'std' in ps[0] else None, label=f'{by}={g}' if by else g)
      for p in ps:  # the other swept values beside each point, e.g. keep=0.7
        note = ','.join(f'{k}={p[k]}' for k in keys if k not in (by, 'seed') and p[k] != '-')
        ax.annotate(note, (p[x], 100 * p['top1']), xytext=(3, 3), textcoords='offset points', fontsize=7)
    front = pareto_front([(p[x], 100 * p['top1']) for p in points], minimize_x=minimize)
    ax.plot(*zip(*front), 'k--', lw=1, alpha=0.6, label='Pareto front')
    ax.set(xlabel=label, ylabel='top-1 (%)')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  try:
    with written_whole(path) as tmp:  # a full disk or a stop leaves no half-written picture
      fig.savefig(tmp, dpi=120)
  finally:
    plt.close(fig)


def _table(rows: list[dict], columns: dict) -> list[str]:
  """Markdown table lines; columns: header -> function of a row returning its cell."""
  return (['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
          + ['| ' + ' | '.join(str(f(r)) for f in columns.values()) + ' |' for r in rows])


def collect(workdir: str, *, throughput_batch: int = 64) -> list[dict]:
  """One row per finished run of the sweeps planned in ``workdir`` (its sweep.json): name, the swept
  values, top1, top5, analytic_gmacs, images_per_sec, steps, workdir. Writes results.csv,
  results.md and (with any finished run) pareto.png into ``workdir``."""
  meta = read_plan(workdir, 'training')
  if meta is None:
    raise ConfigError(f'--workdir={workdir} has no {PLAN}: no sweep was planned there')
  keys, rows, configs, missing = meta['keys'], [], {}, []
  for r in meta['runs']:
    rdir = os.path.join(os.path.abspath(workdir), 'runs', r['name'])
    if not os.path.lexists(os.path.join(rdir, 'final.json')):
      missing.append(r['name'])
      continue
    try:
      final = _final(rdir)
    except ConfigError as e:
      print(f'warning: {e}; left out', file=sys.stderr, flush=True)
      missing.append(r['name'])
      continue
    configs[r['name']] = made = RunConfig.from_any(final['config'])
    _check_made_as_planned(r, rdir, made)
    rows.append(dict(name=r['name'], **{k: r['values'].get(k, '-') for k in keys}, top1=final['top1'], top5=final['top5'],
                     steps=final['step'], workdir=rdir, base=r.get('base') or _base_of(r), group=_group(made)))
  unplanned = sorted(set(_finished_folders(workdir)) - {r['name'] for r in meta['runs']})
  if unplanned:  # train.py run by hand from --print_commands, say (hostile pass 14a's N_PC_collect)
    print(f'warning: {", ".join(unplanned[:5])}{" ..." if len(unplanned) > 5 else ""} under {workdir}/runs finished '
          f'but {PLAN} does not plan them: left out; the sweep command that names them (with --collect_only) adds '
          f'them', file=sys.stderr, flush=True)
  measured = measure(configs, throughput_batch) if rows else {}
  for row in rows:
    row['analytic_gmacs'], row['images_per_sec'] = measured[row['name']]
  cfg = next(iter(configs.values()), None)
  title = f'{os.path.basename(meta["config"])}' + (f' ({cfg.model.name}, {cfg.dataset.name})' if cfg else '')
  # runs of sweeps with other base configs or flags in one folder: each row says what it was added to (pass 12's
  # MIXBASE); one base text for other configs (a config file edited between two sweeps: pass 14a's N_EDIT) gets the
  # config's digest, so rows are pooled over seeds only when their configs are equal but for the seed
  texts = [row['base'] for row in rows]
  for row, text in zip(rows, texts):
    others = {r['group'] for r, t in zip(rows, texts) if t == text and all(r[k] == row[k] for k in keys if k != 'seed')}
    if len(others) > 1:
      row['base'] = f'{text} (config {row["group"][:8]})'
  bases = ('base',) if len({row['base'] for row in rows}) > 1 else ()
  write_tables(workdir, rows, keys, title, throughput_batch, total=len(meta['runs']), missing=missing,
               extra_columns=(*bases, 'steps', 'workdir'))
  return rows


def _run_differences(there: RunConfig, here: RunConfig, here_is: str) -> list[str]:
  """How two runs differ in what they compute (``RunConfig.computed``), named by the fields as set (keep_rate=0.3,
  not the token counts it gives), leaving out those neither reads; [] for one run."""
  if _computed(there) == _computed(here):
    return []
  unread = set(there.unread()) & set(here.unread())
  as_set = lambda run: {k: v for k, v in run.whole().items() if k not in unread}
  return field_differences(as_set(there), as_set(here), here_is) or field_differences(_computed(there),
                                                                                      _computed(here), here_is)


def _base_of(planned: dict) -> str:
  """What a plan entry written before sweep.json recorded ``base`` was added to: its config string without the
  swept key=values (hostile pass 14a's N_OLD_collect: the whole string made every seed its own group)."""
  file, _, arg = planned['config'].partition(':')
  swept = {f'{k}={v}' for k, v in planned.get('values', {}).items()}
  kept = [a for a in arg.split(',') if a and a not in swept]
  return ':'.join([_shown(file), ','.join(kept)]).rstrip(':')


def _group(run: RunConfig) -> str:
  """The digest of what a run computes but its seed: the runs a table pools over seeds share it."""
  return hashlib.sha256(_computed_key(run, but=('seed',)).encode()).hexdigest()


def _finished_folders(workdir: str) -> list[str]:
  """The run folders under ``workdir/runs`` that hold a final.json."""
  runs = os.path.join(workdir, 'runs')
  return [n for n in (os.listdir(runs) if os.path.isdir(runs) else [])
          if os.path.lexists(os.path.join(runs, n, 'final.json'))]


def _check_made_as_planned(planned: dict, rdir: str, made: RunConfig) -> None:
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


def write_tables(workdir: str, rows: list[dict], keys: list[str], title: str, throughput_batch: int, *, total: int,
                 missing=(), extra_columns=()) -> None:
  """results.csv, results.md (mean and spread over seeds when ``seed`` is a key) and pareto.png."""
  columns = ['name', *keys, 'top1', 'top5', 'analytic_gmacs', 'images_per_sec', *extra_columns]
  with written_whole(os.path.join(workdir, 'results.csv')) as tmp, open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, columns, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  pct = lambda f: lambda r: f'{100 * r[f]:.2f}'
  cost = {'GMACs': lambda r: f'{r["analytic_gmacs"]:.4g}', 'images/s': lambda r: f'{r["images_per_sec"]:.1f}'}
  md = [f'# Sweep: {title}', '', f'{len(rows)} of {total} runs finished. images/s: inference throughput at '
        f'batch {throughput_batch} on {jax.devices()[0].device_kind}, all configs timed in one process in '
        f'interleaved rounds (medians); GMACs: analytic multiply-adds per image.', '']
  md += _table(rows, {'run': lambda r: r['name'], **{k: (lambda r, k=k: r[k]) for k in keys},
                      'top-1 (%)': pct('top1'), 'top-5 (%)': pct('top5'), **cost,
                      **{c: (lambda r, c=c: r[c]) for c in extra_columns if c != 'workdir'}})
  points = rows
  if 'seed' in keys and rows:
    points = aggregate(rows, keys)
    md += ['', '## Over seeds', '']
    md += _table(points, {**{k: (lambda r, k=k: r[k]) for k in keys if k != 'seed'},
                          **({'base': lambda r: r['base']} if 'base' in extra_columns else {}), 'n': lambda r: r['n'],
                          'top-1 mean (%)': pct('top1'), 'std': pct('std'),
                          'min–max': lambda r: f'{100 * r["min"]:.2f}–{100 * r["max"]:.2f}', **cost})
  if missing:
    md += ['', f'Missing (not finished): {", ".join(missing)}']
  with written_whole(os.path.join(workdir, 'results.md')) as tmp, open(tmp, 'w') as f:
    f.write('\n'.join(md) + '\n')
  if rows:
    plot(points, keys, title, os.path.join(workdir, 'pareto.png'), throughput_batch)


# ----------------------------------------------------------------------------------------------
# Over one checkpoint: a trained model under several token reductions, no training (off-the-shelf)
# ----------------------------------------------------------------------------------------------
def _identity(path: str, source: str) -> dict:
  """What names a checkpoint: its path, its source (export, or workdir and step) and the digest of the
  checksums of what was read (another export at the same path, or a step saved again by a new run in
  the same workdir, is another checkpoint). A step saved without checksums: the digest of its files'
  names, sizes and times."""
  ident = dict(checkpoint=os.path.abspath(path), source=source)
  if source == 'export':
    folder = path
  else:
    folder = os.path.join(checkpoint_dir(path), source.rsplit(' ', 1)[1])
  sums = os.path.join(folder, 'checksums.json')
  if os.path.exists(sums):
    ident['checksums_sha256'] = sha256(sums)
  elif os.path.isdir(folder):
    stats = {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f))
             for d, _, files in os.walk(folder) for f in files}
    listing = sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats.items())
    ident['files_sha256'] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
  return ident


def setting_file_name(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9.+_-]', '-', name)


def evaluate_reductions(checkpoint: str, settings: list, workdir: str, *, split: str | None = None,
                        throughput_batch: int = 64, rounds: int = 5, collect_only: bool = False) -> list[dict]:
  """``checkpoint`` (an export or a training workdir) evaluated under each of ``settings``
  (``reduction_setting.ReductionSetting``s) without training: one ``workdir/evals/<setting>.json``
  per setting (a setting already evaluated on the same checkpoint and split is not evaluated again),
  then results.csv, results.md and pareto.png with GMACs and images/s measured interleaved in this
  process. The tables hold every setting of the folder, those of earlier calls too (collected, not
  evaluated again). Every setting is applied to the model before anything is evaluated: one that does
  not fit raises ConfigError; a workdir holding the evaluations of another checkpoint or split too."""
  trained, run, source = evaluation.load_trained(checkpoint)
  split = split or run.dataset.eval_split
  ident = dict(_identity(checkpoint, source), split=split)
  names = {setting_file_name(st.name) for st in settings}
  if len(names) < len(settings):
    raise ConfigError('--reductions: two settings get the same file name (they differ only in punctuation)')
  plan_path = os.path.join(workdir, PLAN)
  meta = read_plan(workdir, 'reductions')
  if meta is None:
    meta = dict(kind='reductions', **ident, settings=[])
  other = field_differences({k: meta.get(k) for k in ident}, ident, 'now')
  if other:
    raise ConfigError(f'--workdir={workdir} holds the evaluations of another checkpoint or split ({"; ".join(other)}): '
                      f'use another --workdir')
  # The folder's table holds the settings of earlier calls too (those not asked now are collected, not evaluated)
  asked = {st.name for st in settings}
  try:
    earlier = [parse_setting(n) for n in meta['settings'] if n not in asked]
  except (ConfigError, TypeError, KeyError) as e:
    raise ConfigError(f'{plan_path}: its settings are unreadable ({e}): use another --workdir') from None
  everything = sorted(earlier + settings, key=lambda st: [*meta['settings'], st.name].index(st.name))
  models, configs, notes = {}, {}, {}
  for st in everything:  # all applied first: a setting that does not fit stops the sweep before any work
    try:
      configs[st.name] = st.apply(run)
    except ConfigError as e:
      raise ConfigError(f'--reductions: {e}') from None
    models[st.name], fresh, left_out = with_weights_of(trained, configs[st.name])
    notes[st.name] = evaluation.parameter_notes(fresh, left_out)
  _check_one_row_per_model(configs)
  dataset = evaluation.eval_dataset(run, split, '--split', label_names=evaluation.trained_label_names(checkpoint))
  with WorkdirLock(workdir, what='sweep workdir') as lock:  # the checks passed: the first write
    lock.record_holder()  # for the line a second sweep gets
    meta['settings'] += [st.name for st in settings if st.name not in meta['settings']]
    write_json(plan_path, meta)
    return _evaluate_settings(workdir, everything, models, configs, notes, ident, run, dataset, split, checkpoint,
                              throughput_batch, rounds, collect_only, asked)


def _check_one_row_per_model(configs: dict) -> None:
  """ConfigError when two settings (of this call, or one of it and one the folder already holds) make
  the same model (``RunConfig.computed``): ``tpm:0.7`` and ``tpm:0.70``, ``evit:0.7`` and its default
  spelled out; one evaluation would be two rows (hostile pass 13a's OTS_spell, OTS_pa, OTS_across)."""
  seen = {}
  for name, cfg in configs.items():
    key = _computed_key(cfg)
    if key in seen:
      raise ConfigError(f'--reductions: {name} is the same model as {seen[key]} (the same reduction spelled another '
                        f'way): one evaluation would be two rows; give it once')
    seen[key] = name


def _evaluate_settings(workdir, settings, models, configs, notes, ident, run, dataset, split, checkpoint,
                       throughput_batch, rounds, collect_only, asked):
  os.makedirs(os.path.join(workdir, 'evals'), exist_ok=True)
  rows, missing = [], []
  for i, st in enumerate(settings, 1):
    path = os.path.join(workdir, 'evals', setting_file_name(st.name) + '.json')
    head = f'[{i}/{len(settings)}] {st.name}:'
    if os.path.exists(path):
      try:
        result = read_json_object(path)
        other = [k for k, v in dict(ident, reduction=st.name).items() if result.get(k) != v]
        for key in ('top1', 'top5', 'examples'):  # what the tables print
          if isinstance(result[key], bool) or not isinstance(result[key], (int, float)):
            raise TypeError(f'{key} is not a number')
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f'{path} is unreadable ({type(e).__name__}: {e}): remove it to evaluate {st.name} '
                          f'again') from None
      if other:
        raise ConfigError(f'{path} is the evaluation of another checkpoint, split or setting ({", ".join(other)} differ): '
                          f'remove it to evaluate {st.name} again')
      print(f'{head} evaluated before, top-1 {result["top1"]:.4f}', flush=True)
    elif collect_only or st.name not in asked:
      missing.append(st.name)
      continue
    else:
      t = time.time()
      metrics = evaluation.evaluate_model(models[st.name], configs[st.name], dataset, split)
      result = dict(**ident, name=st.name, reduction=st.name, model=run.model.name,
                    **evaluation.describe_reduction(models[st.name], configs[st.name]),
                    top1=metrics['eval_top1'], top5=metrics['eval_top5'], examples=int(metrics['eval_examples']),
                    **notes[st.name])
      write_json(path, result)
      print(f'{head} top-1 {result["top1"]:.4f} ({time.time() - t:.0f}s)', flush=True)
    rows.append(dict(result, name=st.name))
  measured = measure_models({r['name']: models[r['name']] for r in rows}, throughput_batch, rounds) if rows else {}
  for row in rows:
    row['analytic_gmacs'], row['images_per_sec'] = measured[row['name']]
  title = f'{os.path.basename(os.path.normpath(checkpoint))} ({run.model.name}, {run.dataset.name} {split}), off-the-shelf'
  write_tables(workdir, rows, ['method', 'reduction'], title, throughput_batch, total=len(settings),
               missing=missing, extra_columns=('tokens', 'examples'))
  return rows


def measure_models(models: dict, batch: int = 64, rounds: int = 5) -> dict:
  """name -> (analytic GMACs, images/s), the models timed in interleaved rounds in this process."""
  speed = images_per_sec(models, batch, rounds=rounds)
  return {k: (count_flops(m, compile=False)['analytic_gmacs'], speed[k]) for k, m in models.items()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m tpm_jax.sweep', description=__doc__, allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', help='a configs/*.py file, optionally with :<arg string> (the base of every run)')
  p.add_argument('--sweep', action='append', default=[], metavar='KEY=V1,V2,...', help='repeatable')
  p.add_argument('--workdir', required=True, help='runs go to WORKDIR/runs/<name>, results to WORKDIR')
  p.add_argument('--print_commands', action='store_true', help='print the unfinished runs\' commands and exit')
  p.add_argument('--collect_only', action='store_true', help='collect the finished runs, run nothing')
  p.add_argument('--python', default=sys.executable, help='the Python that runs train.py')
  p.add_argument('--throughput_batch', type=int, default=64)
  p.add_argument('--checkpoint', help='with --reductions: an export or a training workdir, evaluated under each '
                 'reduction without training (off-the-shelf)')
  p.add_argument('--reductions', metavar='S1,S2,...', help='reduction settings as eval.py --reduction reads them: '
                 'none,tpm:0.7,tpm+pool:0.7@prop_attn=off,evit:0.5,drop:0.7,tome:8,tome:0.7')
  p.add_argument('--split', help='with --reductions: the split evaluated (default: the checkpoint\'s eval split)')
  args, overrides = p.parse_known_args(argv)
  if args.checkpoint or args.reductions:
    return _main_reductions(args, overrides)
  try:
    _check_sweep_folder(args.workdir, args.collect_only)
    read_plan(args.workdir, 'training')
    bad = [o for o in overrides if not re.match(r'--config\.[\w.]+=', o)]
    if bad:
      raise ConfigError(f'{bad[0]}: not a sweep flag; only --config.<field>=<value> flags are passed to train.py')
    if args.config:
      runs = plan(args.config, args.sweep, args.workdir, overrides)
      check_one_run_per_label(runs, read_plan(args.workdir, 'training'))
      check_existing(runs)
    elif not (args.collect_only and os.path.exists(os.path.join(args.workdir, PLAN))):
      raise ConfigError(f'--config is required (or --collect_only on a workdir with a {PLAN})')
    elif args.print_commands:
      raise ConfigError('--print_commands needs --config (the runs\' commands come from the config and --sweep)')
  except ConfigError as e:
    error_line(e)
    return 2
  if args.print_commands:
    for r in runs:
      if not r.finished:
        print(shlex.join(r.command(args.python)))
    return 0
  stop_on_signals()  # outside a run (the plan, the tables): one line, what is written is kept
  try:
    with WorkdirLock(args.workdir, what='sweep workdir') as lock:
      lock.record_holder()  # for the line a second sweep gets
      if args.config:
        save_plan(args.workdir, args.config, runs, overrides)
      failed = [] if args.collect_only else run(runs, args.python)
      rows = collect(args.workdir, throughput_batch=args.throughput_batch)
  except ConfigError as e:
    error_line(e)
    return 2
  except Interrupted as e:
    print(f'stopped: {e}', file=sys.stderr, flush=True)
    return 0
  except Stopped as e:
    print(f'stopped by {e.signal_name}: the finished runs are kept (run the same command to go on, or add '
          f'--collect_only for the tables)', file=sys.stderr, flush=True)
    return 0
  except OSError as e:  # the file system failing under the tables (a full disk)
    error_line(_write_failed(args.workdir, e))
    return 1
  finished()  # a signal from now on: exit 0, the tables are written
  print(f'collected {len(rows)} finished runs into {os.path.join(args.workdir, "results.md")}', flush=True)
  if failed:
    error_line(f'{len(failed)} runs failed: {", ".join(r.name for r in failed)}')
  return 1 if failed else 0


def _write_failed(workdir: str, e: OSError) -> str:
  return (f'{e.filename or workdir}: cannot be written ({e.strerror or e}); what the sweep wrote before is kept, '
          f'run the same command to go on')


def _check_sweep_folder(workdir: str, collect_only: bool) -> None:
  """Either kind of sweep: its folder is its own (not inside a training workdir or an export), and
  ``--collect_only`` reads one that exists."""
  check_outside_workdirs_and_exports('--workdir', workdir, what='folder of its own for the sweep', folder=True)
  if collect_only and not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir} is not accepted: no such sweep folder (--collect_only reads one)')
  check_workdir_path(workdir, what='--workdir')
  if not os.path.lexists(os.path.join(workdir, PLAN)):  # not a sweep's yet: what it would write must not be there
    theirs = [n for n in OUTPUTS if os.path.lexists(os.path.join(workdir, n))]
    if theirs:
      raise ConfigError(f'--workdir={workdir} is not accepted: it holds {", ".join(theirs)}, which a sweep writes, and '
                        f'no {PLAN} (not a sweep\'s folder): choose a new folder, or move them away')


def _main_reductions(args, overrides) -> int:
  try:
    if not (args.checkpoint and args.reductions):
      raise ConfigError('--checkpoint and --reductions go together (a trained model and the reductions to evaluate it '
                        'under)')
    wrong = [f for f, v in (('--config', args.config), ('--sweep', args.sweep), ('--print_commands', args.print_commands),
                            ('--config.*', overrides)) if v]
    if wrong:
      raise ConfigError(f'{wrong[0]} does not go with --checkpoint/--reductions (no training runs)')
    if args.throughput_batch < 1:
      raise ConfigError(f'--throughput_batch={args.throughput_batch} is not accepted: expected a positive int')
    settings = parse_settings(args.reductions)
    _check_sweep_folder(args.workdir, args.collect_only)
  except ConfigError as e:
    error_line(e)
    return 2
  stop_on_signals()
  try:
    try:
      rows = evaluate_reductions(args.checkpoint, settings, args.workdir, split=args.split,
                                 throughput_batch=args.throughput_batch, collect_only=args.collect_only)
    except (CheckpointError, DataError):
      raise_if_stopped()  # a stop that a library turned into a read error is the stop
      raise
  except (ConfigError, FileNotFoundError) as e:
    error_line(e)
    return 2
  except (CheckpointError, DataError) as e:
    error_line(e)
    return 1
  except OSError as e:  # the file system failing under the evaluations or the tables (a full disk)
    error_line(_write_failed(args.workdir, e))
    return 1
  except Stopped as e:
    print(f'stopped by {e.signal_name}: the settings evaluated so far are kept in {os.path.join(args.workdir, "evals")} '
          f'(run the same command to go on)', file=sys.stderr, flush=True)
    return 0
  finished()  # a signal from now on: exit 0, the tables are written
  print(f'collected {len(rows)} evaluations into {os.path.join(args.workdir, "results.md")}', flush=True)
  return 0


if __name__ == '__main__':
  quiet_library_logs()  # tpm_jax's messages as the tool's own lines; libraries' log lines left out
  exit_process(main())

"""The sweep over one checkpoint (``--checkpoint --reductions``): a trained model evaluated under several token
reductions without training, one table."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time

from tpm_jax import evaluation
from tpm_jax.checkpoint import CheckpointError, WorkdirLock, checkpoint_dir
from tpm_jax.cli import Interrupted as Stopped
from tpm_jax.cli import (
  error_line,
  finished,
  raise_if_stopped,
  stop_on_signals,
)
from tpm_jax.config import ConfigError, field_differences
from tpm_jax.data.input_pipeline import DataError
from tpm_jax.files import read_json_object, sha256, write_json
from tpm_jax.models.registry import with_weights_of
from tpm_jax.reduction_setting import parse_setting, parse_settings
from tpm_jax.sweep.folder import check_sweep_folder, read_plan, write_failed
from tpm_jax.sweep.planning import PLAN, computed_key
from tpm_jax.sweep.tables import check_throughput_batch, measure_models, write_tables


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
    raise ConfigError('--reductions: two settings get the same file name (a setting given twice, or two that differ '
                      'only in punctuation): give each once')
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


def applied_fields(run) -> dict:
  """What a setting applied: the reduction and fusion fields its method reads, as the model reads them (defaults
  resolved, token counts: ``RunConfig.computed``), so that a record says what it evaluated whatever later versions
  take as a setting's defaults."""
  return json.loads(json.dumps({k: v for k, v in run.computed().items() if k.startswith(('reduction.', 'multiscale.'))},
                               default=str))


def _check_one_row_per_model(configs: dict) -> None:
  """ConfigError when two settings (of this call, or one of it and one the folder already holds) make
  the same model (``RunConfig.computed``): ``tpm:0.7`` and ``tpm:0.70``, ``evit:0.7`` and its default
  spelled out; one evaluation would be two rows (hostile pass 13a's OTS_spell, OTS_pa, OTS_across)."""
  seen = {}
  for name, cfg in configs.items():
    key = computed_key(cfg)
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
    result = None
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
      if result.get('applied') != applied_fields(configs[st.name]):  # the setting's meaning changed (a later version's
        why = 'what it applied was not recorded' if 'applied' not in result else 'under other defaults'  # default), or a
        again = ('evaluating it again' if not collect_only and st.name in asked else  # record older than 'applied':
                 f'not reported (give --reductions {st.name}' + (', without --collect_only,' if collect_only else '')
                 + ' to evaluate it again)')  # never reported under today's name (hostile passes 20-21's DS01, DS02, DS10)
        print(f'{head} evaluated before as another model ({why}): {again}', flush=True)
        result = None
      else:
        print(f'{head} evaluated before, top-1 {result["top1"]:.4f}', flush=True)
    if result is None and (collect_only or st.name not in asked):
      missing.append(st.name)
      continue
    if result is None:
      t = time.time()
      metrics = evaluation.evaluate_model(models[st.name], configs[st.name], dataset, split)
      result = dict(**ident, name=st.name, reduction=st.name, applied=applied_fields(configs[st.name]), model=run.model.name,
                    **evaluation.describe_reduction(models[st.name], configs[st.name]),
                    top1=metrics['eval_top1'], top5=metrics['eval_top5'], examples=int(metrics['eval_examples']),
                    **notes[st.name])
      write_json(path, result)
      print(f'{head} top-1 {result["top1"]:.4f} ({time.time() - t:.0f}s)', flush=True)
    rows.append(dict(result, name=st.name))
  measured = measure_models({r['name']: models[r['name']] for r in rows}, throughput_batch, rounds) if rows else {}
  for row in rows:
    row['analytic_gmacs'], row['images_per_sec'] = measured[row['name']]
  title = f'{os.path.basename(os.path.normpath(checkpoint))} ({run.model.name}, {run.dataset.where} {split}), off-the-shelf'
  write_tables(workdir, rows, ['method', 'reduction'], title, throughput_batch, total=len(settings),
               missing=missing, extra_columns=('tokens', 'examples'))
  return rows



def main_reductions(args, overrides) -> int:
  try:
    if args.checkpoint is None or args.reductions is None:
      raise ConfigError('--checkpoint and --reductions go together (a trained model and the reductions to evaluate it '
                        'under)')
    if not args.reductions.strip():  # given, but empty (hostile pass 18's SR3)
      raise ConfigError("--reductions='' is not accepted: expected reduction settings, e.g. none,tpm:0.7,tome:0.7")
    wrong = [f for f, v in (('--config', args.config), ('--sweep', args.sweep), ('--print_commands', args.print_commands),
                            ('--config.*', overrides)) if v]
    if wrong:
      raise ConfigError(f'{wrong[0]} does not go with --checkpoint/--reductions (no training runs)')
    check_throughput_batch(args.throughput_batch)
    try:
      settings = parse_settings(args.reductions)
    except ConfigError as e:  # named as eval.py names its --reduction (pass 18's SR4)
      raise ConfigError(f'--reductions: {e}') from None
    check_sweep_folder(args.workdir, args.collect_only)
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
    error_line(write_failed(args.workdir, e))
    return 1
  except Stopped as e:
    print(f'stopped by {e.signal_name}: the settings evaluated so far are kept in {os.path.join(args.workdir, "evals")} '
          f'(run the same command to go on)', file=sys.stderr, flush=True)
    return 0
  finished()  # a signal from now on: exit 0, the tables are written
  print(f'collected {len(rows)} evaluations into {os.path.join(args.workdir, "results.md")}', flush=True)
  return 0

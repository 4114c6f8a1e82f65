"""A sweep's tables: its finished runs collected, pooled over seeds by what they compute, measured (analytic GMACs,
images/s interleaved in this process) and written as results.csv, results.md and pareto.png."""
from __future__ import annotations

import csv
import hashlib
import os
import statistics
import sys

import jax

from tpm_jax.config import ConfigError, RunConfig
from tpm_jax.files import written_whole
from tpm_jax.flops import count_flops
from tpm_jax.models.registry import model_from_config
from tpm_jax.sweep.folder import final_of, finished_folders, read_plan
from tpm_jax.sweep.planning import PLAN, check_made_as_planned, computed_key, model_key, shown
from tpm_jax.throughput import images_per_sec


def measure(configs: dict, batch: int = 64, rounds: int = 5) -> dict:
  """name -> (analytic GMACs, images/s) for {name: training config}: each distinct model built once
  (random parameters) and timed with ``tpm_jax.throughput.images_per_sec`` (its forward compiled
  for ``batch`` random images and warmed up, then all timed in interleaved rounds; the median)."""
  models = {}
  for cfg in configs.values():
    if model_key(cfg) not in models:
      models[model_key(cfg)] = model_from_config(cfg)
  measured = measure_models(models, batch, rounds)
  return {name: measured[model_key(c)] for name, c in configs.items()}


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
  keys, rows, configs, missing, seen = meta['keys'], [], {}, [], {}  # seen: computed_key -> the first run with it
  for r in meta['runs']:
    rdir = os.path.join(os.path.abspath(workdir), 'runs', r['name'])
    if not os.path.lexists(os.path.join(rdir, 'final.json')):
      missing.append(r['name'])
      continue
    try:
      final = final_of(rdir)
    except ConfigError as e:
      print(f'warning: {e}; left out', file=sys.stderr, flush=True)
      missing.append(r['name'])
      continue
    made = RunConfig.from_any(final['config'])
    check_made_as_planned(r, rdir, made)
    key = computed_key(made)
    same = seen.setdefault(key, r['name'])
    if same != r['name']:  # two labels, one run (found once the data's size was known: hostile pass 16a's N14)
      print(f'warning: {r["name"]} trained the same run as {same}: left out, so that one run is not shown under two '
            f'labels', file=sys.stderr, flush=True)
      continue
    configs[r['name']] = made
    rows.append(dict(name=r['name'], **{k: r['values'].get(k, '-') for k in keys}, top1=final['top1'], top5=final['top5'],
                     steps=final['step'], workdir=rdir, base=r.get('base') or _base_of(r), group=_group(made)))
  unplanned = sorted(set(finished_folders(workdir)) - {r['name'] for r in meta['runs']})
  if unplanned:  # train.py run by hand from --print_commands, say (hostile pass 14a's N_PC_collect)
    print(f'warning: {", ".join(unplanned[:5])}{" ..." if len(unplanned) > 5 else ""} under {workdir}/runs finished '
          f'but {PLAN} does not plan them: left out; the sweep command that names them (with --collect_only) adds '
          f'them', file=sys.stderr, flush=True)
  measured = measure(configs, throughput_batch) if rows else {}
  for row in rows:
    row['analytic_gmacs'], row['images_per_sec'] = measured[row['name']]
  cfg = next(iter(configs.values()), None)
  title = f'{os.path.basename(meta["config"])}' + (f' ({cfg.model.name}, {cfg.dataset.where})' if cfg else '')
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


def _base_of(planned: dict) -> str:
  """What a plan entry written before sweep.json recorded ``base`` was added to: its config string without the
  swept key=values (hostile pass 14a's N_OLD_collect: the whole string made every seed its own group)."""
  file, _, arg = planned['config'].partition(':')
  swept = {f'{k}={v}' for k, v in planned.get('values', {}).items()}
  kept = [a for a in arg.split(',') if a and a not in swept]
  return ':'.join([shown(file), ','.join(kept)]).rstrip(':')


def _group(run: RunConfig) -> str:
  """The digest of what a run computes but its seed: the runs a table pools over seeds share it."""
  return hashlib.sha256(computed_key(run, but=('seed',)).encode()).hexdigest()


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


def measure_models(models: dict, batch: int = 64, rounds: int = 5) -> dict:
  """name -> (analytic GMACs, images/s), the models timed in interleaved rounds in this process."""
  speed = images_per_sec(models, batch, rounds=rounds)
  return {k: (count_flops(m, compile=False)['analytic_gmacs'], speed[k]) for k, m in models.items()}


def check_throughput_batch(batch: int) -> None:
  """The sweep's ``--throughput_batch`` (the batch its tables' images/s are measured at): a positive int."""
  if batch < 1:
    raise ConfigError(f'--throughput_batch={batch} is not accepted: expected a positive int')

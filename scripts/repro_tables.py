"""The tables of docs/RESULTS.md section 1, computed from the sweeps' results.csv files.

Top-1 is given as the mean over seeds with its range, and as the change against the reference run of
the *same seed* (paired): every fine-tuning run starts from the same backbone, and the seed (data
order, augmentation, initialisation of new parameters) moves all methods of a seed together by more
than the methods differ, so the paired change is the quantity to compare.

  python scripts/repro_tables.py [--main docs/results/fmnist_main/results.csv]
                                 [--ablation docs/results/fmnist_ablation/results.csv]
                                 [--recommended docs/results/fmnist_recommended/results.csv]
  (a table whose file does not exist is left out; the second backbone's runs:
   --main docs/results/fmnist_sincos2d_core/results.csv --recommended docs/results/fmnist_sincos2d_recommended/results.csv)
"""
import argparse
import csv
import os
import statistics

ABLATION_KEYS = ('multiscale', 'similarity', 'weight', 'prop_attn')


def _rows(path):
  with open(path) as f:
    return [r for r in csv.DictReader(f) if r.get('top1') not in (None, '', '-')]


def _fmt_delta(values):
  mean = statistics.mean(values)
  each = ', '.join(f'{v:+.2f}' for v in values)
  return f'{mean:+.2f} ({each})'


def _summary(runs, reference):
  """(mean top-1 %, 'min–max', paired change vs reference by seed, n) for one setting's runs."""
  top1 = [100 * float(r['top1']) for r in runs]
  deltas = [100 * (float(r['top1']) - float(reference[r['seed']]['top1']))
            for r in runs if r['seed'] in reference]
  return (f'{statistics.mean(top1):.2f}', f'{min(top1):.2f}–{max(top1):.2f}',
          _fmt_delta(deltas) if deltas else '–', len(runs))


def main_table(rows):
  reference = {r['seed']: r for r in rows if r['method'] == 'none'}
  settings = []
  for r in rows:
    key = (r['method'], r['keep'])
    if key not in settings:
      settings.append(key)
  none_gmacs = statistics.mean(float(r['analytic_gmacs']) for r in reference.values())
  out = ['| method | keep | seeds | top-1 mean (%) | range | change vs none, same seed: mean (each seed) '
         '| GMACs | GMACs saved | images/s |', '|---|---|---|---|---|---|---|---|---|']
  for method, keep in settings:
    runs = [r for r in rows if (r['method'], r['keep']) == (method, keep)]
    mean, spread, delta, n = _summary(runs, reference if method != 'none' else {})
    gmacs = statistics.mean(float(r['analytic_gmacs']) for r in runs)
    ips = statistics.mean(float(r['images_per_sec']) for r in runs)
    saved = f'{100 * (1 - gmacs / none_gmacs):.0f}%' if method != 'none' else '–'
    out.append(f'| {method} | {keep if keep != "-" else "–"} | {n} | {mean} | {spread} | {delta} '
               f'| {gmacs:.4f} | {saved} | {ips:.0f} |')
  return '\n'.join(out)


def ablation_table(rows, main_rows, method='tpm', keep='0.5'):
  reference = {r['seed']: r for r in main_rows if (r['method'], r['keep']) == (method, keep)}
  settings = []
  for r in rows:
    key = tuple((k, r.get(k, '-')) for k in ABLATION_KEYS if r.get(k, '-') not in ('-', ''))
    if key not in settings:
      settings.append(key)
  out = [f'| change from {method} keep {keep} | seeds | top-1 mean (%) | range '
         '| change vs base, same seed: mean (each seed) | GMACs | images/s |',
         '|---|---|---|---|---|---|---|']
  base = list(reference.values())
  if base:
    mean, spread, _, n = _summary(base, {})
    out.append(f'| base: multiscale none, similarity keys, weight importance, prop_attn off | {n} | {mean} '
               f'| {spread} | – | {statistics.mean(float(r["analytic_gmacs"]) for r in base):.4f} | – |')
  for key in settings:
    runs = [r for r in rows if all(r.get(k) == v for k, v in key)]
    mean, spread, delta, n = _summary(runs, reference)
    gmacs = statistics.mean(float(r['analytic_gmacs']) for r in runs)
    ips = statistics.mean(float(r['images_per_sec']) for r in runs)
    label = ', '.join(f'{k} {v}' for k, v in key)
    out.append(f'| {label} | {n} | {mean} | {spread} | {delta} | {gmacs:.4f} | {ips:.0f} |')
  return '\n'.join(out)


def recommended_table(rows, main_rows):
  """The library's defaults (tpm + multiscale pool + prop_attn on) against none and the plain tpm."""
  none = {r['seed']: r for r in main_rows if r['method'] == 'none'}
  out = ['| tpm + multiscale pool + prop_attn on, keep | seeds | top-1 mean (%) | range '
         '| change vs none, same seed | change vs plain tpm, same seed | GMACs | GMACs saved |',
         '|---|---|---|---|---|---|---|---|']
  none_gmacs = statistics.mean(float(r['analytic_gmacs']) for r in none.values())
  for keep in dict.fromkeys(r['keep'] for r in rows):
    runs = [r for r in rows if r['keep'] == keep]
    plain = {r['seed']: r for r in main_rows if (r['method'], r['keep']) == ('tpm', keep)}
    mean, spread, vs_none, n = _summary(runs, none)
    vs_plain = _summary(runs, plain)[2]
    gmacs = statistics.mean(float(r['analytic_gmacs']) for r in runs)
    out.append(f'| {keep} | {n} | {mean} | {spread} | {vs_none} | {vs_plain} | {gmacs:.4f} '
               f'| {100 * (1 - gmacs / none_gmacs):.0f}% |')
  return '\n'.join(out)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--main', default='docs/results/fmnist_main/results.csv')
  p.add_argument('--ablation', default='docs/results/fmnist_ablation/results.csv')
  p.add_argument('--recommended', default='docs/results/fmnist_recommended/results.csv')
  args = p.parse_args()
  main_rows = _rows(args.main)
  print('Main comparison\n')
  print(main_table(main_rows))
  if os.path.exists(args.ablation):
    print('\nAblations\n')
    print(ablation_table(_rows(args.ablation), main_rows))
  if os.path.exists(args.recommended):
    print('\nThe library\'s defaults\n')
    print(recommended_table(_rows(args.recommended), main_rows))


if __name__ == '__main__':
  main()

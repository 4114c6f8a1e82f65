"""The fine-tuned comparison on the 12-block Fashion-MNIST backbone (docs/RESULTS.md section 0), from the
finished runs that `bash scripts/collect_fmnist_ft.sh` copied into docs/results/fmnist_backbone_ft/.

Each run's final.json gives its seed, keep rate, method and top-1 on all 10,000 test images. Top-1 is
given as the mean over seeds with its spread, and as the change against `none` of the *same seed*
(paired: every run starts from the same backbone, and a seed moves all its runs together), with each
seed's change listed; then the paired differences the defaults decision and the claims rest on (fusion: with against without).

  python scripts/ft_summary.py [--dir docs/results/fmnist_backbone_ft] [--output DIR/summary.md]
"""
import argparse
import glob
import json
import os
import statistics

ROWS = [('none', 'none (the backbone fine-tuned the same way)'),
        ('tpm', 'tpm, the defaults (`method=tpm,multiscale=pool,prop_attn=on`)'),
        ('tpm_distinct', 'tpm ranked by distinctness (`...,similarity=tokens,weight=size,distinct=2`)'),
        ('tpm_distinct_nofusion', 'the same without multi-scale fusion (`multiscale=none`)'),
        ('tome', 'ToMe (r matched)'), ('evit', 'EViT'), ('drop', 'drop')]


def runs(folder):
  """{(variant, keep, seed): top-1 in %}: variant is the sweep folder's name, or the method in `peers`."""
  out = {}
  for path in glob.glob(os.path.join(folder, '*', 'runs', '*', 'final.json')):
    sweep = path.split(os.sep)[-4]
    final = json.load(open(path))
    cfg = final['config']
    red = cfg['reduction']
    variant = red['method'] if sweep in ('peers', 'none') else sweep
    keep = None if red['method'] == 'none' else float(str(red['keep_rate']).split(',')[0])
    out[variant, keep, int(cfg['seed'])] = 100 * final['eval_top1']
  return out


def _spread(values):
  return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}' if len(values) > 1 else f'{values[0]:.2f}'


def _paired(diffs):
  each = ', '.join(f'{d:+.2f}' for d in diffs)
  mean = statistics.mean(diffs)
  sd = f' ± {statistics.stdev(diffs):.2f}' if len(diffs) > 1 else ''
  return f'{mean:+.2f}{sd} ({each})'


def table(results, keeps=(0.7, 0.5)) -> str:
  seeds = sorted({s for (_, _, s) in results})
  base = {s: results[('none', None, s)] for s in seeds if ('none', None, s) in results}
  lines = [f'| top-1 % (seeds {", ".join(map(str, seeds))}) | ' + ' | '.join(
      f'keep {k}: mean ± sd over seeds | change vs none, paired (each seed)' for k in keeps) + ' |',
           '|---|' + '---|---|' * len(keeps)]
  for variant, label in ROWS:
    cells = []
    for k in (None,) if variant == 'none' else keeps:
      got = {s: results[variant, k, s] for s in seeds if (variant, k, s) in results}
      if not got:
        cells += ['', '']
        continue
      paired = [got[s] - base[s] for s in got if s in base]
      cells += [f'{_spread(list(got.values()))} (n={len(got)})',
                _paired(paired) if paired and variant != 'none' else '']
    cells += ['', ''] * (len(keeps) - len(cells) // 2)
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  lines.append('')
  for a, b in (('tpm_distinct', 'tome'), ('tpm_distinct', 'tpm'), ('tpm', 'drop'), ('tpm_distinct', 'drop'),
               ('tpm_distinct', 'tpm_distinct_nofusion')):
    for k in keeps:
      diffs = [results[a, k, s] - results[b, k, s] for s in seeds if (a, k, s) in results and (b, k, s) in results]
      if diffs:
        lines.append(f'- {a} − {b} at keep {k}, paired: {_paired(diffs)} point (n={len(diffs)})')
  return '\n'.join(lines) + '\n'


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--dir', default='docs/results/fmnist_backbone_ft')
  p.add_argument('--output', default=None, help='default: DIR/summary.md')
  a = p.parse_args()
  text = table(runs(a.dir))
  with open(a.output or os.path.join(a.dir, 'summary.md'), 'w') as f:
    f.write('# Fine-tuned from the 90.35% backbone: paired changes (scripts/ft_summary.py)\n\n' + text)
  print(text)


if __name__ == '__main__':
  main()

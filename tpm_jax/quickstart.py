"""The quickstart job: see token merging work on real data in a few minutes on a CPU.

Run by ``bash quickstart.sh`` (which sets up ``.venv/`` and the data first), or directly:
``python -m tpm_jax.quickstart [--workdir workdirs/quickstart] [--method tpm] [--keep 0.7]``.

1. trains a small ViT on the real Fashion-MNIST (TFDS ``fashion_mnist``), unpruned: 28x28 images,
   patch 4, a 7x7 token grid (configs/quickstart.py:stage=pretrain);
2. exports it and fine-tunes it with ``tpm`` (the paper's method) at keep 0.7, with the library's
   recommended multi-scale ``pool`` fusion and proportional attention (configs/quickstart.py);
3. writes ``WORKDIR/report.md`` and ``report.json``: top-1, GMACs and measured images/s of both, and
   ``WORKDIR/tokens.png``, which patches were kept and which merged into which.

Both runs go through the same ``trainer.train_and_evaluate`` as train.py, into
``WORKDIR/pretrain`` and ``WORKDIR/<method>``; a run that finished (it has ``final.json``) is not
repeated, so running the quickstart again only rebuilds the report.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from flax import nnx
from PIL import Image

from configs import quickstart as qs
from tpm_jax import augment, cli, export, preflight, trainer, viz
from tpm_jax.checkpoint import CheckpointError, ResumeMismatch
from tpm_jax.checkpoint.resume import OVERWRITE_HINT
from tpm_jax.config import ConfigError, RunConfig
from tpm_jax.data import input_pipeline
from tpm_jax.data.input_pipeline import DataError
from tpm_jax.flops import count_flops, token_schedule
from tpm_jax.forward import jitted_forward
from tpm_jax.throughput import images_per_sec


class Interrupted(KeyboardInterrupt):
  """A stage was preempted (saved) or stopped before training: run the quickstart again to go on. A
  ``KeyboardInterrupt``, as ``cli.Interrupted`` is: no library's ``except Exception`` takes it for
  an error of its own, and asyncio re-raises it."""


def run_stage(config: RunConfig, workdir: str) -> dict:
  """Train ``config`` into ``workdir`` (a finished run there is left as it is: the trainer says so);
  returns its final metrics. ``Interrupted`` when a signal stopped it."""
  try:
    final = trainer.train_and_evaluate(config, workdir)
  except trainer.Stopped as e:
    raise Interrupted(str(e)) from None
  if final.get('preempted'):
    raise Interrupted(f'{workdir}: preempted at step {final["step"]} and saved')
  return final


def measure_images_per_sec(models: dict, batch_size: int, rounds: int = 5) -> dict:
  """Inference images/s of each model, in one process: warm up all, then interleave timed calls
  round by round and take medians, so the numbers compare (``tpm_jax.throughput.images_per_sec``)."""
  return images_per_sec(models, batch_size, rounds=rounds)


def visualise(model, config, path: str, num_images: int = 6) -> str:
  """One PNG: the first eval images (top row) and, below, which patches the pruned model kept
  (outlined) and which it merged into which (same colour)."""
  dataset = input_pipeline.get_dataset(config.dataset)
  batch = next(iter(trainer.eval_batches(config, dataset, config.dataset.eval_split, local_batch=num_images)))
  graphdef, state = nnx.split(model)
  images = augment.normalize(batch['image'], config.aug.mean, config.aug.std)
  _, aux = jitted_forward(graphdef, return_aux=True)(state, images)  # compiled: not op by op
  aux = [{k: np.asarray(v) for k, v in step.items()} for step in aux]
  scale = max(1, 224 // model.cfg.img_size)
  tiles = []
  for i, image in enumerate(np.asarray(batch['image'])):
    plain = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    plain = np.asarray(Image.fromarray(plain).resize((plain.shape[1] * scale, plain.shape[0] * scale), Image.NEAREST))
    tokens = viz.render(image, aux, i, patch_size=model.cfg.patch_size, num_prefix_tokens=model.num_prefix_tokens,
                        scale=scale)
    tiles.append(np.concatenate([plain, np.full((4, plain.shape[1], 3), 255, np.uint8), tokens], axis=0))
  gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
  Image.fromarray(np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1)).save(path)
  return path


def method_label(config) -> str:
  """'tpm + multiscale pool + prop_attn': the method and the settings that change it."""
  label = config.reduction.method
  if label == 'none':
    return label
  if config.multiscale.method != 'none':
    label += f' + multiscale {config.multiscale.method}'
  if config.reduction.use_prop_attn:
    label += ' + prop_attn'
  return label


def report(workdir: str, runs: dict, configs: dict, *, throughput_batch: int = 64) -> dict:
  """top-1, GMACs, images/s of each run's exported model; writes report.json and report.md."""
  models = {}
  for name in runs:
    out = os.path.join(workdir, f'{name}_export')
    if not os.path.exists(os.path.join(out, export.EXPORT_CONFIG)):
      export.export(os.path.join(workdir, name), out)
    models[name] = export.load_model(out)
  speed = measure_images_per_sec(models, throughput_batch)
  rows = {}
  for name, final in runs.items():
    model = models[name]
    rows[name] = dict(method=method_label(configs[name]), keep_rate=str(configs[name].reduction.keep_rate),
                      top1=final['eval_top1'], eval_examples=int(final['eval_examples']),
                      gmacs=count_flops(model, compile=False)['analytic_gmacs'],
                      images_per_sec=speed[name], tokens=str(token_schedule(model)),
                      train_steps=final['step'], workdir=os.path.join(workdir, name))
  pruned_name = next(n for n in runs if n != 'pretrain')
  base, pruned = rows['pretrain'], rows[pruned_name]
  summary = dict(top1_change=pruned['top1'] - base['top1'], gmacs_ratio=pruned['gmacs'] / base['gmacs'],
                 speedup=pruned['images_per_sec'] / base['images_per_sec'], throughput_batch=throughput_batch)
  png = visualise(models[pruned_name], configs[pruned_name], os.path.join(workdir, 'tokens.png'))
  result = dict(runs=rows, summary=summary, picture=os.path.relpath(png, workdir))
  with open(os.path.join(workdir, 'report.json'), 'w') as f:
    json.dump(result, f, indent=2)
  lines = ['# Quickstart report', '',
           f'Fashion-MNIST (TFDS `fashion_mnist`), {base["eval_examples"]} test images; images/s: inference, '
           f'batch {throughput_batch}, medians of interleaved runs in one process.', '',
           '| run | method | keep | tokens | top-1 | GMACs | images/s |', '|---|---|---|---|---|---|---|']
  for name, r in rows.items():
    lines.append(f'| {name} | {r["method"]} | {r["keep_rate"] if r["method"] != "none" else "-"} | {r["tokens"]} '
                 f'| {r["top1"]:.4f} | {r["gmacs"]:.4f} | {r["images_per_sec"]:.0f} |')
  lines += ['', f'{configs[pruned_name].reduction.method}: top-1 {100 * summary["top1_change"]:+.2f} points, '
            f'{100 * (1 - summary["gmacs_ratio"]):.0f}% fewer GMACs, {summary["speedup"]:.2f}x images/s.', '',
            f'`{result["picture"]}`: test images (top) and, below, the patches '
            f'{configs[pruned_name].reduction.method} kept '
            '(outlined in white) and the ones merged into each (same colour; darkened: discarded).', '']
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write('\n'.join(lines))
  return result


def main(argv=None):
  p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', default='workdirs/quickstart')
  p.add_argument('--data_dir', default=None, help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)')
  p.add_argument('--method', default='tpm', help='token reduction for the fine-tuned run (tpm, evit, drop, tome)')
  p.add_argument('--keep', type=float, default=0.7)
  p.add_argument('--config_arg', default='', help='extra configs/quickstart.py arg string, e.g. "smoke"')
  args = p.parse_args(argv)
  extra = f',{args.config_arg}' if args.config_arg else ''
  cli.quiet_library_logs()  # the trainer's progress and notes; libraries' log lines (Orbax's) left out

  cli.stop_on_signals()  # outside training (which saves first): stop where it is, nothing half-written
  try:
    preflight.check_workdir_path(args.workdir, what='--workdir')  # an errno line at the first write (pass 21's OP23)
    configs = {'pretrain': qs.get_config('stage=pretrain' + extra),
               args.method: qs.get_config(f'stage=finetune,method={args.method},keep={args.keep}' + extra)}
    configs = {k: RunConfig.from_any(c).replace(dataset=dict(data_dir=args.data_dir)) for k, c in configs.items()}
    return run(args.workdir, configs)
  except ResumeMismatch as e:  # train.py's way on is a flag the quickstart does not have (hostile pass 20's QS07)
    cli.fail(str(e).replace(OVERWRITE_HINT, f'use another --workdir, or move {args.workdir} aside to start over'), 2)
  except (ConfigError, ValueError) as e:
    cli.fail(e, 2)
  except cli.Interrupted as e:  # a signal outside training
    print(f'[quickstart] stopped by {e.signal_name}; run the same command to go on', file=sys.stderr, flush=True)
    cli.exit_process(0)
  except Interrupted as e:  # a stage preempted (saved) or stopped before training
    print(f'[quickstart] stopped: {e}; run the same command to go on', file=sys.stderr, flush=True)
    cli.exit_process(0)
  except (CheckpointError, FloatingPointError, DataError, OSError) as e:
    cli.fail(e, 1)


def run(workdir: str, configs: dict) -> dict:
  """Pretrain (``configs['pretrain']``), export, fine-tune the other config from the export, report.
  ``configs``: RunConfigs (or anything ``RunConfig.from_any`` reads)."""
  configs = {k: RunConfig.from_any(c) for k, c in configs.items()}
  os.makedirs(workdir, exist_ok=True)
  name = next(n for n in configs if n != 'pretrain')
  backbone = os.path.join(workdir, 'pretrain_export')
  made = os.path.join(backbone, 'export.json')
  if os.path.isfile(made):  # pretraining longer now would leave the export and the fine-tune from it behind (pass 14b's QS2)
    step = json.load(open(made)).get('step')
    if step != configs['pretrain'].total_steps:
      raise ConfigError(f'{backbone} holds the backbone at step {step}, and the fine-tune and report in {workdir} were '
                        f'made from it, not from {configs["pretrain"].total_steps} pretraining steps: use another '
                        f'workdir for these steps')
  t0 = time.time()
  print(f'[quickstart] 1/3 training the unpruned backbone ({configs["pretrain"].total_steps} steps) '
        f'into {workdir}/pretrain', flush=True)
  runs = {'pretrain': run_stage(configs['pretrain'], os.path.join(workdir, 'pretrain'))}
  if not os.path.exists(os.path.join(backbone, export.EXPORT_CONFIG)):
    export.export(os.path.join(workdir, 'pretrain'), backbone)
  ft = configs[name] = configs[name].replace(init=dict(checkpoint=backbone))
  keep = '' if 'reduction.keep_rate' in ft.unread() else f' at keep {ft.reduction.keep_rate}'  # none: no keep (QS13)
  print(f'[quickstart] 2/3 fine-tuning with {ft.reduction.method}{keep} '
        f'({ft.total_steps} steps) into {workdir}/{name}', flush=True)
  runs[name] = run_stage(ft, os.path.join(workdir, name))
  print('[quickstart] 3/3 measuring and writing the report', flush=True)
  result = report(workdir, runs, configs)
  print(open(os.path.join(workdir, 'report.md')).read(), flush=True)
  print(f'[quickstart] done in {time.time() - t0:.0f} s; report: {workdir}/report.md', flush=True)
  return result


if __name__ == '__main__':
  main()

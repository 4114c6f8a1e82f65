"""Images/s of the train input pipeline (tpm_jax.data.input_pipeline, Grain) by worker count, on
this machine: Grain against itself, ``dataset.workers`` = each of ``--workers`` (0: threads of this
process). Not a test: a measurement.

  .venv/bin/python benchmarks/input_pipeline.py [--workers 0,1,2] [--threads 8] [--batch 64] \\
      [--batches 16] [--rounds 5] [--images_per_class 64] [--out benchmarks/results/input_pipeline_grain]

Data: an image folder (root/train/class/*.jpg) in a temporary directory, 4 classes x
``--images_per_class`` JPEGs (quality 90, 500x375 or 375x500, ImageNet's typical size), views of the
test fixture's real photographs (tests/imagenet_fixture.py), with DeiT's training augmentation of
configs/deit.py (random resized crop, flip, RandAugment, random erasing's box).
Method: one process; ``--rounds`` rounds, each taking every worker count in turn (the order rotated
each round) with a fresh iterator that is closed (its workers stopped) before the next starts.
Start-up: from creating the iterator to its first batch (spawning the workers included). Grain
computes ``threads x max(1, workers)`` batches at once (a wave) and holds up to 2 x threads batches
per process and 2 per worker ahead; that many batches are a warm-up, untimed, and the timed window
is ``--batches`` rounded up to whole waves. Reported: images/s over the window, median over rounds
with min and max, and x workers=0: the median over rounds of the ratio of the same round's images/s.
Writes <out>.json and <out>.md (machine facts from benchmarks/throughput.py's machine()), prints the table.

The tf.data pipeline Grain replaced is no longer measured: its numbers, from the benchmark this one
replaced, stay in benchmarks/results/input_pipeline.md.
"""
import argparse
import contextlib
import importlib.metadata
import io
import math
import os
import shlex
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import PIL  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.throughput import machine, write_results  # noqa: E402
from configs import deit  # noqa: E402
from tpm_jax.config import RunConfig  # noqa: E402
from tpm_jax.data import input_pipeline  # noqa: E402

IMAGE_SIZES = ((500, 375), (375, 500))  # ImageNet's typical landscape and portrait sizes
CLASSES = 4


def _view(photo, rng, size, quality):
  """JPEG bytes of a random view of ``photo`` at ``size`` (w, h): tests/imagenet_fixture.py's
  _random_view (crop 40-100% of the short side, aspect jitter, flip, brightness), resized to a
  non-square ImageNet size."""
  h, w = photo.shape[:2]
  side = min(h, w) * rng.uniform(0.4, 1.0)
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))) * size[0] / size[1]
  ch = int(min(h, max(8, side / np.sqrt(aspect))))
  cw = int(min(w, max(8, side * np.sqrt(aspect))))
  y, x = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
  crop = photo[y:y + ch, x:x + cw]
  if rng.rand() < 0.5:
    crop = crop[:, ::-1]
  crop = np.clip(crop.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.BICUBIC).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def make_image_folder(root, per_class, quality=90, seed=0):
  """root/train/class_k/*.jpg; 4 in 5 landscape. Returns the files' sizes in bytes."""
  sys.path.insert(0, os.path.join(ROOT, 'tests'))
  from imagenet_fixture import load_photo
  rng = np.random.RandomState(seed)
  sizes = []
  for c in range(CLASSES):
    photo = load_photo(c)
    d = os.path.join(root, 'train', f'class_{c}')
    os.makedirs(d)
    for i in range(per_class):
      data = _view(photo, rng, IMAGE_SIZES[int(rng.rand() < 0.2)], quality)
      with open(os.path.join(d, f'{i:05d}.jpg'), 'wb') as f:
        f.write(data)
      sizes.append(len(data))
  return sizes


# ------------------------------------------------------------------------------------------------
# The pipeline: the only calls into tpm_jax.data.input_pipeline
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def grain_iterator(root, batch, workers, threads):
  """The library's train iterator over the image folder ``root`` (configs/deit.py's augmentation),
  ``workers`` worker processes, ``threads`` threads per process; closed (workers stopped) on exit."""
  c = deit.get_config()
  with c.unlocked():
    c.dataset.image_folder = root
    c.dataset.train_split = 'train'
    c.dataset.workers = workers
    c.dataset.threads = threads
  run = RunConfig.from_any(c)
  it = input_pipeline.train_iterator(run.dataset, run.aug, input_pipeline.get_dataset(run.dataset),
                                     img_size=run.vit.img_size, channels=3, local_batch=batch)
  try:
    yield it
  finally:
    input_pipeline.close(it)


def time_once(root, batch, workers, threads, batches):
  """Start-up s, images/s over the timed window and its batches, of a fresh iterator, closed after."""
  wave = threads * max(1, workers)
  ahead = 2 * threads * max(1, workers) + 2 * workers  # what the pipeline computes or holds ahead
  n = math.ceil(batches / wave) * wave
  t0 = time.perf_counter()
  with grain_iterator(root, batch, workers, threads) as it:
    first = next(it)
    assert first['image'].shape[0] == batch, first['image'].shape
    startup = time.perf_counter() - t0
    for _ in range(ahead - 1):
      next(it)
    t1 = time.perf_counter()
    for _ in range(n):
      next(it)
    wall = time.perf_counter() - t1
  return dict(startup=round(startup, 3), rate=round(n * batch / wall, 2), batches=n)


def markdown(result):
  m, a = result['machine'], result['args']
  names = list(result['measured'])
  lines = [f'# Input pipeline (Grain), train, images/s by worker count ({m["date"]})', '', f'`{result["command"]}`', '',
           f'{m["cpu"]}, {m["cores"]} cores, load average at start {m["load_average_at_start"]}; '
           f'{", ".join(f"{k} {v}" for k, v in result["versions"].items())}. Run took {result["seconds"]:.0f} s.', '',
           f'Data: {CLASSES} classes x {a["images_per_class"]} JPEGs (mean {result["mean_kib"]:.0f} KiB, 500x375 or '
           f'375x500), DeiT augmentation, batch {a["batch"]}, threads {a["threads"]}; rounds: {a["rounds"]}, '
           'interleaved, a fresh iterator per round and setting; timed: whole waves after a warm-up of what the '
           'pipeline holds ahead.', '',
           '| workers | images/s (median) | min - max | per round | x workers=0 | timed batches/round | start-up s |',
           '|---|---|---|---|---|---|---|']
  for w in names:
    d = result['measured'][w]
    lines.append(f'| {w.split("=")[1]} | {d["images_per_s"]:.1f} | {d["min"]:.1f} - {d["max"]:.1f} | '
                 f'{" / ".join(f"{x:.0f}" for x in d["per_round"])} | {d.get("x_workers_0", "")} | {d["batches"]} | '
                 f'{d["startup_s"]:.2f} |')
  return '\n'.join(lines) + '\n'


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workers', default='0,1,2', help='settings of config.dataset.workers')
  p.add_argument('--threads', type=int, default=8, help='config.dataset.threads')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--batches', type=int, default=16, help='timed batches per round (rounded up to whole waves)')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--images_per_class', type=int, default=64)
  p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'input_pipeline_grain'))
  args = p.parse_args()
  workers = [int(w) for w in args.workers.split(',')]
  facts = machine()
  began = time.perf_counter()
  res = {w: [] for w in workers}
  with tempfile.TemporaryDirectory(prefix='input_pipeline_bench_') as tmp:
    root = os.path.join(tmp, 'images')
    sizes = make_image_folder(root, args.images_per_class)
    for r in range(args.rounds):
      k = r % len(workers)
      for w in workers[k:] + workers[:k]:
        m = time_once(root, args.batch, w, args.threads, args.batches)
        res[w].append(m)
        print(f'round {r + 1}: workers={w}: start-up {m["startup"]:.2f} s, {m["rate"]:.1f} images/s over '
              f'{m["batches"]} batches', flush=True)
  measured = {}
  for w, ms in res.items():
    rates = [m['rate'] for m in ms]
    d = dict(images_per_s=round(statistics.median(rates), 1), min=min(rates), max=max(rates), per_round=rates,
             batches=ms[0]['batches'], startup_s=round(statistics.median(m['startup'] for m in ms), 2))
    if 0 in res and w != 0:
      d['x_workers_0'] = round(statistics.median(m['rate'] / b['rate'] for m, b in zip(ms, res[0])), 2)
    measured[f'workers={w}'] = d
  result = dict(command=shlex.join(['.venv/bin/python', 'benchmarks/input_pipeline.py'] + sys.argv[1:]),
                machine=facts, args=vars(args), seconds=round(time.perf_counter() - began, 1),
                versions=dict(grain=importlib.metadata.version('grain'), pillow=PIL.__version__, numpy=np.__version__),
                mean_kib=round(statistics.mean(sizes) / 1024, 1), measured=measured)
  write_results(args.out, result, markdown(result))


if __name__ == '__main__':
  main()

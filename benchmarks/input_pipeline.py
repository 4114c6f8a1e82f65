"""Images/s of the TRAIN input pipeline on this machine: Grain (tpm_jax.data.input_pipeline) against
the tf.data pipeline it replaced, on real JPEGs of ImageNet's typical size. Not a test: a measurement.

  .venv/bin/python benchmarks/input_pipeline.py [--batch 64] [--batches 16] [--rounds 5] \\
      [--images_per_class 64] [--workers 0,1,2,4] [--threads 8] [--tfdata_commit dec4c9b] \\
      [--out benchmarks/results/input_pipeline.md]

Data: an image folder (root/train/class/*.jpg) in a temporary directory, 4 classes x
``--images_per_class`` JPEGs (quality 90, 500x375 or 375x500, ImageNet's typical size), views of the
test fixture's real photographs (tests/imagenet_fixture.py: scikit-image's photos; a random crop,
flip and brightness of its class's photo each, as the fixture makes them).

Pipelines, all with DeiT's training augmentation of configs/deit.py (random resized crop, bicubic;
flip; RandAugment rand-m9-mstd0.5-inc1; random erasing 0.25) and the same batch:
- tf.data: the pipeline this library had before Grain, as of ``--tfdata_commit``: its
  tpm_jax/data/input_pipeline.py and randaugment.py are taken out of git (``git show``) into a
  temporary directory as modules ``legacy_input_pipeline`` and ``legacy_randaugment`` (imports of
  the library's randaugment rewritten to the legacy one) and imported from there. Without git, that
  commit or TensorFlow, the tf.data rows are left out and the output says why. (It fills the random
  erasing box on the host; Grain's pipeline draws the box only, the device fills it.)
- Grain, ``config.dataset.workers`` = each of ``--workers`` (0: threads of this process), with
  ``config.dataset.threads`` = ``--threads``; configs/common.py's default is workers=2.
Method: one process; ``--rounds`` rounds, each taking every pipeline in turn (the order rotated
each round) with a fresh iterator that is closed (worker processes stopped) before the next
pipeline starts, so no pipeline computes during another's timing. A pipeline's start-up time is
from creating the iterator to its first batch (for Grain with workers, spawning them included).
Grain's prefetch computes ``threads`` batches at once per process (every thread one batch), so its
batches arrive in waves of C = threads x max(1, workers), and it holds up to 2 x threads batches
per process (and 2 more per worker) ahead of the consumer: its warm-up is that many batches, so
that both ends of the timed window are in the steady state, and the timed window is a whole number
of waves, ``--batches`` rounded up to a multiple of C; tf.data's warm-up is ``--warmup`` batches.
Reported: images/s over the timed window, median over rounds with min and max; Grain/tf.data =
median over rounds of the ratio of the same round's images/s, for Grain's best setting and for the
default one; the same for images per CPU-second (CPU time of this process and its workers in the
window, from /proc), which moves less when other processes share the cores.
Then a profile, single-threaded, of Grain's per-example work on the same files: each stage of
tpm_jax.data.transforms.TrainTransform timed on its own, the whole per-example call, and what
PIL's JPEG draft mode (DCT-scaled decoding) could save on these images.
Writes ``--out`` (markdown) and prints it.
"""
import argparse
import datetime
import io
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_SIZES = ((500, 375), (375, 500))  # ImageNet's typical landscape and portrait sizes
CLASSES = 4
TARGET = 0.9  # Grain >= 0.9x tf.data


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
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
  from imagenet_fixture import _load_photo
  rng = np.random.RandomState(seed)
  sizes = []
  for c in range(CLASSES):
    photo = _load_photo(c)
    d = os.path.join(root, 'train', f'class_{c}')
    os.makedirs(d)
    for i in range(per_class):
      data = _view(photo, rng, IMAGE_SIZES[int(rng.rand() < 0.2)], quality)
      with open(os.path.join(d, f'{i:05d}.jpg'), 'wb') as f:
        f.write(data)
      sizes.append(len(data))
  return sizes


# ------------------------------------------------------------------------------------------------
# Pipelines
# ------------------------------------------------------------------------------------------------
def make_config(root, workers=0, threads=8):
  from configs import deit
  c = deit.get_config()
  with c.unlocked():
    c.dataset.image_folder = root
    c.dataset.train_split = 'train'
    c.dataset.workers = workers
    c.dataset.threads = threads
    c.dataset.shuffle_buffer = 10_000  # the tf.data pipeline's (configs/common.py before Grain)
  return c


def _rewrite_imports(text):
  """The library's randaugment -> legacy_randaugment; any other tpm_jax import guarded (an image
  folder needs none of them, and they may be gone from the library)."""
  text = re.sub(r'^([ \t]*)from tpm_jax\.data\.randaugment import', r'\1from legacy_randaugment import', text,
                flags=re.M)

  def guard(m):
    ind, module, names = m.group(1), m.group(2), m.group(3)
    nones = '\n'.join(f'{ind}  {n.split(" as ")[-1].strip()} = None' for n in names.split(','))
    return (f'{ind}try:\n{ind}  from {module} import {names}\n{ind}except ImportError:  # not needed here\n'
            f'{nones}')
  return re.sub(r'^([ \t]*)from (tpm_jax\S*) import ([^(\n]+)$', guard, text, flags=re.M)


def legacy_pipeline(commit, dest):
  """(legacy_input_pipeline module, None), or (None, why not)."""
  try:
    import tensorflow  # noqa: F401
  except ImportError as e:
    return None, f'TensorFlow is not installed ({e})'
  for name, path in (('legacy_input_pipeline', 'tpm_jax/data/input_pipeline.py'),
                     ('legacy_randaugment', 'tpm_jax/data/randaugment.py')):
    try:
      text = subprocess.run(['git', '-C', ROOT, 'show', f'{commit}:{path}'], capture_output=True, text=True,
                            check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
      why = getattr(e, 'stderr', '') or str(e)
      return None, f'`git show {commit}:{path}` failed ({why.strip().splitlines()[0] if why.strip() else e})'
    with open(os.path.join(dest, f'{name}.py'), 'w') as f:
      f.write(_rewrite_imports(text))
  sys.path.insert(0, dest)
  try:
    import legacy_input_pipeline
  except Exception as e:  # noqa: BLE001 (any failure to import: no tf.data rows)
    return None, f'the legacy modules do not import ({type(e).__name__}: {e})'
  return legacy_input_pipeline, None


class Pipeline:
  """One pipeline: ``start()`` -> iterator, ``stop(it)``; ``wave``: batches it computes at once."""

  def __init__(self, name, start, stop, wave, warmup):
    self.name, self.start, self.stop, self.wave, self.warmup = name, start, stop, wave, warmup


def tfdata_pipeline(legacy, root, batch, warmup):
  c = make_config(root)
  builder = legacy.get_builder(c.dataset)

  def start():
    return legacy.train_iterator(c, builder, local_batch=batch, channels=3)

  def stop(it):
    it.close()  # a generator over tf.data's iterator: closing it drops the iterator and its threads
  return Pipeline('tf.data (old)', start, stop, 1, warmup)


def grain_pipeline(root, batch, workers, threads):
  from tpm_jax.data import input_pipeline
  c = make_config(root, workers, threads)
  dataset = input_pipeline.get_dataset(c.dataset)
  start = lambda: input_pipeline.train_iterator(c, dataset, local_batch=batch, channels=3)
  wave = threads * max(1, workers)
  # Batches computed or buffered ahead, at most: each process's prefetch (2 x threads batches, see
  # input_pipeline._read_options) and each worker's output buffer (2). Warming up that many leaves
  # both ends of the timed window in the steady state (a worker that started early has filled its
  # buffers by then and waits for the round-robin), so work done before the window is not counted in it.
  ahead = 2 * max(1, threads) * max(1, workers) + 2 * workers
  name = f'Grain workers={workers}' + (f' (threads={threads})' if workers == 0 else '')
  return Pipeline(name, start, input_pipeline.close, wave, ahead)


def _children():
  """Live child processes of this one (Grain's workers), by /proc; empty where there is no /proc."""
  me, out = str(os.getpid()), []
  try:
    names = os.listdir('/proc')
  except OSError:
    return out
  for name in names:
    if name.isdigit():
      try:
        with open(f'/proc/{name}/stat') as f:
          if f.read().rsplit(')', 1)[1].split()[1] == me:
            out.append(int(name))
      except (OSError, IndexError):
        pass
  return out


def _cpu_seconds(pids):
  """User + system CPU seconds of this process and of ``pids`` (so far)."""
  t = os.times()
  total = t.user + t.system
  tick = os.sysconf('SC_CLK_TCK')
  for pid in pids:
    try:
      with open(f'/proc/{pid}/stat') as f:
        v = f.read().rsplit(')', 1)[1].split()
      total += (int(v[11]) + int(v[12])) / tick
    except (OSError, IndexError):
      pass
  return total


def time_once(p, batch, batches, nproc):
  """Start-up s, images/s over the timed window, timed batches, the window's CPU seconds (this
  process and its children) per wall second and per core, and seconds to close, of a fresh
  iterator, closed after."""
  n = math.ceil(batches / p.wave) * p.wave
  before = set(_children())
  t0 = time.perf_counter()
  it = p.start()
  try:
    first = next(it)
    assert first['image'].shape[0] == batch, first['image'].shape
    startup = time.perf_counter() - t0
    for _ in range(p.warmup - 1):
      next(it)
    pids = _children()
    c1, t1 = _cpu_seconds(pids), time.perf_counter()
    for _ in range(n):
      next(it)
    wall, cpu = time.perf_counter() - t1, _cpu_seconds(pids) - c1
  finally:
    t2 = time.perf_counter()
    p.stop(it)
    del it
    closing = time.perf_counter() - t2
  for _ in range(100):  # the workers gone before the next pipeline starts
    if not set(_children()) - before:
      break
    time.sleep(0.1)
  return dict(startup=startup, rate=n * batch / wall, n=n, cpu_share=cpu / wall / nproc,
              per_cpu_s=n * batch / cpu if cpu > 0 else float('nan'), close=closing)


# ------------------------------------------------------------------------------------------------
# Profile of Grain's per-example work
# ------------------------------------------------------------------------------------------------
def _ms(fn, items, repeats=2):
  """Mean CPU ms (this process's: the work, whoever else wants the cores) per item of ``fn(item)``, best of
  ``repeats`` passes. Single-threaded work only."""
  best = float('inf')
  for _ in range(repeats):
    t = time.process_time()
    for x in items:
      fn(x)
    best = min(best, (time.process_time() - t) / len(items))
  return best * 1e3


def profile(root, files, img_size=224):
  """[(stage, ms per image, note)] of the Grain transform on ``files``, one thread, plus draft-mode facts."""
  from tpm_jax.data import input_pipeline, transforms
  from tpm_jax.data.randaugment import rand_augment
  c = make_config(root)
  t = transforms.train_transform(c.aug, img_size, 3)
  data = []
  for f in files:
    with open(f, 'rb') as fh:
      data.append(fh.read())
  idx = list(range(len(data)))
  rnd = lambda i: transforms.example_randomness(0, 0, i)
  decoded = [transforms.decode(d, 3) for d in data]
  crops, flips, ras = [], [], []
  for i in idx:  # the transform's own stages, in its order, with its draws
    r = rnd(i)
    crops.append((transforms.random_resized_crop(decoded[i], img_size, t.scale, rnd=r), r))
  for img, r in crops:
    flips.append((img.transpose(Image.FLIP_LEFT_RIGHT) if r.flip(t.hflip) else img, r))
  for img, r in flips:
    ras.append((rand_augment(img, r, **t.randaugment), r))

  def crop_stage(i):
    r = rnd(i)
    transforms.random_resized_crop(decoded[i], img_size, t.scale, rnd=r)

  def ra_stage(i):
    img, r = flips[i]
    state = r.generator.bit_generator.state
    rand_augment(img, r, **t.randaugment)
    r.generator.bit_generator.state = state

  example = input_pipeline._TrainExample(c.aug, img_size, 3, 0, 0)
  source = input_pipeline.get_dataset(c.dataset).source('train')
  rows = [
      ('read the file (the source\'s __getitem__)', _ms(lambda i: source[i], idx), ''),
      ('JPEG decode + convert RGB (transforms.decode)', _ms(lambda i: transforms.decode(data[i], 3), idx), ''),
      ('random resized crop: draws + crop + bicubic resize to 224', _ms(crop_stage, idx), ''),
      ('horizontal flip (half the images)', _ms(lambda i: crops[i][0].transpose(Image.FLIP_LEFT_RIGHT)
                                                if i % 2 else crops[i][0], idx), ''),
      ('RandAugment (2 ops, each with p 0.5)', _ms(ra_stage, idx), ''),
      ('random-erasing box + uint8 array', _ms(lambda i: (transforms.erasing_box(rnd(i), img_size, img_size, 0.25),
                                                          np.asarray(ras[i][0], np.uint8)), idx), ''),
      ('example_randomness (np.random.default_rng per example)', _ms(rnd, idx), ''),
      ('whole TrainTransform', _ms(lambda i: t(data[i], rnd(i)), idx), ''),
      ('whole per-example call (_TrainExample: source read + transform)', _ms(lambda i: example(i, source[i]), idx), ''),
  ]
  # PIL draft mode: JPEG decoding at 1/2, 1/4, 1/8 scale (DCT), usable when the crop is downscaled
  # at least that much. How often would it apply to DeiT's random resized crop of these images?
  sizes = [im.size for im in decoded]
  eligible, draws = 0, 0
  for i in range(len(data)):
    for k in range(4):
      r = transforms.example_randomness(1, k, i)
      box = _crop_box(sizes[i], t.scale, r)
      draws += 1
      eligible += min(box) >= 2 * img_size
  half = []
  for d in data:
    with Image.open(io.BytesIO(d)) as im:
      half.append((im.size[0] // 2, im.size[1] // 2))

  def draft_decode(i):
    im = Image.open(io.BytesIO(data[i]))
    im.draft('RGB', half[i])
    return im.convert('RGB')
  import grain

  def shuffled_index_ms(n):
    ds = grain.MapDataset.range(n).shuffle(seed=1).repeat()
    return _ms(lambda i: ds[i], range(2000), repeats=1)
  rows.append(('Grain\'s shuffle: one element\'s index (MapDataset.shuffle, in the pipeline\'s read)',
               shuffled_index_ms(len(data)), f'over {len(data)} images; over ImageNet\'s 1,281,167: '
                                             f'{shuffled_index_ms(1281167):.3f} ms'))
  # train_dataset's steps, without its prefetch
  ds = grain.MapDataset.source(source).shuffle(seed=1).repeat().map_with_index(example).batch(64, drop_remainder=True)
  rows.append(('Grain\'s batched MapDataset without prefetch, one thread (shuffle + per-example call + batch)',
               _ms(lambda i: ds[i], range(1, 1 + max(1, len(data) // 64))) / 64, 'ds[i] / 64'))
  rows.append(('JPEG decode at 1/2 scale (Image.draft), for comparison', _ms(draft_decode, idx),
               f'applies when the crop is >= {2 * img_size} px on both sides: {eligible} of {draws} '
               f'random resized crops of these images ({100 * eligible / draws:.1f}%)'))
  return rows


def _crop_box(size, scale, rnd, ratio=(3 / 4, 4 / 3)):
  """(w, h) of transforms.random_resized_crop's crop (its draws, without the pixels)."""
  img_w, img_h = size
  for _ in range(10):
    target_area = rnd.uniform(*scale) * img_w * img_h
    aspect = math.exp(rnd.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
    if w <= img_w and h <= img_h:
      return w, h
  return min(img_w, int(round(img_h * ratio[1]))), min(img_h, int(round(img_w / ratio[0])))


# ------------------------------------------------------------------------------------------------
# Machine, report
# ------------------------------------------------------------------------------------------------
def machine():
  model = 'unknown'
  try:
    with open('/proc/cpuinfo') as f:
      model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), model)
  except OSError:
    pass
  nproc = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return dict(nproc=nproc, cpu=model, load=[round(x, 2) for x in os.getloadavg()])


def cpu_pressure():
  """Linux PSI: % of the last 60 s in which some runnable task waited for a CPU (None without PSI)."""
  try:
    with open('/proc/pressure/cpu') as f:
      return float(f.readline().split('avg60=')[1].split()[0])
  except (OSError, IndexError, ValueError):
    return None


def versions(with_tf):
  import importlib.metadata as md

  import grain  # noqa: F401
  import PIL
  out = dict(grain=md.version('grain'), tensorflow=None, pillow=PIL.__version__, numpy=np.__version__,
             python=platform.python_version())
  if with_tf:
    import tensorflow as tf
    out['tensorflow'] = tf.__version__
  try:
    from PIL import features
    out['libjpeg-turbo'] = features.version('libjpeg_turbo')
  except Exception:  # noqa: BLE001 (older Pillow)
    pass
  return out


def scaling_text(res, grain_names, tf_name, nproc, threads, pressure):
  """2-3 sentences on how Grain scales with workers here, from this run's numbers."""
  med = lambda n, q: statistics.median(m[q] for m in res[n])
  workers = lambda n: int(n.split('=')[1].split()[0])
  names = sorted(grain_names, key=workers)
  ws = [workers(n) for n in names]
  rates = ', '.join(f'{med(n, "rate"):.0f}' for n in names)
  eff = ', '.join(f'{med(n, "per_cpu_s"):.0f}' for n in names)
  startup = ', '.join(f'{med(n, "startup"):.1f}' for n in names)
  closing = ', '.join(f'{med(n, "close"):.1f}' for n in names)
  best = max(names, key=lambda n: med(n, 'rate'))
  within = [n for n in names if workers(n) <= nproc]
  beyond = [n for n in names if workers(n) > nproc]
  gain = ''
  if within and beyond:
    r = max(med(n, 'rate') for n in beyond) / max(med(n, 'rate') for n in within)
    gain = (f'; more workers than cores gave {r:.2f}x the best of workers <= {nproc}' if r > 1.05 else
            f'; workers beyond {nproc} added no throughput ({r:.2f}x the best of workers <= {nproc})')
  one = [m['cpu_share'] for n in names if workers(n) <= 1 for m in res[n]]
  many = [m['cpu_share'] for n in names if workers(n) > 1 for m in res[n]]
  shares = ''
  if one and many:
    shares = (f'; one process doing the work (workers 0 or 1) got a median {100 * statistics.median(one):.0f}% of '
              f'the cores\' time in its windows, two or more worker processes {100 * statistics.median(many):.0f}%')
  text = (f'Scaling on {nproc} cores: Grain\'s median images/s for workers {ws} is {rates}, best at '
          f'workers={workers(best)}, and its images per CPU-s {eff}: a worker process does the work the threads of '
          f'the trainer\'s process would, so the {nproc} cores are the limit{shares}{gain}. Workers cost start-up '
          f'({startup} s: each is a spawned Python process that imports the library, and the first batch waits for a '
          f'whole wave of {threads} batches per worker) and closing ({closing} s: close waits for the batches in '
          f'flight).')
  p = [x for x in pressure if x is not None]
  if p and max(p) > 10:
    text += (f' The machine was shared during the run (CPU pressure {min(p):.0f}-{max(p):.0f}%, CPU share column): '
             'under contention a pipeline\'s share of the cores grows with its runnable threads, so images/s moves '
             'with the load and images per CPU-s is the steadier comparison')
    if tf_name:
      lo, hi = (f(med(n, 'per_cpu_s') for n in names) / med(tf_name, 'per_cpu_s') for f in (min, max))
      text += f' (Grain {lo:.2f}-{hi:.2f}x tf.data)'
    text += '.'
  return text


def stats(xs):
  return statistics.median(xs), min(xs), max(xs)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--batches', type=int, default=16, help='timed batches per round (Grain: rounded up to whole waves)')
  p.add_argument('--warmup', type=int, default=4, help="tf.data's warm-up batches (Grain's: one wave)")
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--images_per_class', type=int, default=64)
  p.add_argument('--workers', default='0,1,2,4', help='Grain settings of config.dataset.workers')
  p.add_argument('--threads', type=int, default=8, help='config.dataset.threads')
  p.add_argument('--tfdata_commit', default='dec4c9b', help='the commit whose tf.data pipeline is measured')
  p.add_argument('--no_profile', action='store_true')
  p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'input_pipeline.md'))
  args = p.parse_args()
  command = ' '.join(['python', 'benchmarks/input_pipeline.py'] + [shlex.quote(a) for a in sys.argv[1:]])
  mach = machine()
  began = time.perf_counter()

  with tempfile.TemporaryDirectory(prefix='input_pipeline_bench_') as tmp:
    root = os.path.join(tmp, 'images')
    sizes = make_image_folder(root, args.images_per_class)
    legacy_dir = os.path.join(tmp, 'legacy')
    os.makedirs(legacy_dir)
    legacy, why_no_tf = legacy_pipeline(args.tfdata_commit, legacy_dir)
    pipes = []
    if legacy is not None:
      pipes.append(tfdata_pipeline(legacy, root, args.batch, args.warmup))
    for w in (int(x) for x in args.workers.split(',')):
      pipes.append(grain_pipeline(root, args.batch, w, args.threads))
    res = {pp.name: [] for pp in pipes}
    loads, pressure = [], []
    for r in range(args.rounds):
      loads.append(round(os.getloadavg()[0], 1))
      pressure.append(cpu_pressure())
      k = r % len(pipes)
      for pp in pipes[k:] + pipes[:k]:
        m = time_once(pp, args.batch, args.batches, mach['nproc'])
        res[pp.name].append(m)
        print(f'round {r + 1}: {pp.name}: start-up {m["startup"]:.2f} s, {m["rate"]:.1f} images/s over {m["n"]} '
              f'batches, {m["per_cpu_s"]:.1f} images per CPU-s, CPU share {100 * m["cpu_share"]:.0f}%, '
              f'close {m["close"]:.2f} s', flush=True)
    prof = None
    if not args.no_profile:
      files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs)
      prof = profile(root, files)
  vers = versions(legacy is not None)
  elapsed = time.perf_counter() - began

  # -- report --
  tf_name = pipes[0].name if legacy is not None else None
  grain_names = [pp.name for pp in pipes if pp.name != tf_name]
  default_name = next((n for n in grain_names if n.startswith('Grain workers=2')), None)  # configs/common.py
  med = lambda n, q: statistics.median(m[q] for m in res[n])
  best_name = max(grain_names, key=lambda n: med(n, 'rate'))
  ratio = lambda n, q='rate': statistics.median(a[q] / b[q] for a, b in zip(res[n], res[tf_name]))
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
  v = ', '.join(f'{k} {x}' for k, x in vers.items() if x)
  lines = [f'# Input pipeline, train, images/s ({now})', '', f'`{command}`', '',
           f'{mach["cpu"]}, {mach["nproc"]} cores, load average at start {mach["load"]} (1-minute, at each round: '
           f'{loads}; CPU pressure, % of the last minute with a task waiting for a core, at each round: '
           f'{pressure}); {v}. Run took {elapsed:.0f} s.', '',
           f'Data: {CLASSES} classes x {args.images_per_class} JPEGs (quality 90, 500x375 or 375x500, mean '
           f'{statistics.mean(sizes) / 1024:.0f} KiB), views of the test fixture\'s photos, in an image folder. '
           f'DeiT augmentation (configs/deit.py), batch {args.batch}, {args.rounds} rounds interleaved, a fresh '
           f'iterator per round and pipeline, closed after. Timed: whole waves of batches (Grain computes '
           f'threads x max(1, workers) batches at once) after a warm-up as long as what the pipeline holds ahead '
           f'(Grain: 2 x threads batches per process + 2 per worker; tf.data: {args.warmup}). Start-up: iterator creation to first '
           f'batch; close: stopping it (Grain: its workers). CPU share: CPU seconds of this process and its '
           f'workers during the timed window over wall seconds x {mach["nproc"]} cores (below 100%: other '
           f'processes had the rest); images per CPU-s: the work, whatever the share.', '']
  if legacy is None:
    lines += [f'**No tf.data rows**: {why_no_tf}.', '']
  else:
    lines += [f'tf.data: the pipeline of commit {args.tfdata_commit} (tpm_jax/data/input_pipeline.py and '
              'randaugment.py from git), tfds.ImageFolder, map with AUTOTUNE parallelism, 2-thread private '
              'pool.', '']
  lines += ['| pipeline | images/s (median) | min - max | per round | x tf.data | images per CPU-s | x tf.data | '
            'CPU share | timed batches/round | start-up s | close s |', '|---|---|---|---|---|---|---|---|---|---|---|']
  for pp in pipes:
    m, lo, hi = stats([x['rate'] for x in res[pp.name]])
    x = '' if tf_name is None or pp.name == tf_name else f'{ratio(pp.name):.2f}'
    xc = '' if tf_name is None or pp.name == tf_name else f'{ratio(pp.name, "per_cpu_s"):.2f}'
    per_round = ' / '.join(f'{x["rate"]:.0f}' for x in res[pp.name])
    lines.append(f'| {pp.name} | {m:.1f} | {lo:.1f} - {hi:.1f} | {per_round} | {x} | {med(pp.name, "per_cpu_s"):.1f} | '
                 f'{xc} | '
                 f'{100 * med(pp.name, "cpu_share"):.0f}% | {res[pp.name][0]["n"]} | {med(pp.name, "startup"):.2f} | '
                 f'{med(pp.name, "close"):.2f} |')
  lines.append('')
  if tf_name is not None:
    for label, n in (('best', best_name), ('default (workers=2)', default_name)):
      if n is not None:
        got = ratio(n)
        lines.append(f'- Grain {label}, {n}: {got:.2f}x tf.data in images/s (target >= {TARGET}: '
                     f'{"met" if got >= TARGET else "missed"}); {ratio(n, "per_cpu_s"):.2f}x in images per CPU-s')
    lines.append('')
  lines += [scaling_text(res, grain_names, tf_name, mach['nproc'], args.threads, pressure), '']
  if prof:
    total = next(ms for name, ms, _ in prof if name.startswith('whole TrainTransform'))
    lines += ['Profile: Grain\'s per-example work, one thread, CPU ms per image (best of 2 passes over the '
              f'{len(sizes)} images; the transform\'s own functions, stage by stage):', '',
              '| stage | ms/image | % of TrainTransform | note |', '|---|---|---|---|']
    for name, ms, note in prof:
      lines.append(f'| {name} | {ms:.2f} | {100 * ms / total:.0f}% | {note} |')
    lines.append('')
    call = next(ms for name, ms, _ in prof if name.startswith('whole per-example'))
    cpu_ms = ', '.join(f'{n} {1e3 / med(n, "per_cpu_s"):.2f}' for n in ([tf_name] if tf_name else []) + grain_names)
    lines += [f'CPU ms per image in the timed windows above (1000 / images per CPU-s): {cpu_ms}; Grain\'s '
              f'per-example call alone, one thread: {call:.2f} ms. The difference is the pipeline\'s: threads '
              f'taking turns, batching, the workers\' shared-memory transfer.', '']
  text = '\n'.join(lines) + '\n'
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as fh:
    fh.write(text)
  print(text)


if __name__ == '__main__':
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
  main()

"""The Grain input pipeline on real photos: an image folder and a TFDS data source, determinism,
per-process sharding (no example lost or repeated), resumption from Grain's state, worker
processes, eval padding, grayscale, and that training, eval and export import no TensorFlow."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import deit
from tpm_jax import trainer
from tpm_jax.data import input_pipeline, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photos():
  from skimage import data
  return [data.astronaut(), data.coffee(), data.chelsea()]


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  """root/split/class/*.jpg from scikit-image's photos (3 classes, 8 train + 3 validation each)."""
  root = tmp_path_factory.mktemp('folder')
  rs = np.random.RandomState(0)
  for label, photo in enumerate(_photos()):
    for split, n in (('train', 8), ('validation', 3)):
      os.makedirs(root / split / f'class{label}', exist_ok=True)
      for i in range(n):
        y, x = rs.randint(0, photo.shape[0] - 200), rs.randint(0, photo.shape[1] - 200)
        Image.fromarray(photo[y:y + 200, x:x + 200]).save(root / split / f'class{label}' / f'{i}.jpg')
  return str(root)


@pytest.fixture(scope='module')
def one_per_class(tmp_path_factory):
  """12 classes of one photo crop each: a batch's labels name its examples."""
  root = tmp_path_factory.mktemp('ids')
  photos = _photos()
  for label in range(12):
    photo = photos[label % 3]
    os.makedirs(root / 'train' / f'c{label:02d}')
    y = 20 * label
    Image.fromarray(photo[y:y + 96, y:y + 96]).save(root / 'train' / f'c{label:02d}' / 'x.jpg')
  return str(root)


def _config(root, seed=0):
  c = deit.get_config('smoke')
  c.dataset.image_folder = root
  c.seed = seed
  return c


def _first(it, n):
  out = [next(it) for _ in range(n)]
  input_pipeline.close(it)
  return out


def _assert_same(a, b):
  for x, y in zip(a, b, strict=True):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_are_a_function_of_the_seed(image_folder):
  c = _config(image_folder)
  dataset = input_pipeline.get_dataset(c.dataset)
  assert dataset.num_examples('train') == 24 and dataset.num_examples('train[:10]') == 10
  a = _first(trainer.train_batches(c, dataset, local_batch=8), 4)
  b = _first(trainer.train_batches(c, dataset, local_batch=8), 4)
  assert a[0]['image'].shape == (8, 32, 32, 3) and a[0]['image'].dtype == np.uint8
  assert a[0]['erase'].shape == (8, 4) and a[0]['label'].dtype == np.int32
  _assert_same(a, b)
  other = _first(trainer.train_batches(_config(image_folder, seed=1), dataset, local_batch=8), 1)
  assert not np.array_equal(other[0]['image'], a[0]['image'])


def test_resume_from_grain_state_continues_at_the_same_example(image_folder):
  c = _config(image_folder)
  dataset = input_pipeline.get_dataset(c.dataset)
  whole = _first(trainer.train_batches(c, dataset, local_batch=8), 6)
  it = trainer.train_batches(c, dataset, local_batch=8)
  next(it), next(it)
  state = json.loads(json.dumps(it.get_state()))  # what the checkpoint holds: JSON
  resumed = trainer.train_batches(c, dataset, local_batch=8)
  resumed.set_state(state)
  _assert_same(whole[2:], _first(resumed, 4))


def test_worker_processes_give_the_same_batches_and_resume(image_folder):
  c = _config(image_folder)
  dataset = input_pipeline.get_dataset(c.dataset)
  threads = _first(trainer.train_batches(c, dataset, local_batch=4), 5)
  c.dataset.workers = 2
  it = trainer.train_batches(c, dataset, local_batch=4)
  _assert_same(threads[:3], [next(it) for _ in range(3)])
  state = json.loads(json.dumps(it.get_state()))
  input_pipeline.close(it)
  resumed = trainer.train_batches(c, dataset, local_batch=4)
  resumed.set_state(state)
  _assert_same(threads[3:], _first(resumed, 2))


def test_processes_share_each_epoch_with_no_example_lost_or_repeated(one_per_class):
  c = _config(one_per_class)
  c.model.num_classes = 12
  dataset = input_pipeline.get_dataset(c.dataset)
  epochs = {}
  for count in (1, 2, 3):
    per_process = [np.concatenate([b['label'] for b in _first(
        trainer.train_batches(c, dataset, local_batch=12 // count, process_index=i, process_count=count), 2)])
        for i in range(count)]
    n = 12 // count
    first = np.concatenate([p[:n] for p in per_process])
    second = np.concatenate([p[n:] for p in per_process])
    assert sorted(first) == list(range(12)) and sorted(second) == list(range(12)), (count, per_process)
    epochs[count] = per_process
  assert not np.array_equal(epochs[1][0][:12], epochs[1][0][12:])  # each epoch shuffled anew
  assert not np.array_equal(epochs[1][0][:12], np.arange(12))


def test_eval_batches_pad_with_a_mask_and_shard_by_process(image_folder):
  c = _config(image_folder)
  dataset = input_pipeline.get_dataset(c.dataset)
  for count in (1, 2):
    labels = []
    for i in range(count):
      batches = list(trainer.eval_batches(c, dataset, 'validation', local_batch=4, process_index=i,
                                                  process_count=count))
      assert all(b['image'].shape == (4, 32, 32, 3) for b in batches)
      assert len(batches) == (3 if count == 1 else 2)  # 9 examples; every process the same number of batches
      labels += [l for b in batches for l, m in zip(b['label'], b['mask']) if m]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # each example exactly once


def test_a_tfds_data_source_reads_without_tensorflow(tiny_imagenet):
  """imagenet2012 prepared (ArrayRecord) by the real builder; read in a clean process: no TensorFlow."""
  code = f"""
import sys
from configs import deit
from tpm_jax import trainer
from tpm_jax.data import input_pipeline
c = deit.get_config('smoke'); c.dataset.data_dir = {tiny_imagenet!r}
d = input_pipeline.get_dataset(c.dataset)
b = next(trainer.train_batches(c, d, local_batch=8))
e = list(trainer.eval_batches(c, d, 'validation', local_batch=8))
print(d.num_examples('train'), b['image'].shape, sum(int(x['mask'].sum()) for x in e), 'tensorflow' in sys.modules)
"""
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-2000:]
  n, *_, examples, tf_loaded = out.stdout.split()
  assert (n, examples, tf_loaded) == ('48', '16', 'False'), out.stdout


def test_grayscale_becomes_three_channels_and_back(tmp_path):
  from skimage import data
  for split in ('train', 'test'):
    os.makedirs(tmp_path / split / 'a')
    Image.fromarray(data.camera()[:128, :128]).save(tmp_path / split / 'a' / 'x.png')
  c = _config(str(tmp_path))
  c.aug.randaugment, c.aug.random_erasing = '', 0.0
  dataset = sources.image_folder(str(tmp_path))
  rgb = _first(trainer.train_batches(c, dataset, local_batch=2, channels=3), 1)[0]
  gray = next(trainer.eval_batches(c, dataset, 'test', local_batch=2, channels=1))
  assert rgb['image'].shape == (2, 32, 32, 3) and gray['image'].shape == (2, 32, 32, 1)
  np.testing.assert_array_equal(rgb['image'][..., 0], rgb['image'][..., 1])


def test_a_tfrecord_preparation_is_moved_aside_and_prepared_in_array_record(tmp_path):
  """A dataset prepared by tf.data-era versions (TFRecord only) is kept, moved aside, and prepared
  again in ArrayRecord from the same manual dir; then it trains through the pipeline."""
  import tensorflow_datasets as tfds
  from imagenet_fixture import build_tiny_imagenet

  from tpm_jax.data import prepare
  data_dir, manual_dir = build_tiny_imagenet(tmp_path, file_format='tfrecord', num_classes=2, train_per_class=4,
                                             num_val=4, size=48)
  old = tfds.builder('imagenet2012', data_dir=data_dir)
  assert old.is_prepared() and not prepare.is_prepared(old)
  old_files = sorted(os.listdir(old.data_dir))
  c = deit.get_config('smoke')
  c.dataset.data_dir, c.dataset.manual_dir = data_dir, manual_dir
  dataset = input_pipeline.get_dataset(c.dataset)
  assert prepare.is_prepared(tfds.builder('imagenet2012', data_dir=data_dir))
  assert sorted(os.listdir(f'{old.data_dir}.tfrecord')) == old_files  # nothing deleted
  assert dataset.num_examples('train') == 8
  assert next(trainer.train_batches(c, dataset, local_batch=4))['image'].shape == (4, 32, 32, 3)


def test_folder_entries_that_are_not_files_are_not_examples(tmp_path):
  """A dangling symlink or a directory named like an image is not listed (the start-up checks skip them too)."""
  from skimage import data
  cls = tmp_path / 'train' / 'a'
  os.makedirs(cls)
  Image.fromarray(data.astronaut()[:64, :64]).save(cls / 'x.jpg')
  os.symlink(tmp_path / 'gone.jpg', cls / 'dangling.jpg')
  os.makedirs(cls / 'folder.jpg')
  dataset = sources.image_folder(str(tmp_path))
  assert dataset.num_examples('train') == 1 and dataset.source('train')[0]['name'] == str(cls / 'x.jpg')
  os.remove(cls / 'x.jpg')  # gone while a run reads: one line naming it
  with pytest.raises(input_pipeline.DataError, match=r'x.jpg: cannot be read \(No such file or directory\)'):
    dataset.source('train')[0]


def test_worker_processes_exit_when_the_trainer_is_killed(image_folder):
  """Ctrl-C to the process group while the Grain workers start (before ``_worker_init`` ignores it)
  leaves them unharmed, with no traceback; kill -9 of the process that reads with workers: its Grain
  workers do not live on as orphans."""
  import signal
  import time
  code = f"""
import signal, sys, time
signal.signal(signal.SIGINT, lambda *a: print('SIGINT', flush=True))  # the trainer's handler stands in
print('ARMED', flush=True)
import os
from tpm_jax import trainer
from configs import deit
from tpm_jax.data import input_pipeline
if __name__ == '__main__':
  c = deit.get_config('smoke'); c.dataset.image_folder = {image_folder!r}; c.dataset.workers = 2
  it = trainer.train_batches(c, input_pipeline.get_dataset(c.dataset), local_batch=4)
  input_pipeline.next_batch(it)
  input_pipeline.next_batch(it)
  print('READY', flush=True)
  time.sleep(600)
"""
  p = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True)
  assert p.stdout.readline().strip() == 'ARMED'
  children = lambda pid: [int(c) for t in os.listdir(f'/proc/{pid}/task')
                          for c in open(f'/proc/{pid}/task/{t}/children').read().split()]
  spawned = lambda: [w for w in children(p.pid) if b'spawn_main' in open(f'/proc/{w}/cmdline', 'rb').read()]
  deadline = time.time() + 60
  while len(spawned()) < 2 and time.time() < deadline:  # Ctrl-C, again and again, as the workers start
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(0.05)
  for _ in range(40):
    os.killpg(p.pid, signal.SIGINT)
    time.sleep(0.05)
  lines = ['']
  while lines[-1] != 'READY' and (lines == [''] or lines[-1]):
    lines.append(p.stdout.readline().strip())
  if lines[-1] != 'READY':
    p.kill()
  assert lines[-1] == 'READY' and 'SIGINT' in lines, (lines, p.stderr.read()[-2000:])  # saw Ctrl-C, read on
  workers = spawned()
  assert len(workers) >= 2
  os.kill(p.pid, signal.SIGKILL)
  p.wait()
  deadline = time.time() + 60
  alive = lambda: [w for w in workers if os.path.exists(f'/proc/{w}') and
                   open(f'/proc/{w}/stat').read().split(')')[-1].split()[0] != 'Z']
  while alive() and time.time() < deadline:
    time.sleep(0.2)
  assert not alive(), alive()
  err = p.stderr.read()
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err

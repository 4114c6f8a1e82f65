"""Data-side bad input, caught at start-up with one line naming the field or file (exit code 2
from train.py, nothing written), and images that fail at run time named by their path
(``DataError``). Real files throughout: image folders of JPEGs cut from scikit-image's photos, and
the tiny ``imagenet2012`` the real TFDS builder prepares (tests/imagenet_fixture.py)."""
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import deit
from tpm_jax import trainer
from tpm_jax.config import ConfigError
from tpm_jax.data import input_pipeline
from tpm_jax.data.input_pipeline import DataError
from tpm_jax.preflight import validate_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {'train': 4, 'validation': 3}  # images per class


def _write_folder(root, splits=SPLITS, classes=2):
  """root/split/class<k>/<i>.jpg: 64x64 crops of a different photo per class."""
  from skimage import data
  photos = [data.astronaut(), data.coffee(), data.chelsea()]
  rs = np.random.RandomState(0)
  for split, n in splits.items():
    for k in range(classes):
      os.makedirs(os.path.join(root, split, f'class{k}'), exist_ok=True)
      for i in range(n):
        y, x = rs.randint(0, 300), rs.randint(0, 300)
        Image.fromarray(photos[k][y:y + 64, x:x + 64]).save(os.path.join(root, split, f'class{k}', f'{i}.jpg'))
  return str(root)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return _write_folder(tmp_path_factory.mktemp('folder'))


@pytest.fixture
def own_folder(folder, tmp_path):
  """A copy of the folder to spoil."""
  return shutil.copytree(folder, str(tmp_path / 'folder'))


def _config(folder=None, **changes):
  c = deit.get_config('smoke')
  if folder:
    c.dataset.image_folder = folder
  else:
    c.dataset.name, c.dataset.eval_split = 'mnist', 'test'  # not prepared here: only the values are checked
  c.update_from_flattened_dict(changes)
  return c


def _validate(c):
  validate_train_config(c, num_devices=jax.device_count())


def _train_py(folder, workdir, *args):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'train.py'), '--config', os.path.join(ROOT, 'configs/deit.py') + ':smoke',
       f'--config.dataset.image_folder={folder}', '--workdir', str(workdir), *args],
      env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)


def _assert_refused(res, workdir, line):
  assert res.returncode == 2, res.stderr[-2000:]
  errors = [l for l in res.stderr.splitlines() if l.startswith('error:')]
  assert errors == [line], res.stderr[-2000:]
  assert 'Traceback' not in res.stderr
  assert not os.path.exists(workdir)


# ----------------------------------------------------------------------------------------------
# Start-up: train.py, exit code 2, one line, no workdir
# ----------------------------------------------------------------------------------------------
def test_eval_slice_larger_than_split_is_refused_before_anything_is_written(folder, tmp_path):
  res = _train_py(folder, tmp_path / 'run', '--config.dataset.eval_split=validation[:2000]')
  _assert_refused(res, tmp_path / 'run', (
      f"error: dataset.eval_split='validation[:2000]' is not accepted: expected a split of image folder {folder}: "
      'train (8 examples), validation (6 examples); or a slice of one, like train[:50%] '
      '(Requested slice [:2000] incompatible with 6 examples.)'))


def test_empty_class_folder_is_refused_before_anything_is_written(own_folder, tmp_path):
  os.makedirs(os.path.join(own_folder, 'train', 'class2'))
  res = _train_py(own_folder, tmp_path / 'run')
  _assert_refused(res, tmp_path / 'run', (
      f"error: dataset.image_folder='{own_folder}' is not accepted: expected a folder of <split>/<class>/ folders "
      f"holding .jpg, .jpeg, .png images ({own_folder}/train/class2 has no images)"))


# ----------------------------------------------------------------------------------------------
# Start-up, in process: splits and slices, folder layout, one image per class
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('field, spec, reason', [
    ('eval_split', 'test', ''),  # no such split
    ('eval_split', 'Validation', ''),
    ('train_split', 'train[100000:]', r' \(Requested slice \[100000:8\] incompatible with 8 examples.\)'),
    ('train_split', 'train[8:]', r' \(train\[8:\] selects 0 examples\)'),
    ('train_split', 'train[5:2]', r' \(train\[5:2\] selects 0 examples\)'),
    ('eval_split', 'validation[:abc]', r" \(Error parsing split 'validation\[:abc\]'.*\)"),
], ids=lambda v: str(v))
def test_unknown_split_or_slice_outside_a_folder_split_is_refused(folder, field, spec, reason):
  with pytest.raises(ConfigError) as e:
    _validate(_config(folder, **{f'dataset.{field}': spec}))
  listing = r'train \(8 examples\), validation \(6 examples\); or a slice of one, like train\[:50%\]'
  assert e.match(rf"^dataset.{field}='{re.escape(spec)}' is not accepted: expected a split of image "
                 rf'folder {folder}: {listing}{reason}$')
  assert '\n' not in str(e.value)


def test_slices_of_folder_splits_are_accepted_and_read(folder):
  c = _config(folder, **{'dataset.train_split': 'train[:50%]+validation', 'dataset.eval_split': 'validation[1:5]'})
  _validate(c)
  dataset = input_pipeline.get_dataset(c.dataset)
  assert dataset.num_examples(c.dataset.train_split) == 4 + 6
  batches = list(trainer.eval_batches(c, dataset, c.dataset.eval_split, local_batch=8))
  assert [int(b['mask'].sum()) for b in batches] == [4]
  whole = next(trainer.eval_batches(c, dataset, 'validation', local_batch=8))
  np.testing.assert_array_equal(batches[0]['image'][:4], whole['image'][1:5])


@pytest.mark.parametrize('spoil, says', [
    (lambda root: shutil.rmtree(os.path.join(root, 'validation', 'class1')) or shutil.rmtree(
        os.path.join(root, 'validation', 'class0')), '{root}/validation has no class folders'),
    (lambda root: [os.remove(os.path.join(root, 'train', 'class1', f'{i}.jpg')) for i in range(4)] and open(
        os.path.join(root, 'train', 'class1', 'notes.txt'), 'w').write('x'), '{root}/train/class1 has no images'),
], ids=['split_without_classes', 'class_without_images'])
def test_folder_split_without_classes_or_images_is_refused(own_folder, spoil, says):
  spoil(own_folder)
  with pytest.raises(ConfigError, match='^' + rf"dataset.image_folder='{own_folder}' is not accepted: expected a "
                     rf'folder of <split>/<class>/ folders holding .jpg, .jpeg, .png images \({says.format(root=own_folder)}\)$'):
    _validate(_config(own_folder))


def _truncate(path):
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])


def _fake(path):
  open(path, 'wb').write(b'<html>a web page saved as .jpg</html>')


@pytest.mark.parametrize('spoil, reason', [
    (_truncate, 'the file is truncated'),
    (_fake, 'not JPEG, PNG, GIF or BMP data'),
], ids=['truncated_jpeg', 'fake_jpeg'])
def test_undecodable_first_image_of_a_class_is_refused_at_start(own_folder, spoil, reason):
  bad = os.path.join(own_folder, 'validation', 'class1', '0.jpg')
  spoil(bad)
  with pytest.raises(ConfigError, match=rf"^dataset.image_folder='{own_folder}' is not accepted: expected decodable "
                     rf'.jpg, .jpeg, .png images \({bad}: not a decodable image \({reason}\)\)$'):
    _validate(_config(own_folder))


def test_model_with_fewer_classes_than_the_folder_is_refused(folder):
  with pytest.raises(ConfigError, match=rf'^model.num_classes=1 is not accepted: expected at least the 2 classes '
                     rf'of image folder {folder} \(class0, class1\)$'):
    _validate(_config(folder, **{'model.num_classes': 1}))


@pytest.fixture(scope='module')
def imagenet_manual(tmp_path_factory):
  from imagenet_fixture import make_imagenet_manual_dir
  manual = str(tmp_path_factory.mktemp('imagenet') / 'manual')
  make_imagenet_manual_dir(manual, num_classes=2, train_per_class=4, num_val=4, size=32)
  return manual


def _imagenet(manual, data_dir, **changes):
  c = deit.get_config('smoke')
  c.dataset.name, c.dataset.manual_dir, c.dataset.data_dir = 'imagenet2012', manual, str(data_dir)
  c.update_from_flattened_dict(changes)
  return c


def test_tfds_split_prepared_only_at_start_is_checked_before_the_workdir(imagenet_manual, tmp_path):
  """Not prepared yet: its split sizes are unknown to the start-up checks; get_builder prepares it
  and checks them, before the workdir is written. Then, prepared, the start-up checks see them."""
  c = _imagenet(imagenet_manual, tmp_path / 'tfds', **{'dataset.eval_split': 'test'})
  listing = r'train \(8 examples\), validation \(4 examples\); or a slice of one, like train\[:50%\]'
  match = rf"^dataset.eval_split='test' is not accepted: expected a split of imagenet2012: {listing}$"
  with pytest.raises(ConfigError, match=match):
    trainer.train_and_evaluate(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
  with pytest.raises(ConfigError, match=match):  # prepared now: refused by validate_train_config itself
    _validate(c)
  with pytest.raises(ConfigError, match=rf"^dataset.eval_split='validation\[:2000\]' is not accepted: expected a "
                     rf'split of imagenet2012: {listing} \(Requested slice \[:2000\] incompatible with 4 examples.\)$'):
    _validate(_imagenet(imagenet_manual, tmp_path / 'tfds', **{'dataset.eval_split': 'validation[:2000]'}))
  _validate(_imagenet(imagenet_manual, tmp_path / 'tfds', **{'dataset.eval_split': 'validation[:50%]'}))


# ----------------------------------------------------------------------------------------------
# Bad values accepted silently before
# ----------------------------------------------------------------------------------------------
BAD_VALUES = [
    ({'total_steps': -5}, r'total_steps=-5 is not accepted: expected an int >= 0 \(0: from num_epochs\)'),
    ({'total_steps': 0, 'num_epochs': -1.0}, r'num_epochs=-1.0 is not accepted: expected a number >= 0'),
    ({'optim.lr': -1.0}, r'optim.lr=-1.0 is not accepted: expected a float > 0'),
    ({'optim.lr': 0.0}, r'optim.lr=0.0 is not accepted: expected a float > 0'),
    ({'optim.min_lr': -1e-6}, r'optim.min_lr=-1e-06 is not accepted: expected a float >= 0'),
    ({'optim.ema_decay': 2.0}, r'optim.ema_decay=2.0 is not accepted: expected a float in \[0, 1\) \(0: no EMA\)'),
    ({'optim.ema_decay': 1.0}, r'optim.ema_decay=1.0 is not accepted: expected a float in \[0, 1\)'),
    ({'optim.grad_clip': -1.0}, r'optim.grad_clip=-1.0 is not accepted: expected a float >= 0 \(0: no clipping\)'),
    ({'optim.weight_decay': -0.05}, r'optim.weight_decay=-0.05 is not accepted: expected a float >= 0'),
    ({'optim.warmup_epochs': -1.0}, r'optim.warmup_epochs=-1.0 is not accepted: expected a number >= 0'),
    ({'optim.b2': 1.0}, r'optim.b2=1.0 is not accepted: expected a float in \[0, 1\)'),
    ({'distill.alpha': 1.5}, r'distill.alpha=1.5 is not accepted: expected a float in \[0, 1\]'),
    ({'distill.alpha': -0.1}, r'distill.alpha=-0.1 is not accepted: expected a float in \[0, 1\]'),
    ({'aug.label_smoothing': 1.0}, r'aug.label_smoothing=1.0 is not accepted: expected a float in \[0, 1\)'),
    ({'aug.mixup': -0.8}, r'aug.mixup=-0.8 is not accepted: expected a float >= 0'),
    ({'aug.random_erasing': 1.5}, r'aug.random_erasing=1.5 is not accepted: expected a probability in \[0, 1\]'),
    ({'aug.eval_crop_pct': 0.0}, r'aug.eval_crop_pct=0.0 is not accepted: expected a float in \(0, 1\]'),
    ({'aug.crop_scale': (0.9, 0.2)}, r'aug.crop_scale=\(0.9, 0.2\) is not accepted: expected two area fractions'),
    ({'aug.randaugment': 'rand-x9'}, r"aug.randaugment='rand-x9': unknown part 'x9'"),
    ({'aug.std': (0.2, 0.0, 0.2)}, r'aug.std=\(0.2, 0.0, 0.2\) is not accepted: expected one number per image channel'),
    ({'aug.mean': (0.5, 0.5)}, r'aug.mean=\(0.5, 0.5\) is not accepted: expected one number per image channel \(3\)'),
    ({'eval_every_steps': -1}, r'eval_every_steps=-1 is not accepted: expected an int >= 0'),
    ({'dataset.threads': 0}, r'dataset.threads=0 is not accepted: expected a positive int'),
    ({'dataset.workers': -1}, r'dataset.workers=-1 is not accepted: expected a non-negative int'),
]


@pytest.mark.parametrize('changes, match', BAD_VALUES, ids=[next(iter(c)) + '=' + str(next(iter(c.values())))
                                                           for c, _ in BAD_VALUES])
def test_bad_value_is_refused_with_one_line_naming_the_field(changes, match):
  with pytest.raises(ConfigError, match='^' + match) as e:
    _validate(_config(**changes))
  assert '\n' not in str(e.value)


def test_boundary_values_are_accepted():
  _validate(_config(**{'optim.ema_decay': 0.0, 'optim.grad_clip': 0.0, 'optim.weight_decay': 0.0, 'distill.alpha': 1.0,
                       'optim.warmup_epochs': 0.0, 'aug.mixup': 0.0, 'aug.cutmix': 0.0, 'aug.mean': (0.5,),
                       'aug.std': (0.5,), 'aug.randaugment': '', 'total_steps': 0, 'num_epochs': 0.5}))


# ----------------------------------------------------------------------------------------------
# Run time: images that do not decode are named by their path; grayscale + alpha is converted
# ----------------------------------------------------------------------------------------------
def test_truncated_jpeg_in_a_folder_stops_training_with_one_line_naming_the_file(own_folder, tmp_path):
  bad = os.path.join(own_folder, 'train', 'class1', 'z_broken.jpg')  # not the first of its class: passes start-up
  shutil.copy(os.path.join(own_folder, 'train', 'class1', '0.jpg'), bad)
  _truncate(bad)
  res = _train_py(own_folder, tmp_path / 'run', '--config.batch_size=8')  # (6 steps of 8: every image is read)
  assert res.returncode == 1, res.stderr[-2000:]
  assert [l for l in res.stderr.splitlines() if l.startswith('error:')] == [
      f'error: {bad}: not a decodable image (the file is truncated)'], res.stderr[-2000:]
  assert 'Traceback' not in res.stderr


def test_fake_jpeg_in_an_eval_split_is_named_by_its_path(own_folder):
  bad = os.path.join(own_folder, 'validation', 'class0', 'z_fake.jpg')
  _fake(bad)
  c = _config(own_folder)
  dataset = input_pipeline.get_dataset(c.dataset)
  with pytest.raises(DataError) as e:
    list(trainer.eval_batches(c, dataset, 'validation', local_batch=2))
  assert str(e.value) == f'{bad}: not a decodable image (not JPEG, PNG, GIF or BMP data)'  # (Grain adds a note)


def test_grayscale_with_alpha_png_is_converted_and_trains(own_folder, tmp_path):
  from skimage import data
  gray = data.camera()[100:164, 200:264]
  alpha = np.full_like(gray, 200)
  for split in ('train', 'validation'):  # the first image of class0: the one decoded at start-up
    os.remove(os.path.join(own_folder, split, 'class0', '0.jpg'))
    Image.fromarray(np.stack([gray, alpha], -1)).save(os.path.join(own_folder, split, 'class0', '0.png'))  # mode LA
  c = _config(own_folder, **{'aug.randaugment': '', 'aug.random_erasing': 0.0, 'reduction.method': 'none',
                             'multiscale.method': 'none'})  # (the plain backbone compiles fastest)
  _validate(c)
  dataset = input_pipeline.get_dataset(c.dataset)
  for channels in (3, 1):
    batch = next(trainer.eval_batches(c, dataset, 'validation', local_batch=6, channels=channels))
    assert batch['image'].shape == (6, 32, 32, channels) and batch['mask'].sum() == 6
  # in RGB, the grayscale image is the one whose three channels are equal
  rgb = next(trainer.eval_batches(c, dataset, 'validation', local_batch=6))['image']
  assert sum(np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 0], im[..., 2]) for im in rgb) == 1
  c.total_steps, c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 1, 1, 0, 1
  c.batch_size = 8  # (at most the split's 8 images)
  final = trainer.train_and_evaluate(c, str(tmp_path / 'run'))
  assert final['step'] == 1 and np.isfinite(final['loss'])

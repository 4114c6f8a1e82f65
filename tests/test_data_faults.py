"""Damaged or unusual data, each one line naming the file or field and what is accepted, never a
traceback and never silently wrong pixels or labels. Real files throughout: 16-bit PNGs and TIFFs
written by PIL (and a 16-bit RGB PNG written byte by byte), folders with real symlink loops, and the
tiny ``imagenet2012`` the real TFDS builder prepares (tests/imagenet_fixture.py), copied and damaged."""
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import deit
from tpm_jax.config import ConfigError
from tpm_jax.data import sources, transforms
from tpm_jax.data.checks import check_dataset
from tpm_jax.data.sources import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAMP = (np.arange(256) * 257).astype(np.uint16)  # 0..65535; its 8-bit reading is 0..255


def _png16(a) -> bytes:
  """A 16-bit PNG of uint16 ``a``, written byte by byte: (H, W, 3) RGB or (H, W, 4) RGBA."""
  a = np.asarray(a, np.uint16)
  h, w, c = a.shape
  raw = b''.join(b'\x00' + row.astype('>u2').tobytes() for row in a.reshape(h, w * c))
  chunk = lambda kind, data: struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0))
          + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def _saved(img: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# 16-bit images: scaled to 8 bits (value >> 8), not clipped at 255
# ----------------------------------------------------------------------------------------------
def test_a_16_bit_grayscale_png_ramp_decodes_to_the_8_bit_ramp():
  data = _saved(Image.fromarray(RAMP[None].repeat(3, 0)), 'PNG')  # PIL writes a 16-bit grayscale PNG
  assert Image.open(io.BytesIO(data)).mode == 'I;16'
  gray = np.asarray(transforms.decode(data, 1))
  rgb = np.asarray(transforms.decode(data, 3))
  np.testing.assert_array_equal(gray[0], np.arange(256))  # (convert('L') made it 0, 255, 255, ...: white)
  np.testing.assert_array_equal(rgb[1], np.repeat(np.arange(256)[:, None], 3, 1))
  assert np.all(np.diff(gray[0].astype(int)) == 1)


def test_a_big_endian_16_bit_tiff_is_scaled_too():
  img = Image.frombytes('I;16B', (256, 2), RAMP[None].repeat(2, 0).astype('>u2').tobytes())
  data = _saved(img, 'TIFF')
  assert Image.open(io.BytesIO(data)).mode == 'I;16B'
  np.testing.assert_array_equal(np.asarray(transforms.decode(data, 1))[0], np.arange(256))


def test_16_bit_rgb_and_rgba_pngs_decode_to_their_high_bytes():
  """(PIL itself reads these as 8-bit RGB / RGBA; checked here so that it stays so.)"""
  rgb = np.stack([RAMP, RAMP[::-1], RAMP // 2], -1)[None].repeat(2, 0)
  for a in (rgb, np.concatenate([rgb, np.full_like(rgb[..., :1], 65535)], -1)):
    np.testing.assert_array_equal(np.asarray(transforms.decode(_png16(a), 3)), (rgb >> 8).astype(np.uint8))


@pytest.mark.parametrize('mode, kind', [('F', 'floating-point'), ('I', '32-bit integer')])
def test_float_and_32_bit_images_are_refused_in_one_line(mode, kind):
  img = Image.fromarray(np.linspace(0, 1000, 64, dtype=np.float32 if mode == 'F' else np.int32).reshape(8, 8))
  data = _saved(img, 'TIFF')
  assert Image.open(io.BytesIO(data)).mode == mode
  with pytest.raises(DataError) as e:
    transforms.decode(data, 3)
  assert str(e.value) == (f'a {kind} image (PIL mode {mode}, TIFF) has no known value range; accepted: 1-, 8- or '
                          '16-bit grayscale, RGB or RGBA images (PNG or JPEG)')


def _folder(root, first_of_class0=None):
  """root/{train,validation}/class{0,1}/*.png, grayscale crops of scikit-image's camera; class0's first
  image (0.png) replaced by ``first_of_class0(path, 8-bit array)`` when given."""
  from skimage import data
  camera = data.camera()
  for split in ('train', 'validation'):
    for k in range(2):
      os.makedirs(os.path.join(root, split, f'class{k}'))
      for i in range(2):
        crop = camera[150 + 40 * i + 100 * k:198 + 40 * i + 100 * k, 180 + 50 * i:236 + 50 * i]
        path = os.path.join(root, split, f'class{k}', f'{i}.png')
        if first_of_class0 and k == 0 and i == 0:
          first_of_class0(path, crop)
        else:
          Image.fromarray(crop).save(path)
  return str(root)


def _data(**fields):
  """``config.dataset`` as the start-up checks read it."""
  return ml_collections.ConfigDict(dict(dict(name='imagenet2012', data_dir=None, manual_dir=None, image_folder=None,
                                             train_split='train', eval_split='validation'), **fields))


def test_a_16_bit_png_gives_the_pixels_of_its_8_bit_original_in_train_and_eval(tmp_path):
  """The same image stored as 16-bit (each value x 257): start-up accepts a folder of it, and the train and
  eval transforms (one decoder) give the pixels of the 8-bit file, under the same random draws."""
  folder = _folder(tmp_path / 'sixteen', lambda path, crop: Image.fromarray(crop.astype(np.uint16) * 257).save(path))
  path = os.path.join(folder, 'train', 'class0', '0.png')
  assert Image.open(path).mode == 'I;16'
  check_dataset(_data(image_folder=folder), num_classes=2)
  sixteen = sources.image_folder(folder).source('train')[0]['image']
  eight = _saved(Image.fromarray((np.asarray(Image.open(path)) >> 8).astype(np.uint8)), 'PNG')
  aug = deit.get_config('smoke').aug
  for channels in (3, 1):
    train, evals = transforms.train_transform(aug, 32, channels), transforms.eval_transform(aug, 32, channels)
    for seed in range(3):
      a = train(eight, transforms.example_randomness(seed, 0))
      b = train(sixteen, transforms.example_randomness(seed, 0))
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['erase'], b['erase'])
    np.testing.assert_array_equal(evals(eight), evals(sixteen))
    assert evals(sixteen).std() > 10  # (clipped at 255 it was almost all white)


def test_a_float_image_first_in_its_class_is_refused_at_start_up(tmp_path):
  """The start-up decode check agrees with the pipeline's decoder: an image it would refuse is refused
  there, naming the file (a TIFF named .png is read by its content)."""
  folder = _folder(tmp_path / 'f', lambda path, crop: Image.fromarray(crop.astype(np.float32)).save(path, format='TIFF'))
  bad = os.path.join(folder, 'train', 'class0', '0.png')
  with pytest.raises(ConfigError) as e:
    check_dataset(_data(image_folder=folder))
  assert str(e.value) == (f"dataset.image_folder='{folder}' is not accepted: expected decodable .jpg, .jpeg, .png "
                          f'images ({bad}: not a decodable image (a floating-point image (PIL mode F, TIFF) has no '
                          'known value range; accepted: 1-, 8- or 16-bit grayscale, RGB or RGBA images (PNG or JPEG)))')


# ----------------------------------------------------------------------------------------------
# Image folders that cannot be listed: a symlink loop, an unreadable folder
# ----------------------------------------------------------------------------------------------
def _train_py(workdir, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--config',
                         os.path.join(ROOT, 'configs/deit.py') + ':smoke', '--workdir', str(workdir), *args],
                        env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT), capture_output=True, text=True,
                        timeout=300)


def _assert_refused(res, workdir, says):
  assert res.returncode == 2, res.stderr[-3000:]
  errors = res.stderr.strip().splitlines()
  assert len(errors) == 1 and errors[0].startswith('error: '), res.stderr[-3000:]
  assert says in errors[0], errors[0]
  assert not os.path.exists(workdir)
  return errors[0]


LISTING = 'is not accepted: expected a folder of <split>/<class>/ folders holding .jpg, .jpeg, .png images'


@pytest.mark.parametrize('where', ['split', 'class', 'image'])
def test_a_symlink_loop_in_an_image_folder_is_one_line_naming_it(tmp_path, where):
  folder = _folder(tmp_path / 'loop')
  parent = {'split': folder, 'class': os.path.join(folder, 'train'),
            'image': os.path.join(folder, 'train', 'class1')}[where]
  loop = os.path.join(parent, 'z_loop.png' if where == 'image' else 'z_loop')
  os.symlink(loop + '_back', loop)  # loop -> loop_back -> loop
  os.symlink(loop, loop + '_back')
  message = f"dataset.image_folder='{folder}' {LISTING} ({loop} cannot be read (Too many levels of symbolic links))"
  for read in (sources.image_folder, lambda f: check_dataset(_data(image_folder=f))):
    with pytest.raises(ConfigError) as e:
      read(folder)
    assert str(e.value) in (message, message.replace(loop, loop + '_back'))
  if where == 'class':
    res = _train_py(tmp_path / 'run', f'--config.dataset.image_folder={folder}')
    _assert_refused(res, tmp_path / 'run', 'Too many levels of symbolic links')


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads every folder whatever its permissions')
def test_an_unreadable_class_folder_is_one_line_naming_it(tmp_path):
  folder = _folder(tmp_path / 'perm')
  locked = os.path.join(folder, 'validation', 'class1')
  os.chmod(locked, 0)
  try:
    with pytest.raises(ConfigError, match=f'^dataset.image_folder=.*{LISTING} \\({locked} cannot be read '
                                          r'\(Permission denied\)\)$'):
      sources.image_folder(folder)
  finally:
    os.chmod(locked, 0o755)


# ----------------------------------------------------------------------------------------------
# Damaged TFDS data: a truncated or deleted ArrayRecord shard, a corrupt dataset_info.json
# ----------------------------------------------------------------------------------------------
VERSION_DIR = os.path.join('imagenet2012', '5.1.0')
SHARD = 'imagenet2012-{}.array_record-00000-of-00001'


@pytest.fixture
def damaged(tiny_imagenet, tmp_path):
  """A copy of the tiny imagenet2012 to damage: (data_dir, manual_dir, version folder)."""
  data_dir = shutil.copytree(tiny_imagenet, str(tmp_path / 'tfds'))
  return data_dir, os.path.join(os.path.dirname(tiny_imagenet), 'manual'), os.path.join(data_dir, VERSION_DIR)


def _truncate(path):
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])


def _reprepare(version_dir, data_dir):
  return (f'the prepared dataset is damaged: delete {version_dir} and prepare it again (python -m '
          f'tpm_jax.data.prepare --name imagenet2012 --data_dir {data_dir} --manual_dir DIR)')


DAMAGES = {
    'truncated_train_shard': (lambda v: _truncate(os.path.join(v, SHARD.format('train'))),
                              lambda v: f'imagenet2012 train: {os.path.join(v, SHARD.format("train"))} cannot be read '
                                        '('),  # (the ArrayRecord reader's words)
    'deleted_validation_shard': (lambda v: os.remove(os.path.join(v, SHARD.format('validation'))),
                                 lambda v: f'imagenet2012 validation: {os.path.join(v, SHARD.format("validation"))} '
                                           'cannot be read (no such file); '),
    'empty_dataset_info': (lambda v: open(os.path.join(v, 'dataset_info.json'), 'w').close(),
                           lambda v: f"dataset.name='imagenet2012': {os.path.join(v, 'dataset_info.json')} is not "
                                     'valid JSON (Expecting value: line 1 column 1 (char 0)); '),
    'truncated_dataset_info': (lambda v: _truncate(os.path.join(v, 'dataset_info.json')),
                               lambda v: f"dataset.name='imagenet2012': {os.path.join(v, 'dataset_info.json')} is "
                                         'not valid JSON ('),
}


@pytest.mark.parametrize('damage', list(DAMAGES))
def test_damaged_tfds_data_is_refused_at_start_up_in_one_line(damaged, damage, tmp_path):
  data_dir, manual_dir, version_dir = damaged
  check_dataset(_data(data_dir=data_dir, manual_dir=manual_dir), num_classes=1000)  # whole, it passes
  spoil, says = DAMAGES[damage]
  spoil(version_dir)
  with pytest.raises(ConfigError) as e:
    check_dataset(_data(data_dir=data_dir, manual_dir=manual_dir), num_classes=1000)
  message = str(e.value)
  assert '\n' not in message and message.startswith(says(version_dir)), message
  assert message.endswith(_reprepare(version_dir, data_dir)), message
  # the real command: exit code 2, one line, no workdir
  res = _train_py(tmp_path / 'run', f'--config.dataset.data_dir={data_dir}', f'--config.dataset.manual_dir={manual_dir}')
  assert _assert_refused(res, tmp_path / 'run', says(version_dir)) == f'error: {message}'


def test_a_corrupt_dataset_info_is_one_line_from_get_dataset_too(damaged):
  data_dir, manual_dir, version_dir = damaged
  open(os.path.join(version_dir, 'dataset_info.json'), 'w').write('{"name": "imagenet2012", "vers')
  with pytest.raises(ConfigError, match=r"^dataset.name='imagenet2012': .*dataset_info.json is not valid JSON "):
    sources.get_dataset(_data(data_dir=data_dir, manual_dir=manual_dir))


def _corrupt_a_middle_record(shard):
  """Zero 16 bytes of ``shard`` where a record between its first and last one then fails its checksum."""
  from array_record.python import array_record_module
  original = open(shard, 'rb').read()
  for offset in range(1024, len(original) // 2, 256):
    spoiled = bytearray(original)
    spoiled[offset:offset + 16] = bytes(16)
    open(shard, 'wb').write(spoiled)
    reader = array_record_module.ArrayRecordReader(shard)
    failing = []
    for i in range(reader.num_records()):
      try:
        reader.read([i])
      except RuntimeError:
        failing.append(i)
    reader.close()
    if failing and 0 not in failing and reader.num_records() - 1 not in failing:
      return failing[0]
  raise AssertionError('no offset spoils a middle record only')


def test_a_corrupt_record_read_at_run_time_is_a_data_error_naming_its_shard(damaged):
  """Past the start-up check (first and last records fine), a record that fails its checksum is a DataError
  naming its shard (which stops the pipeline; train.py prints it as one line), not the reader's RuntimeError."""
  data_dir, manual_dir, version_dir = damaged
  shard = os.path.join(version_dir, SHARD.format('train'))
  index = _corrupt_a_middle_record(shard)
  check_dataset(_data(data_dir=data_dir, manual_dir=manual_dir), num_classes=1000)
  source = sources.get_dataset(_data(data_dir=data_dir, manual_dir=manual_dir)).source('train')
  for i in range(index):
    source[i]
  with pytest.raises(DataError) as e:
    source[index]
  assert str(e.value).startswith(f'imagenet2012 example {index}: {shard} cannot be read (Corrupted Riegeli/records '
                                 'file: '), str(e.value)
  assert str(e.value).endswith(_reprepare(version_dir, data_dir)) and '\n' not in str(e.value)


# ----------------------------------------------------------------------------------------------
# Labels outside model.num_classes
# ----------------------------------------------------------------------------------------------
def test_labels_beyond_the_model_classes_are_refused_at_start_up(tiny_imagenet, tmp_path):
  """The tiny imagenet2012 declares 1000 classes and uses labels 0..3: a 4-class model is accepted, a
  1- or 3-class one refused (it trained with loss -0.0 and evaluated NaN)."""
  manual_dir = os.path.join(os.path.dirname(tiny_imagenet), 'manual')
  check_dataset(_data(data_dir=tiny_imagenet, manual_dir=manual_dir), num_classes=4)
  for num_classes in (1, 3):
    with pytest.raises(ConfigError, match=rf'^model.num_classes={num_classes} is not accepted: expected more than '
                       r'the largest label of imagenet2012 train \(label 3 among its first 48 examples; the dataset '
                       r'declares 1000 classes\)$'):
      check_dataset(_data(data_dir=tiny_imagenet, manual_dir=manual_dir), num_classes=num_classes)
  res = _train_py(tmp_path / 'run', f'--config.dataset.data_dir={tiny_imagenet}',
                  f'--config.dataset.manual_dir={manual_dir}', '--config.model.num_classes=1')
  _assert_refused(res, tmp_path / 'run', 'error: model.num_classes=1 is not accepted: expected more than the '
                  'largest label of imagenet2012 train (label 3 among its first 48 examples')


def test_two_runs_preparing_one_data_dir_take_turns(tiny_imagenet, tmp_path, capsys):
  """Hostile pass 17's PREP: two first runs on one empty data dir prepared the dataset both, and the slower one
  failed renaming its copy into place (exit 1, a line blaming its workdir). Preparing holds a flock on the data
  dir: here the test holds it, as a first process preparing there would; ``python -m tpm_jax.data.prepare``
  waits, saying so, and once the lock is released finds the dataset the first one prepared and prepares nothing
  (its manual dir does not exist: preparing would fail)."""
  import fcntl
  import select
  data_dir = tmp_path / 'tfds'
  data_dir.mkdir()
  fd = os.open(data_dir, os.O_RDONLY)
  fcntl.flock(fd, fcntl.LOCK_EX)

  def waiting():  # started, and waiting for the lock (its stderr, a line at a time, for at most 120 s)
    proc = subprocess.Popen([sys.executable, '-m', 'tpm_jax.data.prepare', '--name', 'imagenet2012', '--data_dir',
                             str(data_dir), '--manual_dir', str(tmp_path / 'no_manual_dir')], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT))
    said = ''
    while 'waiting for it to finish' not in said:
      assert select.select([proc.stderr], [], [], 120)[0] and proc.poll() is None, said
      said += proc.stderr.readline()
    assert said.strip() == f'{data_dir}: another process is preparing a dataset there; waiting for it to finish', said
    return proc
  try:
    stopped = waiting()  # a stop while it waits (or prepares): one line, exit 1 (hostile pass 18's G04: a traceback)
    stopped.send_signal(signal.SIGINT)
    out, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 1 and err == ('error: stopped by SIGINT; the dataset was not prepared (run the same '
                                               'command again)\n'), err
    proc = waiting()
    shutil.copytree(os.path.join(tiny_imagenet, 'imagenet2012'), data_dir / 'imagenet2012')  # what the first prepared
  finally:
    os.close(fd)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert f'imagenet2012: prepared in ArrayRecord in {data_dir}' in out and 'validation (16 examples)' in out
  from tpm_jax.data.prepare import main  # a data dir that is a file (pass 18's G06: an errno dump)
  (tmp_path / 'a_file').write_text('mine')
  assert main(['--name', 'imagenet2012', '--data_dir', str(tmp_path / 'a_file')]) == 2
  assert capsys.readouterr().err == (f'error: dataset.data_dir={tmp_path / "a_file"} is not accepted: it is a file; '
                                     f'expected a folder (TFDS prepares the dataset in it)\n')
  assert (tmp_path / 'a_file').read_text() == 'mine'
  (tmp_path / 'dangling').symlink_to(tmp_path / 'nothing')  # hostile pass 19's PR03, PR04, PR09: errno dumps, the
  (tmp_path / 'has_a_file').mkdir()  # last naming a folder TFDS makes (incomplete.*); PR05: '' said "prepared"
  (tmp_path / 'has_a_file' / 'imagenet2012').write_text('mine')
  for data_dir, says in ((tmp_path / 'dangling', 'it is a link to nothing'),
                         (tmp_path / 'a_file' / 'sub', f'it is inside {tmp_path / "a_file"}, a file'),
                         (tmp_path / 'has_a_file', 'imagenet2012 in it is a file'),
                         ('', None)):
    assert main(['--name', 'imagenet2012', '--data_dir', str(data_dir)]) == 2
    assert capsys.readouterr().err == (f'error: dataset.data_dir={data_dir} is not accepted: {says}; expected a folder '
                                       f'(TFDS prepares the dataset in it)\n' if says else
                                       "error: dataset.data_dir='' is not accepted: expected a folder (or leave it out)\n")
  assert sorted(os.listdir(tmp_path)) == ['a_file', 'dangling', 'has_a_file', 'tfds']  # nothing made
  (tmp_path / 'empty' / 'imagenet2012' / '5.1.0').mkdir(parents=True)  # an empty version folder (pass 19's PR08: it
  assert main(['--name', 'imagenet2012', '--data_dir', str(tmp_path / 'empty')]) == 2  # was said to be prepared)
  assert 'holds no prepared dataset (no splits); remove it' in capsys.readouterr().err
  from tpm_jax.data.sources import get_dataset  # and a run on it: one line (PR08b: a NotImplementedError traceback)
  with pytest.raises(ConfigError, match='holds no prepared dataset'):
    get_dataset(ml_collections.ConfigDict(dict(name='imagenet2012', data_dir=str(tmp_path / 'empty'))))

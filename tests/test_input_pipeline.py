"""The input pipeline on real photos: a local ImageFolder tree, determinism, resumption by position,
eval padding, and grayscale handling."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import deit
from tpm_jax.data import input_pipeline


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  """root/split/class/*.jpg from scikit-image's photos (3 classes, 8 train + 3 validation each)."""
  from skimage import data
  root = tmp_path_factory.mktemp('folder')
  rs = np.random.RandomState(0)
  for label, photo in enumerate([data.astronaut(), data.coffee(), data.chelsea()]):
    for split, n in (('train', 8), ('validation', 3)):
      os.makedirs(root / split / f'class{label}', exist_ok=True)
      for i in range(n):
        y, x = rs.randint(0, photo.shape[0] - 200), rs.randint(0, photo.shape[1] - 200)
        Image.fromarray(photo[y:y + 200, x:x + 200]).save(root / split / f'class{label}' / f'{i}.jpg')
  return str(root)


def _config(root, seed=0):
  c = deit.get_config('smoke')
  c.dataset.image_folder = root
  c.seed = seed
  return c


def _first(it, n):
  return [next(it) for _ in range(n)]


def test_image_folder_batches_are_deterministic_and_resumable(image_folder):
  c = _config(image_folder)
  builder = input_pipeline.get_builder(c.dataset)
  assert input_pipeline.num_examples(builder, 'train') == 24
  a = _first(input_pipeline.train_iterator(c, builder, local_batch=8), 4)
  b = _first(input_pipeline.train_iterator(c, builder, local_batch=8), 4)
  assert a[0]['image'].shape == (8, 32, 32, 3) and a[0]['image'].dtype == np.uint8
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  resumed = _first(input_pipeline.train_iterator(c, builder, local_batch=8, start_batch=2), 2)
  for x, y in zip(a[2:], resumed):
    np.testing.assert_array_equal(x['image'], y['image'])
  other = _first(input_pipeline.train_iterator(_config(image_folder, seed=1), builder, local_batch=8), 1)
  assert not np.array_equal(other[0]['image'], a[0]['image'])


def test_eval_batches_pad_with_a_mask_and_shard_by_process(image_folder):
  c = _config(image_folder)
  builder = input_pipeline.get_builder(c.dataset)
  for count in (1, 2):
    labels = []
    for i in range(count):
      batches = list(input_pipeline.eval_batches(c, builder, 'validation', local_batch=4, process_index=i,
                                                  process_count=count))
      assert all(b['image'].shape == (4, 32, 32, 3) for b in batches)
      assert len(batches) == (3 if count == 1 else 2)  # 9 examples; every process the same number of batches
      labels += [l for b in batches for l, m in zip(b['label'], b['mask']) if m]
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # each example exactly once


def test_grayscale_becomes_three_channels_and_back():
  with tfds.testing.mock_data(num_examples=8):
    c = deit.get_config('smoke')
    c.dataset.name = 'mnist'
    c.aug.randaugment, c.aug.random_erasing = '', 0.0  # (their fill and noise colour the channels)
    builder = input_pipeline.get_builder(c.dataset)
    rgb = next(input_pipeline.train_iterator(c, builder, local_batch=4, channels=3))
    gray = next(input_pipeline.eval_batches(c, builder, 'test', local_batch=4, channels=1))
  assert rgb['image'].shape == (4, 32, 32, 3) and gray['image'].shape == (4, 32, 32, 1)
  np.testing.assert_array_equal(rgb['image'][..., 0], rgb['image'][..., 1])

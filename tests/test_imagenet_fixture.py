"""The tiny offline imagenet2012 built by the real TFDS builder from a hand-made manual dir."""
import collections
import socket

import pytest
from imagenet_fixture import build_tiny_imagenet


def _no_network(*args, **kwargs):
  raise OSError('network access attempted in an offline test')


def test_tiny_imagenet2012_builds_offline(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  for name in ('getaddrinfo', 'create_connection'):
    monkeypatch.setattr(socket, name, _no_network)
  monkeypatch.setattr(socket.socket, 'connect', _no_network)

  num_classes, per_class, num_val, size = 4, 12, 16, 96
  data_dir, _ = build_tiny_imagenet(tmp_path, num_classes=num_classes, train_per_class=per_class,
                                    num_val=num_val, size=size)

  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  assert builder.info.splits['train'].num_examples == num_classes * per_class
  assert builder.info.splits['validation'].num_examples == num_val
  assert 'test' not in builder.info.splits

  # read back through its ArrayRecord data source, as the pipeline reads it
  train = list(tfds.data_source('imagenet2012', data_dir=data_dir, split='train', download=False))
  assert len(train) == num_classes * per_class
  for ex in train:
    assert ex['image'].shape == (size, size, 3) and ex['image'].dtype.name == 'uint8'
  counts = collections.Counter(int(ex['label']) for ex in train)
  assert counts == {c: per_class for c in range(num_classes)}

  val = list(tfds.data_source('imagenet2012', data_dir=data_dir, split='validation', download=False))
  assert len(val) == num_val
  for ex in val:
    assert ex['image'].shape == (size, size, 3)
    assert 0 <= int(ex['label']) < num_classes
    name = ex['file_name']
    assert (name.decode() if isinstance(name, bytes) else name).startswith('ILSVRC2012_val_')

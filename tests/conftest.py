"""Test set-up: CPU only, simulated devices, and timm importable beside the CPU build of torch."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # keep TensorFlow off any GPU
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest


def _define_missing_torchvision_ops():
  """timm imports torchvision; PyPI's torchvision cannot load its C++ ops beside the CPU torch
  build used here ("operator torchvision::nms does not exist"). Declaring the two schemas that
  torchvision's meta registrations look up is enough for timm's model code."""
  import torch
  try:
    torch.ops.torchvision.nms  # noqa: B018
    return
  except (AttributeError, RuntimeError):
    pass
  lib = torch.library.Library('torchvision', 'DEF')
  for schema in ('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
                 'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor'):
    lib.define(schema)
  _define_missing_torchvision_ops.lib = lib  # keep the library alive


@pytest.fixture(scope='session')
def timm():
  torch = pytest.importorskip('torch')
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  _define_missing_torchvision_ops()
  import timm as timm_module
  return timm_module


@pytest.fixture
def rng():
  return np.random.RandomState(0)

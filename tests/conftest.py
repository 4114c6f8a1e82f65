"""Test set-up: CPU only, simulated devices, and timm importable beside the CPU build of torch."""
import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # keep TensorFlow off any GPU
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest


@pytest.fixture(scope='session')
def timm():
  pytest.importorskip('torch')
  from benchmarks.torch_compat import import_timm
  return import_timm()


@pytest.fixture
def rng():
  return np.random.RandomState(0)

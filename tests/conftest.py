"""Test set-up: CPU only, simulated devices, and timm importable beside the CPU build of torch."""
import os
import shutil
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # keep TensorFlow off any GPU
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One XLA compilation cache for the whole run, shared by the pytest workers and every train.py they
# start (most tests train the same smoke model, each in a fresh process): each program compiles once.
# (A test-run setting, made here in the tests, not by the library.)
# The workers inherit the controller's environment, so they all share its directory.
_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), f'tpm_jax_tests_xla_{os.getpid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

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


def pytest_sessionfinish(session):
  if _OWN_CACHE and not hasattr(session.config, 'workerinput'):  # the controller, once every worker is done
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)

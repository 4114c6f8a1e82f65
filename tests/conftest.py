"""Test set-up: CPU only, simulated devices, and timm importable beside the CPU build of torch."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

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
# The suite compiles hundreds of small programs, most run a few times: XLA's CPU backend at
# optimisation level 0 compiles them about 40% faster, and without its newer fusion emitters (the
# elemental ones it used before) half as long again (the numerics are the same operations; the
# benchmarks and users' runs keep XLA's defaults). Inherited by the train.py processes the tests start.
# An XLA that does not know a flag aborts the process: the second is probed once (the controller; the
# workers inherit its environment).
_CODEGEN_FLAG = '--xla_cpu_use_fusion_emitters=false'
if 'XLA_FLAGS' not in os.environ:
  _FLAGS = '--xla_backend_optimization_level=0'
  _FASTER = f'{_FLAGS} {_CODEGEN_FLAG}'
  _probe = subprocess.run([sys.executable, '-c', 'import jax; jax.jit(lambda x: x + 1)(1)'], capture_output=True,
                          env=dict(os.environ, XLA_FLAGS=_FASTER, JAX_PLATFORMS='cpu'), timeout=300)
  os.environ['XLA_FLAGS'] = _FASTER if _probe.returncode == 0 else _FLAGS

import numpy as np
import pytest


@pytest.fixture(scope='session')
def timm():
  pytest.importorskip('torch')
  from benchmarks.torch_compat import import_timm
  return import_timm()


@pytest.fixture
def xla_own_codegen():
  """``compiler_options`` that give one compile XLA's own code generation back where this suite's
  XLA_FLAGS turned its fusion emitters off (for a test of what users' compiles produce: bit-equal
  values of two spellings of one function, the op names a profile reads); {} otherwise."""
  return {'xla_cpu_use_fusion_emitters': True} if _CODEGEN_FLAG in os.environ.get('XLA_FLAGS', '').split() else {}


@pytest.fixture
def tmpfs():
  """``mount(path, size, read_only=False)``: a tmpfs of ``size`` ('150k', '3m') mounted at ``path`` (made if
  missing), for the tests of full and read-only file systems; a skip where mounting is not allowed (it needs
  root). Every mount is undone after the test."""
  mounted = []

  def mount(path, size, read_only=False):
    os.makedirs(path, exist_ok=True)
    options = f'{"ro," if read_only else ""}size={size}'
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)], capture_output=True).returncode:
      pytest.skip('cannot mount a tmpfs here (needs root): this file-system fault is untested on this machine')
    mounted.append(path)
    return path
  yield mount
  for path in reversed(mounted):
    subprocess.run(['umount', '-l', str(path)], capture_output=True)


@pytest.fixture
def rng():
  return np.random.RandomState(0)


def pytest_sessionfinish(session):
  if _OWN_CACHE and not hasattr(session.config, 'workerinput'):  # the controller, once every worker is done
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


@pytest.fixture(autouse=True)
def _stop_signals_restored():
  """A tool's function called in this process (``export.main``, ``sweep.main``) takes SIGINT and
  SIGTERM over (``cli.finished`` ignores them): as they were, after each test."""
  previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  yield
  for s, h in previous.items():
    signal.signal(s, h)


@pytest.fixture
def sigterm_once_written():
  """``send(process, path, delay=0.1)``: once ``path`` (a tool's last output) exists, SIGTERM to the
  process ``delay`` seconds later (while it ends: the hostile pass's S-EVAL-END, S-EXP-END and SWEND-143,
  exit code 143 and no line at 0.05-0.5 s); then its (returncode, stdout, stderr)."""
  def send(p, path, delay=0.1, timeout=600):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and p.poll() is None and time.monotonic() < deadline:
      time.sleep(0.005)
    time.sleep(delay)
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err
  return send


@pytest.fixture(scope='session')
def tiny_imagenet(tmp_path_factory):
  """A TFDS data_dir holding imagenet2012 prepared by the real builder from hand-made tars of real
  photos (4 classes, 12 training images each, 16 validation images; tests/imagenet_fixture.py),
  built once per pytest worker and shared, read-only, by the tests that train on it."""
  from imagenet_fixture import build_tiny_imagenet
  return build_tiny_imagenet(tmp_path_factory.mktemp('tiny_imagenet'), num_classes=4, train_per_class=12,
                             num_val=16)[0]


@pytest.fixture(scope='session')
def four_steps(tmp_path_factory, tiny_imagenet):
  """A finished run of tests/test_checkpoint.py's smoke command (in the worker's process) of 4 steps with checkpoints
  at steps 2 and 4, made once per pytest worker; tests work on copies."""
  from test_checkpoint import _steps, _train_here
  workdir = tmp_path_factory.mktemp('four_steps') / 'run'
  _, error, _ = _train_here(workdir, tiny_imagenet, '--config.total_steps=4')  # train.py's run, in this process
  assert error is None, error
  assert _steps(workdir) == [2, 4] and (workdir / 'final.json').exists()
  return workdir


# Files whose tests train in subprocesses: collected first, so the two workers start on the longest
# work and finish together (test_checkpoint's tests form one xdist group: one worker, one set of its
# module fixtures; test.sh runs pytest with --dist loadgroup).
SLOW_FIRST = ('test_checkpoint.py', 'test_guarantees.py', 'test_sweep.py', 'test_multiprocess.py', 'test_quickstart.py', 'test_train.py',
              'test_export_eval.py', 'test_flops.py', 'test_sharding.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: file order kept within


SITECUSTOMIZE = '''import atexit, os, sys
def _report():
  with open(os.environ['TPM_TESTS_TF_REPORT'], 'a') as f:
    f.write(f"{' '.join(sys.argv[:2])}\\t{'tensorflow' in sys.modules}\\n")
atexit.register(_report)
'''


@pytest.fixture
def tensorflow_report(tmp_path):
  """(env, read): ``env`` makes every Python process started with it (and their children) append one
  line at exit: its argv and whether TensorFlow was imported (a real ``sitecustomize`` on
  PYTHONPATH); ``read()`` -> [(argv, imported)]."""
  hook = tmp_path / 'tf_report_hook'
  hook.mkdir()
  (hook / 'sitecustomize.py').write_text(SITECUSTOMIZE)
  report = tmp_path / 'tf_report.tsv'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=f'{hook}{os.pathsep}{root}', TPM_TESTS_TF_REPORT=str(report))

  def read():
    lines = report.read_text().splitlines() if report.exists() else []
    return [(argv, imported == 'True') for argv, imported in (l.rsplit('\t', 1) for l in lines)]
  return env, read

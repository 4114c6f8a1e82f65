"""Checkpoints and faults, with real processes and real signals: SIGTERM, kill -9 (also during an
async save), resume determinism, NaN, corrupted checkpoints, restoring on another mesh."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  from imagenet_fixture import make_imagenet_manual_dir
  tmp = tmp_path_factory.mktemp('imagenet')
  make_imagenet_manual_dir(str(tmp / 'manual'), num_classes=4, train_per_class=12, num_val=16)
  tfds.builder('imagenet2012', data_dir=str(tmp / 'tfds')).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp / 'manual')))
  return str(tmp / 'tfds')


def _cmd(workdir, data_dir, *extra):
  return [sys.executable, os.path.join(ROOT, 'train.py'), '--config', os.path.join(ROOT, 'configs/deit.py') + ':smoke',
          '--workdir', str(workdir), f'--config.dataset.data_dir={data_dir}', f'--config.total_steps={STEPS}',
          '--config.checkpoint_every_steps=2', '--config.log_every_steps=2', '--config.eval_every_steps=4',
          '--config.model.drop_path_rate=0.1', *extra]


def _env(devices=1):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES='')
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _run(workdir, data_dir, *extra, devices=1, check=True):
  res = subprocess.run(_cmd(workdir, data_dir, *extra), env=_env(devices), capture_output=True, text=True, timeout=600)
  if check:
    assert res.returncode == 0, res.stderr[-3000:]
  return res


def _steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _final_params(workdir):
  """The parameters of the final checkpoint, read back with Orbax (no model needed)."""
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints', str(STEPS), 'state')
  tree = ocp.StandardCheckpointer().restore(path)
  flat = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f'{prefix}/{k}', v)
    else:
      flat[prefix] = np.asarray(node)
  walk('', tree)
  return flat


def _start_and_signal(workdir, data_dir, sig, *, after_step, extra_delay=0.0):
  p = subprocess.Popen(_cmd(workdir, data_dir), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not any(s >= after_step for s in _steps(workdir)):
    time.sleep(0.05)
  time.sleep(extra_delay)
  p.send_signal(sig)
  out, err = p.communicate(timeout=300)
  return p.returncode, out, err


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  _run(workdir, data_dir)
  return _final_params(workdir)


def _assert_same_params(a, b):
  assert a.keys() == b.keys() and len(a) > 20
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_sigterm_saves_exits_cleanly_and_resumes_to_the_same_parameters(tmp_path, data_dir, uninterrupted):
  code, out, err = _start_and_signal(tmp_path, data_dir, signal.SIGTERM, after_step=4)
  assert code == 0, err[-2000:]
  assert 'preempted: saved step' in out
  stopped = json.loads([l for l in out.splitlines() if l.startswith('{"process_index"')][-1])['final']['step']
  assert stopped < STEPS and stopped in _steps(tmp_path)
  res = _run(tmp_path, data_dir)
  assert f'resuming from step {stopped}' in res.stdout
  _assert_same_params(_final_params(tmp_path), uninterrupted)


def test_kill_9_during_async_saves_resumes_from_the_last_complete_step(tmp_path, data_dir, uninterrupted):
  code, _, _ = _start_and_signal(tmp_path, data_dir, signal.SIGKILL, after_step=2, extra_delay=0.3)
  assert code == -signal.SIGKILL
  complete = _steps(tmp_path)  # Orbax lists only finished steps (temporary directories are not digits)
  res = _run(tmp_path, data_dir)
  if complete:
    assert f'resuming from step {max(complete)}' in res.stdout
  _assert_same_params(_final_params(tmp_path), uninterrupted)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  _run(tmp_path, data_dir, '--config.total_steps=4')
  good = _steps(tmp_path)
  mtime = os.path.getmtime(os.path.join(tmp_path, 'checkpoints', str(max(good))))
  res = _run(tmp_path, data_dir, '--config.total_steps=8', '--config.optim.lr=1e30', check=False)
  assert res.returncode == 1
  assert 'loss is nan at step' in res.stderr.lower() or 'loss is inf at step' in res.stderr.lower(), res.stderr[-2000:]
  assert 'Traceback' not in res.stderr
  assert max(_steps(tmp_path)) == max(good)
  assert os.path.getmtime(os.path.join(tmp_path, 'checkpoints', str(max(good)))) == mtime


def test_corrupted_checkpoint_is_named_and_resume_falls_back(tmp_path, data_dir):
  _run(tmp_path, data_dir, '--config.total_steps=4')
  steps = _steps(tmp_path)
  assert steps[-2:] == [2, 4]
  state_dir = os.path.join(tmp_path, 'checkpoints', '4', 'state')
  for dirpath, _, files in os.walk(state_dir):
    for f in files:
      if not f.endswith(('.json', '_METADATA', 'manifest.ocdbt')):
        with open(os.path.join(dirpath, f), 'r+b') as fh:
          fh.truncate(max(0, os.path.getsize(os.path.join(dirpath, f)) // 3))
  res = _run(tmp_path, data_dir, '--config.total_steps=6')
  assert 'checkpoint step 4' in res.stdout and 'falling back' in res.stdout, res.stdout[-2000:]
  assert 'resuming from step 2' in res.stdout


def test_saved_on_8_devices_restores_on_1(tmp_path, data_dir):
  _run(tmp_path, data_dir, '--config.total_steps=4', '--config.mesh.data=2', '--config.mesh.fsdp=4',
       '--config.fsdp_min_size=64', devices=8)
  res = _run(tmp_path, data_dir, '--config.total_steps=6', devices=1)
  assert 'resuming from step 4' in res.stdout

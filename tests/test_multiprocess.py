"""Two processes on localhost (gloo CPU collectives) run train.py together, each reading its own
shard of a real tiny imagenet2012, and agree."""
import json
import os
import socket
import subprocess
import sys

from test_checkpoint import SHALLOW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES='')
  env['XLA_FLAGS'] = ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f)
  return env


def _cmd(workdir, data_dir, *extra):
  return [sys.executable, os.path.join(ROOT, 'train.py'), '--config', os.path.join(ROOT, 'configs/deit.py') + ':smoke',
          '--workdir', str(workdir), f'--config.dataset.data_dir={data_dir}', '--config.aug.mixup=0.0',
          '--config.aug.cutmix=0.0', '--config.mesh.data=-1', *SHALLOW, *extra]


def test_two_processes_train_together(tmp_path, tiny_imagenet):
  port = _free_port()
  env = _env()
  cmd = _cmd(tmp_path / 'run', tiny_imagenet, '--config.total_steps=4', '--config.log_every_steps=2',
             '--config.eval_every_steps=4', f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2')
  procs = [subprocess.Popen(cmd + [f'--process_id={i}'], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=300)
      assert p.returncode == 0, err[-3000:]
      outs.append(json.loads([l for l in out.splitlines() if l.startswith('{"process_index"')][-1]))
  finally:
    for p in procs:
      p.kill()
  assert sorted(o['process_index'] for o in outs) == [0, 1]
  a, b = (o['final'] for o in outs)
  assert a['loss'] == b['loss'] and a['eval_loss'] == b['eval_loss']
  assert a['eval_examples'] == 16  # both shards of the validation split, each example once
  rows = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [2, 4]  # written once, by process 0
  # the checkpoint both wrote restores, read-only, to the trained (finite) parameters of step 4
  import jax
  import numpy as np
  from flax import nnx

  from tpm_jax import export
  model, _, step = export.restore_from_workdir(str(tmp_path / 'run'))
  assert step == 4
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # its input position is per process: one process may not continue it (one line, nothing renamed)
  res = subprocess.run(_cmd(tmp_path / 'run', tiny_imagenet, '--config.total_steps=6'), env=env, capture_output=True,
                       text=True, timeout=300)
  errors = [l for l in res.stderr.splitlines() if l.startswith('error:')]
  assert res.returncode == 2 and len(errors) == 1 and 'saved by 2 processes' in errors[0], res.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['4']


def test_a_lost_peer_ends_the_other_process_with_one_line(tmp_path, tiny_imagenet):
  """kill -9 of process 1 mid-run: process 0 says so in one line and exits 1 (no traceback, no hang)."""
  import signal
  import time
  port = _free_port()
  cmd = _cmd(tmp_path / 'run', tiny_imagenet, '--config.total_steps=2000', '--config.log_every_steps=1',
             '--config.checkpoint_every_steps=2000', '--config.eval_every_steps=0',
             f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2')
  procs = [subprocess.Popen(cmd + [f'--process_id={i}'], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  try:
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / 'run' / 'metrics.jsonl').exists():
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    t = time.time()
    out, err = procs[0].communicate(timeout=240)
    waited = time.time() - t
  finally:
    for p in procs:
      p.kill()
  errors = [l for l in err.splitlines() if l.startswith('error:')]
  assert procs[0].returncode == 1 and len(errors) == 1 and 'Traceback' not in err, err[-3000:]
  assert 'another process of the run stopped or was lost' in errors[0], errors
  print(f'process 0 stopped {waited:.1f} s after its peer was killed')

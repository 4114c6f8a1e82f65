"""Checkpoints and faults, with real processes and real signals: SIGTERM, kill -9 (also during an
async save), resume determinism, NaN, corrupted checkpoints, restoring on another mesh."""
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tpm_jax import trainer
from tpm_jax.checkpoint import CheckpointError
from tpm_jax.config import ConfigError, RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


# One worker runs this file's tests (test.sh: --dist loadgroup), so its trained fixtures are built once.
pytestmark = pytest.mark.xdist_group('checkpoint')


@pytest.fixture(scope='module')
def data_dir(tiny_imagenet):
  return tiny_imagenet


# the smoke model at depth 2, one reduction: the fault tests start train.py some 50 times, and tracing a
# shallower model saves a quarter of each start-up (what they test does not depend on the depth)
SHALLOW = ('--config.model.depth=2', '--config.reduction.locations=1')


def _smoke_config():
  """What ``_cmd`` runs, as a ConfigDict."""
  from configs import deit
  c = deit.get_config('smoke')
  c.model.depth, c.reduction.locations = 2, '1'
  return c


def _cmd(workdir, data_dir, *extra):
  return [sys.executable, os.path.join(ROOT, 'train.py'), '--config', os.path.join(ROOT, 'configs/deit.py') + ':smoke',
          '--workdir', str(workdir), f'--config.dataset.data_dir={data_dir}', f'--config.total_steps={STEPS}',
          '--config.checkpoint_every_steps=2', '--config.log_every_steps=2', '--config.eval_every_steps=4',
          '--config.model.drop_path_rate=0.1', *SHALLOW, *extra]


def _env(devices=1):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES='')
  env['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={devices}'.strip()
  return env


def _communicate(p, timeout):
  """``p.communicate()``; a train.py still running after ``timeout`` s (a hang) is stopped with SIGABRT, which
  makes Python print where each of its threads was (faulthandler, on in ``_run``'s processes): the test fails with it."""
  try:
    return p.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    p.send_signal(signal.SIGABRT)
    out, err = p.communicate(timeout=120)
    pytest.fail(f'train.py hung ({timeout} s); its threads then:\n{err[-12000:]}\nstdout:\n{out[-2000:]}')


def _run(workdir, data_dir, *extra, devices=1, check=True, timeout=300):
  """train.py's run of ``_cmd`` (a run here takes under a minute: ``timeout`` s is a hang, ``_communicate``)."""
  cmd = _cmd(workdir, data_dir, *extra)
  p = subprocess.Popen(cmd, env=dict(_env(devices), PYTHONFAULTHANDLER='1'), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  out, err = _communicate(p, timeout)
  res = subprocess.CompletedProcess(cmd, p.returncode, out, err)
  if check:
    assert res.returncode == 0, res.stderr[-3000:]
  return res


def _train_here(workdir, data_dir, *extra):
  """``_run``'s train.py command, in this process: ``trainer.train_and_evaluate`` on the config the
  command line builds (``_smoke_config`` with ``_cmd``'s and ``extra``'s ``--config.FIELD=VALUE``,
  each value read as the field's type). For the tests of what a resume reads, sets aside or refuses;
  how train.py turns each error into its one line and exit code is tested with processes.
  Returns (final metrics or None, the error raised or None, tpm_jax's log lines)."""
  c = _smoke_config()
  for arg in _cmd(workdir, data_dir, *extra)[6:]:
    if arg in SHALLOW:
      continue
    path, value = arg[len('--config.'):].split('=', 1)
    *parents, field = path.split('.')
    node = c
    for name in parents:
      node = node[name]
    old = node[field]
    node[field] = (value == 'true' if isinstance(old, bool) else type(old)(value) if old is not None else value)
  lines = []
  handler = logging.Handler(logging.INFO)
  handler.emit = lambda record: lines.append(record.getMessage())
  log = logging.getLogger('tpm_jax')
  level = log.level
  log.addHandler(handler)
  log.setLevel(logging.INFO)
  try:
    return trainer.train_and_evaluate(c, str(workdir)), None, '\n'.join(lines)
  except (ConfigError, CheckpointError) as e:
    assert '\n' not in str(e)  # one line
    return None, e, '\n'.join(lines)
  finally:
    log.removeHandler(handler)
    log.setLevel(level)


def _steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _final_params(workdir):
  """The parameters of the final checkpoint, read back with Orbax (no model needed)."""
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints', str(STEPS), 'params')
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


def _start_and_signal(workdir, data_dir, sig, *extra, after_step, extra_delay=0.0):
  p = subprocess.Popen(_cmd(workdir, data_dir, *extra), env=dict(_env(), PYTHONFAULTHANDLER='1'), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not any(s >= after_step for s in _steps(workdir)):
    time.sleep(0.05)
  time.sleep(extra_delay)
  p.send_signal(sig)
  out, err = _communicate(p, 300)
  return p.returncode, out, err


@pytest.fixture(scope='module')
def uninterrupted_workdir(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  final, error, _ = _train_here(workdir, data_dir)  # train.py's run, in this process
  assert error is None and final['step'] == STEPS, error
  return workdir


@pytest.fixture(scope='module')
def uninterrupted(uninterrupted_workdir):
  return _final_params(uninterrupted_workdir)


def _assert_same_params(a, b):
  assert a.keys() == b.keys() and len(a) > 20
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, four_steps):
  workdir = _copy(four_steps, tmp_path / 'run')
  good = _steps(workdir)
  mtime = os.path.getmtime(os.path.join(workdir, 'checkpoints', str(max(good))))
  res = _run(workdir, data_dir, '--config.total_steps=8', '--config.optim.lr=1e30', check=False)
  assert res.returncode == 1
  assert 'loss is nan at step' in res.stderr.lower() or 'loss is inf at step' in res.stderr.lower(), res.stderr[-2000:]
  assert 'Traceback' not in res.stderr
  assert max(_steps(workdir)) == max(good)
  assert os.path.getmtime(os.path.join(workdir, 'checkpoints', str(max(good)))) == mtime


def test_sigterm_saves_exits_cleanly_and_resumes_to_the_same_parameters(tmp_path, data_dir, uninterrupted):
  """Read by 2 Grain worker processes here (the uninterrupted run reads in-process): the same batches,
  and the saved input position (per worker) brings the resumed run to the same parameters."""
  workers = '--config.dataset.workers=2'
  code, out, err = _start_and_signal(tmp_path, data_dir, signal.SIGTERM, workers, after_step=4)
  assert code == 0, err[-2000:]
  assert 'preempted: saved step' in out
  stopped = json.loads([l for l in out.splitlines() if l.startswith('{"process_index"')][-1])['final']['step']
  assert stopped < STEPS and stopped in _steps(tmp_path)
  position = json.load(open(tmp_path / 'checkpoints' / str(stopped) / 'data' / 'process_0-of-1.json'))
  assert len(position['iterators_in_use_states']) == 2  # Grain's state, one entry per worker
  _, refused, _ = _train_here(tmp_path, data_dir)  # the position was saved with 2 workers: all or nothing
  assert isinstance(refused, ConfigError) and 'dataset.workers=0' in str(refused), refused
  res = _run(tmp_path, data_dir, workers)
  assert f'resuming from step {stopped}' in res.stdout
  _assert_same_params(_final_params(tmp_path), uninterrupted)


def test_an_unverified_step_with_a_garbled_input_position_is_set_aside(tmp_path, data_dir, uninterrupted_workdir,
                                                                        uninterrupted):
  """The newest step without checksums (as after a kill -9 right after its save) whose input position
  is garbled: set aside like any failing step (and kept, renamed), the older good step resumes to the
  same parameters as an uninterrupted run."""
  workdir = _copy(uninterrupted_workdir, tmp_path / 'run')
  ckpts = workdir / 'checkpoints'
  newest, older = _steps(workdir)[-1], _steps(workdir)[-2]
  for name in ('final.json',):
    os.remove(workdir / name)
  os.remove(ckpts / str(newest) / 'checksums.json')
  (ckpts / str(newest) / 'data' / 'process_0-of-1.json').write_text('{"next_index": ')
  _, error, out = _train_here(workdir, data_dir)
  assert error is None, error
  assert f'set aside as {newest}.unreadable' in out and f'resuming from the older good step {older}' in out, out[-2000:]
  assert (ckpts / f'{newest}.unreadable').is_dir()
  _assert_same_params(_final_params(workdir), uninterrupted)


def test_a_train_split_of_another_size_is_refused_on_resume(tmp_path, data_dir, uninterrupted_workdir):
  """The saved input position indexes the split as it was: a split that changed size under the same
  name is refused (exit 2, one line), nothing written."""
  from tpm_jax import checkpoint
  workdir = _copy(uninterrupted_workdir, tmp_path / 'run')
  newest = max(_steps(workdir))
  step_dir = workdir / 'checkpoints' / str(newest)
  meta_path = step_dir / 'meta' / 'metadata'
  meta = json.load(open(meta_path))
  assert meta['train_examples'] == 48
  meta['train_examples'] = 50  # as if two images had been deleted since
  json.dump(meta, open(meta_path, 'w'))
  checkpoint.write_checksums(str(step_dir))
  before = sorted(os.listdir(workdir))
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=10')
  assert isinstance(error, ConfigError), error
  assert "dataset.train_split='train' has 48 examples now and had 50" in str(error), error
  assert sorted(os.listdir(workdir)) == before and max(_steps(workdir)) == newest


def test_kill_9_during_async_saves_resumes_from_the_last_complete_step(tmp_path, data_dir, uninterrupted):
  code, _, _ = _start_and_signal(tmp_path, data_dir, signal.SIGKILL, after_step=2, extra_delay=0.3)
  assert code == -signal.SIGKILL
  complete = _steps(tmp_path)  # Orbax lists only finished steps (temporary directories are not digits)
  _, error, out = _train_here(tmp_path, data_dir)
  assert error is None, error
  if complete:
    assert f'resuming from step {max(complete)}' in out
  _assert_same_params(_final_params(tmp_path), uninterrupted)


def _listing(workdir):
  """Every path under workdir with its SHA-256 (directories as None)."""
  out = {}
  for root, dirs, files in os.walk(workdir):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), workdir)] = None
    for f in files:
      with open(os.path.join(root, f), 'rb') as fh:
        out[os.path.relpath(os.path.join(root, f), workdir)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _data_files(step_dir):
  return sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, 'params')) for f in fs
                if os.sep + 'd' + os.sep in os.path.join(r, f) + os.sep and os.path.getsize(os.path.join(r, f)) > 0)


def _truncate(step_dir):
  for f in _data_files(step_dir):
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 3)


def _flip_one_byte(step_dir):
  f = _data_files(step_dir)[0]
  with open(f, 'r+b') as fh:
    fh.seek(os.path.getsize(f) // 2)
    b = fh.read(1)
    fh.seek(-1, 1)
    fh.write(bytes([b[0] ^ 0xFF]))
  return f


def _one_line_error(res):
  lines = [l for l in res.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1 and 'Traceback' not in res.stderr, res.stderr[-3000:]
  return lines[0]


def test_corrupted_checkpoint_is_named_and_resume_falls_back(tmp_path, data_dir, four_steps):
  workdir = _copy(four_steps, tmp_path / 'run')
  _truncate(os.path.join(workdir, 'checkpoints', '4'))
  _, error, out = _train_here(workdir, data_dir, '--config.total_steps=6')
  assert error is None and 'checkpoint step 4' in out and '4.unreadable' in out, (error, out[-2000:])
  assert 'resuming from the older good step 2' in out and 'resuming from step 2' in out


def test_a_file_named_like_a_step_is_set_aside_not_overwritten(tmp_path, data_dir, four_steps):
  """A file put in checkpoints/ under a step's name is no step: saving that step would replace it (hostile pass 16b's
  D10). It is set aside under another name, with a line; with no good step left, the run is refused, not restarted."""
  workdir = _copy(four_steps, tmp_path / 'run')
  ckpts = workdir / 'checkpoints'
  for step in ('2', '4'):
    shutil.rmtree(ckpts / step)
  (ckpts / '4').write_text('my notes')
  os.remove(workdir / 'final.json')
  _, error, out = _train_here(workdir, data_dir, '--config.total_steps=6')
  assert ('checkpoints/4 is not a checkpoint step (a step is a folder of its own, not a file or a link); set aside as '
          '4.unreadable') in out, out[-2000:]
  assert error is not None and 'no good checkpoint left' in str(error) and 'nothing was trained' in str(error), error
  assert (ckpts / '4.unreadable').read_text() == 'my notes' and not (ckpts / '4').exists()
  # a folder '007' is no step 7 either (hostile pass 18's D10, X07: it was looked for as step 7, and the run, export and
  # eval refused the workdir): the good step 4 resumes, exports, and '007' is left alone
  workdir = _copy(four_steps, tmp_path / 'run007')
  (workdir / 'checkpoints' / '007').mkdir()
  from tpm_jax import export
  export.main(['--workdir', str(workdir), '--output', str(tmp_path / 'out007')])
  assert json.load(open(tmp_path / 'out007' / 'export.json'))['step'] == 4
  os.remove(workdir / 'final.json')
  (workdir / 'checkpoints' / '9').mkdir()  # an empty step folder (hostile pass 19's CK02: an errno dump, path twice)
  shutil.copytree(workdir / 'checkpoints' / '4', tmp_path / 'outside')  # a step linked from elsewhere (pass 19's CK04:
  (workdir / 'checkpoints' / '8').symlink_to(tmp_path / 'outside')  # deleted as an old step through the link: exit 1)
  final, error, out = _train_here(workdir, data_dir, '--config.total_steps=6')
  assert error is None and 'resuming from step 4' in out and final['step'] == 6, (error, out[-2000:])
  assert (workdir / 'checkpoints' / '007').is_dir()
  assert (f'{workdir / "checkpoints" / "9" / "meta" / "metadata"} is unreadable (No such file or directory); set aside '
          f'as 9.unreadable') in out, out[-2000:]
  assert (f'{workdir / "checkpoints" / "8"} is not a checkpoint step (a step is a folder of its own, not a file or a '
          f'link); set aside as 8.unreadable') in out, out[-2000:]
  assert (workdir / 'checkpoints' / '8.unreadable').is_symlink() and _listing(tmp_path / 'outside')


def test_case3_flipped_byte_fails_the_checksum_and_is_never_restored(tmp_path, data_dir, four_steps):
  workdir = _copy(four_steps, tmp_path / 'run')
  bad = _flip_one_byte(os.path.join(workdir, 'checkpoints', '4'))
  from tpm_jax import export
  out = tmp_path / 'export'
  export.main(['--workdir', str(workdir), '--output', str(out)])  # read-only: uses step 2, says so
  assert json.load(open(out / 'export.json'))['step'] == 2
  final, _, out = _train_here(workdir, data_dir, '--config.total_steps=6')
  assert f'checkpoint step 4: {bad} fails its SHA-256 check' in out, out[-2000:]
  assert 'resuming from step 2' in out
  assert np.isfinite(final['loss'])


def test_case1_a_field_that_changes_the_state_is_refused_and_nothing_is_renamed(tmp_path, data_dir, four_steps):
  workdir = _copy(four_steps, tmp_path / 'run')
  before = _listing(workdir)
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=6', '--config.optim.ema_decay=0.9')
  assert isinstance(error, ConfigError), error
  assert 'optim.ema_decay=0.0 there, 0.9 now' in str(error) and '--config.overwrite=true' in str(error), error
  assert _listing(workdir) == before


def test_case1_fields_that_keep_the_state_resume_where_the_run_stopped(tmp_path, data_dir, four_steps):
  """Clipping off (its optimizer state is empty) and distillation on (the teacher is rebuilt from
  the run's initial weights, not saved): the same items, so the run continues from step 4."""
  workdir = _copy(four_steps, tmp_path / 'run')
  _, error, out = _train_here(workdir, data_dir, '--config.total_steps=6', '--config.optim.grad_clip=0.0',
                              '--config.distill.alpha=0.5')
  assert error is None and 'resuming from step 4' in out and _steps(workdir)[-1] == 6, (error, out[-2000:])


def test_a_distillation_run_whose_init_weights_were_replaced_is_refused(tmp_path, data_dir):
  """The teacher is rebuilt from ``init`` on every resume: weights replaced at the same path would make
  it another model (hostile pass 12b's RT). Refused, nothing written; the same weights resume. The
  weights are a backbone (no head): the resume, which loads them again for the teacher, does not say
  again that the head is freshly initialised, which it restores from the checkpoint (pass 23's TR11)."""
  from safetensors.numpy import save_file

  from tpm_jax.config import RunConfig
  from tpm_jax.models.registry import model_from_config
  from tpm_jax.timm_weights import timm_state_dict

  def save_backbone(model, path):
    save_file({k: v for k, v in timm_state_dict(model).items() if not k.startswith('head.')}, str(path))
  model = model_from_config(RunConfig.from_any(_smoke_config()))
  weights = tmp_path / 'init.safetensors'
  save_backbone(model, weights)
  distill = ('--config.distill.alpha=0.5', f'--config.init.timm_checkpoint={weights}')
  workdir = tmp_path / 'run'
  _, error, out = _train_here(workdir, data_dir, '--config.total_steps=2', *distill)
  assert error is None and out.count('freshly initialised') == 1, (error, out[-2000:])
  same = weights.read_bytes()
  other = model_from_config(RunConfig.from_any(_smoke_config()).replace(seed=1))
  save_backbone(other, weights)  # other weights, same path and size
  assert weights.read_bytes() != same and len(weights.read_bytes()) == len(same)
  before = _listing(workdir)
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=4', *distill)
  assert isinstance(error, ConfigError) and 'same paths, other contents' in str(error), error
  assert _listing(workdir) == before
  weights.write_bytes(same)
  _, error, out = _train_here(workdir, data_dir, '--config.total_steps=4', *distill)
  assert error is None and 'resuming from step 2' in out and 'freshly initialised' not in out, (error, out[-2000:])
  # a resume without distillation in between carries the weights the run started from on (pass 13b's RT2)
  save_backbone(other, weights)
  no_teacher = ('--config.distill.alpha=0.0', f'--config.init.timm_checkpoint={weights}')
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=6', *no_teacher)
  assert error is None, error
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=8', *distill)
  assert isinstance(error, ConfigError) and 'same paths, other contents' in str(error), error


def test_an_export_written_again_is_the_same_weights(tmp_path, four_steps, monkeypatch):
  """Orbax never writes one export as the same files (timestamps, random data-file names): what a
  distillation run's resume compares is the parameter values (hostile pass 13b's R7)."""
  from tpm_jax import export
  from tpm_jax.checkpoint import check_export
  from tpm_jax.checkpoint.exports import export_digest
  for name, step in (('a', '4'), ('b', '4'), ('c', '2')):
    export.main(['--workdir', str(four_steps), '--output', str(tmp_path / name), '--step', step])
  sums = [json.load(open(tmp_path / n / 'checksums.json'))['files'] for n in 'ab']
  assert sums[0] != sums[1]  # other files ...
  a, b, c = (export_digest(check_export(str(tmp_path / n))) for n in 'abc')
  assert a == b and a != c  # ... the same weights; another step's are others
  monkeypatch.chdir(tmp_path)  # a relative path reads the same (Orbax reads no metadata from one)
  assert export_digest('a') == a
  from tpm_jax import preflight  # a step saved by an earlier version holds another kind (not compared: pass 14b's UPG)
  run = RunConfig.from_any(_smoke_config()).replace(init=dict(checkpoint=str(tmp_path / 'a')))
  assert preflight.init_fingerprint(run).startswith(preflight.FINGERPRINT)


def test_export_outputs_that_would_lose_work_are_refused_up_front(tmp_path, four_steps):
  """Hostile pass 14b: the timm file inside --output through a linked parent (EO4), an --output holding a run that
  overwrite moved aside (EO3o, even with --overwrite); an export killed between its renames is named (SX2)."""
  from tpm_jax import export
  from tpm_jax.checkpoint import check_export
  (tmp_path / 'out').mkdir()
  os.symlink(tmp_path / 'out', tmp_path / 'link')
  with pytest.raises(ConfigError, match='it is the export folder or inside it'):
    export.export(str(four_steps), str(tmp_path / 'out'), safetensors=str(tmp_path / 'link' / 'w.safetensors'))
  aside = tmp_path / 'ow'
  (aside / 'checkpoints.replaced-20261207-075450').mkdir(parents=True)
  (aside / 'final.json.replaced-20261207-075450').write_text('{}')
  with pytest.raises(ConfigError, match='replacing it would delete'):
    export.export(str(four_steps), str(aside), overwrite=True)
  assert sorted(os.listdir(aside)) == ['checkpoints.replaced-20261207-075450', 'final.json.replaced-20261207-075450']
  with pytest.raises(ConfigError, match='its folder .* does not exist'):  # before the checkpoint is read (pass 15)
    export.export(str(four_steps), str(tmp_path / 'nope' / 'sub' / 'exp'))
  (tmp_path / 'gone.replaced-12345').mkdir()
  with pytest.raises(CheckpointError, match='gone.replaced-12345 beside it is the export an interrupted export moved'):
    check_export(str(tmp_path / 'gone'))


def test_case7_corrupt_only_step_stops_with_exit_1_instead_of_restarting(tmp_path, data_dir, four_steps):
  workdir = _copy(four_steps, tmp_path / 'run')
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '2'))  # keep_checkpoints=1: only the newest step
  _truncate(os.path.join(workdir, 'checkpoints', '4'))
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=6', '--config.keep_checkpoints=1')
  assert isinstance(error, CheckpointError), error  # train.py: exit code 1
  assert 'no good checkpoint left' in str(error) and '--config.overwrite=true' in str(error)
  assert not _steps(workdir)  # nothing trained from step 0


def test_case2_read_only_tools_leave_the_workdir_unchanged(tmp_path, data_dir, four_steps, sigterm_once_written):
  """Also: SIGTERM just after eval.py wrote its --output (while the process ends) is exit code 0."""
  workdir = _copy(four_steps, tmp_path / 'run')
  _truncate(os.path.join(workdir, 'checkpoints', '4'))
  before = _listing(workdir)
  from tpm_jax import export
  export.main(['--workdir', str(workdir), '--output', str(tmp_path / 'export')])
  assert json.load(open(tmp_path / 'export' / 'export.json'))['step'] == 2
  p = subprocess.Popen([sys.executable, os.path.join(ROOT, 'eval.py'), '--checkpoint', str(workdir),
                        '--batch_size', '4', '--timed_runs', '1', '--output', str(tmp_path / 'eval.json')],
                       env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  code, _, err = sigterm_once_written(p, tmp_path / 'eval.json')
  assert code == 0 and 'Traceback' not in err, err[-3000:]
  assert json.load(open(tmp_path / 'eval.json'))['source'] == 'workdir step 2'
  assert 'checkpoint step 4' in err
  assert _listing(workdir) == before


def test_case8_eval_refuses_a_config_describing_another_model(tmp_path, four_steps):
  """eval.py's check (``evaluation.prepare``), in this process: how eval.py turns a ConfigError into
  its one line and exit 2 is tested with processes (tests/test_guarantees.py)."""
  from configs import deit
  from tpm_jax import evaluation
  from tpm_jax.config import RunConfig
  given = RunConfig.from_any(deit.get_config('smoke,method=none'))
  with pytest.raises(ConfigError, match=re.escape("reduction.method='none' (the checkpoint's: 'tpm')")) as e:
    evaluation.prepare(checkpoint_path=str(four_steps), given=given)
  assert '\n' not in str(e.value)


def test_case9_method_none_is_the_plain_backbone():
  from configs import deit
  c = deit.get_config('method=none')
  assert c.multiscale.method == 'none'
  from tpm_jax.config import ConfigError
  from tpm_jax.preflight import validate_train_config
  with c.unlocked():
    c.multiscale.method = 'pool'
  with pytest.raises(ConfigError, match="multiscale.method='pool'"):
    validate_train_config(c, num_devices=1)


def test_saved_on_8_devices_restores_on_1(tmp_path, data_dir):
  workdir, out = tmp_path / 'run', tmp_path / 'eval.json'
  _run(workdir, data_dir, '--config.total_steps=4', '--config.mesh.data=2', '--config.mesh.fsdp=4',
       '--config.fsdp_min_size=64', devices=8)
  final = json.load(open(workdir / 'final.json'))
  # eval.py evaluates on this host's devices, not on the training mesh (data=2, fsdp=4): here on 3,
  # which do not divide the run's eval batch (it is rounded up; the padding is masked out); the resume
  # below restores it on 1
  res = subprocess.run([sys.executable, os.path.join(ROOT, 'eval.py'), '--checkpoint', str(workdir),
                        '--batch_size', '3', '--timed_runs', '1', '--output', str(out)],
                       env=_env(3), capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  result = json.load(open(out))
  assert result['examples'] == final['eval_examples']
  assert abs(result['top1'] - final['eval_top1']) <= 1 / result['examples']  # at most one tie moved
  _, error, out = _train_here(workdir, data_dir, '--config.total_steps=6')  # this process: 1 device
  assert error is None and 'resuming from step 4' in out, (error, out[-2000:])


def test_a_step_of_the_earlier_one_item_layout_is_refused_with_the_way_out(tmp_path, data_dir, four_steps, capsys):
  """Workdirs of versions before the named items (one "state" item) are not read: resume and export
  refuse with one line saying how to start from an export, and nothing is renamed."""
  workdir = _copy(four_steps, tmp_path / 'run')
  step = workdir / 'checkpoints' / '6'
  (step / 'state').mkdir(parents=True)
  before = _listing(workdir)
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=8')  # train.py's trainer: exit code 2
  assert isinstance(error, ConfigError) and 'earlier tpm_jax' in str(error) and '--config.init.checkpoint' in str(error)
  from tpm_jax import export
  with pytest.raises(SystemExit) as e:  # the export's command line, in this process
    export.main(['--workdir', str(workdir), '--output', str(tmp_path / 'export')])
  assert e.value.code == 2 and 'earlier tpm_jax' in capsys.readouterr().err
  assert _listing(workdir) == before and not (tmp_path / 'export').exists()


@pytest.fixture
def small_disk(tmp_path, tmpfs):
  """A 3 MB file system (tmpfs): room for one checkpoint of the smoke model, not two."""
  return tmpfs(tmp_path / 'disk', '3m')


def test_full_disk_stops_with_one_line_keeps_the_last_checkpoint_and_does_not_hang(small_disk, data_dir):
  workdir = small_disk / 'run'
  res = subprocess.run(_cmd(workdir, data_dir), env=_env(), capture_output=True, text=True, timeout=300)
  assert res.returncode == 1
  line = _one_line_error(res)
  assert 'No space left on device' in line and str(workdir) in line, line
  from tpm_jax import checkpoint
  good = _steps(workdir)
  assert good and checkpoint.verify_checksums(os.path.join(workdir, 'checkpoints', str(good[-1])), good[-1])


def test_case4_read_only_checkpoints_directory_stops_with_one_line_and_does_not_hang(tmp_path, data_dir, tmpfs):
  """A read-only file system mounted at WORKDIR/checkpoints (the workdir itself writable): the
  first save fails; one line naming the directory and the error, exit code 1, within the timeout."""
  workdir = tmp_path / 'run'
  tmpfs(workdir / 'checkpoints', '1m', read_only=True)
  res = subprocess.run(_cmd(workdir, data_dir, '--config.total_steps=4'), env=_env(), capture_output=True, text=True,
                       timeout=300)  # a hang fails here (subprocess.TimeoutExpired)
  assert res.returncode == 1, res.stderr[-3000:]
  line = _one_line_error(res)
  assert 'Read-only file system' in line and str(workdir / 'checkpoints') in line, line
  assert _steps(workdir) == []


def test_a_workdir_without_a_usable_step_is_said_once(tmp_path, four_steps, caplog):
  """Every step damaged: the export's error names each step's fault, and nothing is said twice (hostile pass 18's
  D12: a warning per step, then the error repeating it); one damaged step of two is a warning, then the older step."""
  import logging

  from tpm_jax import export
  from tpm_jax.checkpoint import CheckpointError
  workdir = _copy(four_steps, tmp_path / 'run')
  for step in ('4', '2'):
    (workdir / 'checkpoints' / step / 'meta' / 'metadata').write_text('{')
    with caplog.at_level(logging.WARNING, logger='tpm_jax'):
      if step == '4':
        export.export(str(workdir), str(tmp_path / 'out'))  # step 2, said so
        said = [r.getMessage() for r in caplog.records if r.name.startswith('tpm_jax')]
        assert len(said) == 2 and 'checkpoints/4/' in said[0] and said[1] == 'warning: using checkpoint step 2 instead'
        continue
      caplog.clear()
      with pytest.raises(CheckpointError) as e:
        export.export(str(workdir), str(tmp_path / 'out2'))
  assert str(e.value).startswith(f'no usable checkpoint in {workdir / "checkpoints"}: ') and '\n' not in str(e.value)
  assert 'checkpoints/4/' in str(e.value) and 'checkpoints/2/' in str(e.value)
  assert not [r for r in caplog.records if r.name.startswith('tpm_jax')]
  moved = _copy(four_steps, tmp_path / 'moved')  # a run with overwrite=true moved it aside meanwhile (pass 18's C03)
  os.rename(moved / 'checkpoints', moved / 'checkpoints.replaced-20261207-150000')
  (moved / 'checkpoints').mkdir()
  with pytest.raises(CheckpointError, match=r'no checkpoint in .*moved/checkpoints \(the run there was moved aside, as '
                                            r'checkpoints.replaced-20261207-150000, by a run started with '
                                            r'--config.overwrite=true\)'):
    export.export(str(moved), str(tmp_path / 'out3'))

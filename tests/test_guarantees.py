"""The promises of README "Checkpoints, resume and faults", by class, with real processes, signals,
Orbax checkpoints and files: finished work is never rewritten or thrown away, a resume that would
change the run's meaning is refused, one process group per workdir, outputs that never destroy,
sweeps keyed by the whole run, verification without holes, nothing that hangs, one line per failure."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_checkpoint import _cmd, _env, _listing, _one_line_error, _run, _smoke_config, _steps, _train_here

from tpm_jax.checkpoint import CheckpointError
from tpm_jax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# On test_checkpoint's worker (test.sh: --dist loadgroup): the finished run (conftest's four_steps)
# both files copy is trained once.
pytestmark = pytest.mark.xdist_group('checkpoint')


@pytest.fixture(scope='module')
def data_dir(tiny_imagenet):
  return tiny_imagenet


@pytest.fixture(scope='module')
def finished_export(tmp_path_factory, four_steps):
  """An export of the finished run (python -m tpm_jax.export's function); tests that change it copy it."""
  from tpm_jax import export
  return export.export(str(four_steps), str(tmp_path_factory.mktemp('finished_export') / 'export'))


@pytest.fixture
def finished(four_steps):  # a finished smoke run of 4 steps, checkpoints at 2 and 4 (conftest.py)
  return four_steps


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def _tool(*args, timeout=300):
  return subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# -- finished work is never rewritten or thrown away ----------------------------------------------
def test_a_finished_run_rerun_changes_nothing_and_says_so(tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path / 'run')
  before = _listing(workdir)
  final, error, out = _train_here(workdir, data_dir, '--config.total_steps=4')
  assert error is None and 'finished at step 4' in out, (error, out[-2000:])
  assert final['eval_top1'] is not None
  after = _listing(workdir)
  assert {k: v for k, v in after.items() if k != '.lock'} == {k: v for k, v in before.items() if k != '.lock'}
  # the same command with the world around it changed (hostile passes' TC1, IC9, RO1): still finished,
  # nothing checked, locked or written. A run made from weights that have moved away since:
  gone, original = str(tmp_path / 'moved_away.safetensors'), (workdir / 'final.json').read_text()
  record = json.loads(original)
  record['config']['init']['timm_checkpoint'] = gone
  (workdir / 'final.json').write_text(json.dumps(record))
  before = _listing(workdir)
  _, error, out = _train_here(workdir, data_dir, '--config.total_steps=4', f'--config.init.timm_checkpoint={gone}')
  assert error is None and 'finished at step 4' in out, (error, out[-2000:])
  assert _listing(workdir) == before
  # the workdir on a read-only mount (where root may mount)
  ro = tmp_path / 'ro'
  ro.mkdir()
  if subprocess.run(['mount', '--bind', '-o', 'ro', str(workdir), str(ro)], capture_output=True).returncode == 0:
    try:
      _, error, out = _train_here(ro, data_dir, '--config.total_steps=4', f'--config.init.timm_checkpoint={gone}')
      assert error is None and 'finished at step 4' in out, (error, out[-2000:])
    finally:
      subprocess.run(['umount', str(ro)], check=True)
    assert _listing(workdir) == before
  (workdir / 'final.json').write_text(original)
  # a final.json copied in from another run is not this run's result
  other = json.load(open(workdir / 'final.json'))
  other['config']['seed'] = 5
  (workdir / 'final.json').write_text(json.dumps(other))
  before = _listing(workdir)
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=4')
  assert isinstance(error, ConfigError) and 'final.json records another run (seed=5 there, 0 now)' in str(error), error
  assert _listing(workdir) == before


def test_a_finished_run_whose_checkpoints_are_gone_is_not_trained_again(tmp_path, data_dir, finished):
  """final.json without checkpoints (deleted by hand, found by the hostile pass): the same command
  trained from step 0 and replaced the results; now refused, nothing written."""
  workdir = _copy(finished, tmp_path / 'run')
  shutil.rmtree(workdir / 'checkpoints')
  before = _listing(workdir)
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=4')
  assert isinstance(error, ConfigError) and 'holds a finished run (final.json) but no checkpoint' in str(error), error
  assert _listing(workdir) == before


def test_a_step_past_total_steps_is_refused_and_nothing_written(tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path / 'run')
  before = _listing(workdir)
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=2')
  assert isinstance(error, ConfigError) and 'past total_steps=2' in str(error), error
  assert _listing(workdir) == before


def test_all_steps_set_aside_is_never_started_over(tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path / 'run')
  os.remove(workdir / 'final.json')
  for s in _steps(workdir):  # every step damaged: the first run sets them aside (exit 1) ...
    (workdir / 'checkpoints' / str(s) / 'meta' / 'metadata').write_text('{"step": ')
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=6')
  assert isinstance(error, CheckpointError) and 'no good checkpoint left' in str(error), error  # exit code 1
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2.unreadable', '4.unreadable']
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=6')  # ... and the same command again
  assert isinstance(error, CheckpointError) and 'every step was set aside' in str(error), error
  assert not _steps(workdir)  # nothing trained from step 0


def test_an_empty_step_folder_is_set_aside_and_the_older_step_resumes(tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path / 'run')
  (workdir / 'checkpoints' / '6').mkdir()
  _, error, out = _train_here(workdir, data_dir, '--config.total_steps=6')
  assert error is None and '6.unreadable' in out and 'resuming from the older good step 4' in out, (error, out[-2000:])
  assert _steps(workdir)[-1] == 6


def test_overwrite_moves_the_old_run_aside_even_without_config_json(tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path / 'run')
  os.remove(workdir / 'config.json')
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=2', '--config.overwrite=true')
  assert error is None, error
  kept = [n for n in os.listdir(workdir) if n.startswith('checkpoints.replaced-')]
  assert len(kept) == 1 and sorted(os.listdir(workdir / kept[0])) == ['2', '4']
  assert _steps(workdir) == [2]


def test_two_overwrites_within_one_second_keep_both_earlier_runs(tmp_path):
  """``.replaced-<time>`` names of two overwrites in one second: the second is numbered, nothing replaced."""
  from tpm_jax.checkpoint import move_run_aside
  for text in ('first', 'second'):
    (tmp_path / 'final.json').write_text(text)
    assert move_run_aside(str(tmp_path), '20261207-060000') == ['final.json']
  assert (tmp_path / 'final.json.replaced-20261207-060000').read_text() == 'first'
  assert (tmp_path / 'final.json.replaced-20261207-060000-2').read_text() == 'second'


def test_a_stop_after_an_overwrite_moved_the_run_aside_says_so():
  """Pass 12b's F4: not 'nothing was trained or written' once the earlier run was moved aside."""
  from tpm_jax.trainer import Stopped, StopSignals
  stop = StopSignals()
  stop.received = 'SIGTERM'
  with pytest.raises(Stopped, match='during start-up: nothing was trained or written$'):
    stop.check('start-up')
  stop.written = 'the earlier run was moved aside (final.json as *.replaced-<time>)'
  with pytest.raises(Stopped, match=r'nothing was trained; the earlier run was moved aside \(final.json'):
    stop.check('start-up')


def test_a_run_that_went_on_past_its_final_json_is_not_finished(tmp_path, data_dir, finished):
  """Pass 12b's F1: final.json of step 4, then the run continued to step 6 and was stopped there before
  it wrote its own: the same command evaluates step 6 and writes its final.json, not 'finished' with
  step 4's result. A step folder copied by hand under another number (F2) is not that step."""
  workdir = _copy(finished, tmp_path / 'run')
  old_final = (workdir / 'final.json').read_text()
  final, error, _ = _train_here(workdir, data_dir, '--config.total_steps=6')
  assert error is None and final['step'] == 6, error
  (workdir / 'final.json').write_text(old_final)  # as a stop just after the last save leaves it
  final, error, _ = _train_here(workdir, data_dir, '--config.total_steps=6')
  assert error is None and final['step'] == 6 and json.loads((workdir / 'final.json').read_text())['step'] == 6
  from tpm_jax.checkpoint import restore_model
  shutil.copytree(workdir / 'checkpoints' / '4', workdir / 'checkpoints' / '8')
  step = restore_model(str(workdir)).step
  assert step == 6  # step 8's meta records step 4: reported and passed over, never read as step 8


# -- resume that would change the run's meaning -------------------------------------------------
@pytest.mark.parametrize('extra, refusal', [
    (('--config.batch_size=8',), 'batch_size=16 there, 8 now'),
    (('--config.dataset.train_split=train[:24]',), "dataset.train_split='train' there, 'train[:24]' now"),
    (('--config.init.checkpoint=/an/export',), "init.checkpoint=None there, '/an/export' now"),  # never loaded
])
def test_a_resume_that_would_change_the_run_is_refused(tmp_path, data_dir, finished, extra, refusal):
  workdir = _copy(finished, tmp_path / 'run')
  before = _listing(workdir)
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=6', *extra)
  assert isinstance(error, ConfigError) and refusal in str(error), error
  assert _listing(workdir) == before


def test_the_checkpoint_s_own_config_identifies_the_run_without_config_json(tmp_path, data_dir, finished):
  workdir = _copy(finished, tmp_path / 'run')
  os.remove(workdir / 'config.json')
  _, error, _ = _train_here(workdir, data_dir, '--config.total_steps=6', '--config.seed=5')
  assert isinstance(error, ConfigError) and 'seed=0 there, 5 now' in str(error), error


def test_a_hand_edited_config_json_does_not_outweigh_the_checkpoint_s_own_config(tmp_path, data_dir, finished):
  """config.json is a record a user may edit; a workdir with checkpoints is judged by what each step was
  saved with (hostile pass 12's CFG_edit_train, CFG_edit_nofinal): the same command goes on, and a sweep
  reads the step's config too, naming the file it read."""
  workdir = _copy(finished, tmp_path / 'run')
  edited = json.loads((workdir / 'config.json').read_text())
  edited['reduction']['keep_rate'] = 0.3
  (workdir / 'config.json').write_text(json.dumps(edited))
  os.remove(workdir / 'final.json')
  from tpm_jax import sweep
  from tpm_jax.config import RunConfig
  saved = json.loads((workdir / 'checkpoints' / '4' / 'meta' / 'metadata').read_text())['config']
  run = sweep.Run('r', {}, '', str(workdir), run_config=RunConfig.from_any(saved))
  assert run.differences() == []  # the step's own config, not the edited config.json
  other = sweep.Run('r', {}, '', str(workdir), run_config=RunConfig.from_any(saved).replace(seed=7))
  assert other.differences()[0].startswith('checkpoints/4/meta/metadata records seed=0 there, 7 asked'), other.differences()
  final, error, _ = _train_here(workdir, data_dir, '--config.total_steps=4')
  assert error is None and final is not None and (workdir / 'final.json').exists(), error


# -- one process group per workdir --------------------------------------------------------------
def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_holder(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  # 400 steps: the first run is still training when the second starts, however loaded the machine
  # (with 40, a second run slowed down enough found the first finished: exit 0)
  first = subprocess.Popen(_cmd(workdir, data_dir, '--config.total_steps=400', '--config.checkpoint_every_steps=400'),
                           env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and not (workdir / 'metrics.jsonl').exists():
      time.sleep(0.1)
    second = _run(workdir, data_dir, '--config.total_steps=400', '--config.checkpoint_every_steps=400', check=False)
    assert second.returncode == 2
    line = _one_line_error(second)
    assert 'is in use by pid' in line and str(first.pid) in line, line
  finally:
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
  assert first.returncode == 0 and 'preempted: saved step' in out, err[-2000:]
  rows = [json.loads(l)['step'] for l in open(workdir / 'metrics.jsonl')]
  assert len(rows) == len(set(rows))  # the refused run appended nothing
  from tpm_jax.checkpoint import WorkdirLock
  WorkdirLock(str(workdir)).acquire().release()  # the lock went with its holder


# -- signals ------------------------------------------------------------------------------------
def test_sigint_saves_like_sigterm(tmp_path, data_dir):
  """Ctrl-C as a terminal sends it: SIGINT to the whole process group, the input pipeline's worker
  processes included (which leave it to the trainer: no traceback from them)."""
  p = subprocess.Popen(_cmd(tmp_path / 'run', data_dir, '--config.total_steps=400', '--config.checkpoint_every_steps=400',
                            '--config.log_every_steps=1', '--config.dataset.workers=2'),
                       env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
  deadline = time.time() + 300
  while time.time() < deadline and not (tmp_path / 'run' / 'metrics.jsonl').exists():
    time.sleep(0.1)
  os.killpg(p.pid, signal.SIGINT)
  time.sleep(0.2)
  os.killpg(p.pid, signal.SIGINT)  # twice, as an impatient user does
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0 and 'Traceback' not in err, err[-2000:]
  assert 'preempted: saved step' in out and 'SIGINT' in out
  assert _steps(tmp_path / 'run')


def test_a_refused_second_process_names_the_live_holder_never_an_ended_one(tmp_path):
  """The holder writes ``.lock`` once it goes ahead; while it starts up, the file may still name an
  earlier run that has ended (hostile pass 10's C1: the line named a dead pid and another command)."""
  from tpm_jax.checkpoint import WorkdirBusy, WorkdirLock
  ended = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / '.lock').write_text(f'pid {ended.stdout.strip()} on {socket.gethostname()} since 2026-01-01 00:00:00 '
                                 f'(train.py --workdir elsewhere)\n')
  holder = WorkdirLock(str(workdir)).acquire()  # starting up: the flock is held, .lock not yet rewritten
  try:
    # an ended run's record, a live unrelated pid's (pass 11's L_pid1), text that is no record (L_garbage)
    for record in (f'pid {ended.stdout.strip()} on {socket.gethostname()}', f'pid 1 on {socket.gethostname()}',
                   'garbage\nover two lines'):
      (workdir / '.lock').write_text(f'{record} since 2026-01-01 00:00:00 (train.py --workdir elsewhere)\n')
      with pytest.raises(WorkdirBusy, match=rf'is in use by (pid {os.getpid()} \(starting up\)|another process): wait') as e:
        WorkdirLock(str(workdir)).acquire()
      assert 'elsewhere' not in str(e.value) and '\n' not in str(e.value)
    holder.record_holder()  # gone ahead: the line names it
    with pytest.raises(WorkdirBusy, match=rf'is in use by pid {os.getpid()} on '):
      WorkdirLock(str(workdir)).acquire()
  finally:
    holder.release()


def test_a_workdir_the_lock_created_is_removed_when_nothing_was_written(tmp_path):
  """A run refused or stopped after taking the lock but before writing leaves no empty workdir behind;
  a folder that existed, or one written into, stays."""
  from tpm_jax.checkpoint import WorkdirLock
  fresh, kept, existing = tmp_path / 'a' / 'fresh', tmp_path / 'kept', tmp_path / 'existing'
  WorkdirLock(str(fresh)).acquire().release()
  assert not fresh.exists() and (tmp_path / 'a').is_dir()  # only the folder it made for the run
  lock = WorkdirLock(str(kept)).acquire()
  lock.record_holder()
  lock.release()
  assert (kept / '.lock').is_file()
  existing.mkdir()
  WorkdirLock(str(existing)).acquire().release()
  assert existing.is_dir()


def test_sigterm_during_start_up_is_one_line_and_exit_0(tmp_path, data_dir):
  p = subprocess.Popen(_cmd(tmp_path / 'run', data_dir), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, preexec_fn=_default_stop_signals)
  _wait_until_it_catches_sigterm(p)  # its start-up handler is in place
  time.sleep(1.0)  # importing: long before the first step
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 0, err[-2000:]
  assert 'stopped' in err and 'nothing was trained' in err and 'Traceback' not in err, err[-2000:]
  assert not (tmp_path / 'run').exists()


def _default_stop_signals():
  """For a child process that is sent a stop signal as it starts: SIGINT and SIGTERM at their defaults,
  whatever this test process has (a child inherits an ignored signal, and Python leaves an ignored
  SIGINT ignored until the tool's own handler is in place: the signal was lost, found in CI)."""
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_DFL)


def _wait_until_it_catches_sigterm(p, timeout=120):
  """Until process ``p`` handles SIGTERM (its SigCgt mask in /proc; Python itself catches only SIGINT), or
  ``timeout`` seconds."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and p.poll() is None:
    try:
      caught = next(int(l.split()[1], 16) for l in open(f'/proc/{p.pid}/status') if l.startswith('SigCgt:'))
    except (OSError, StopIteration):
      caught = 0
    if caught & (1 << (signal.SIGTERM - 1)):
      return
    time.sleep(0.01)


@pytest.mark.parametrize('tool, code', [(('-m', 'tpm_jax.export', '--workdir', '{finished}', '--output', '{out}'), 1),
                                        (('-m', 'tpm_jax.sweep', '--checkpoint', '{finished}', '--reductions', 'none',
                                          '--workdir', '{out}'), 0)], ids=['export', 'sweep'])
def test_ctrl_c_while_a_tool_imports_is_one_line(tmp_path, finished, tool, code):
  """``python -m tpm_jax.export`` and ``python -m tpm_jax.sweep`` take SIGINT over before JAX is
  imported (``import tpm_jax`` is light): Ctrl-C then is one line, nothing written, no traceback."""
  args = [a.format(finished=finished, out=tmp_path / 'out') for a in tool]
  p = subprocess.Popen([sys.executable, *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       cwd=ROOT, preexec_fn=_default_stop_signals)
  _wait_until_it_catches_sigterm(p)  # the tool's start-up handler is in place (a loaded machine: not after 0.5 s)
  time.sleep(0.2)  # JAX is being imported
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=120)
  assert p.returncode == code and 'stopped by SIGINT' in err and 'Traceback' not in err, err[-2000:]
  assert len(err.strip().splitlines()) == 1 and not (tmp_path / 'out').exists()


@pytest.fixture
def tool_signals():
  """For a test that calls ``cli.stop_on_signals`` in this process: the hooks it installs and its record
  of raised signals as they were, afterwards (a later in-process tool would otherwise end as after a
  stop: ``os._exit``); the signal handlers are restored for every test (conftest)."""
  from tpm_jax import cli
  hooks = sys.unraisablehook, sys.excepthook
  yield
  sys.unraisablehook, sys.excepthook = hooks
  cli._RAISED.clear()


FINISHED_THEN_SLOW_TEARDOWN = """
import os, time
from tpm_jax import cli

class Slow:
  def __del__(self):  # runs while Python tears the modules down, after it reset the signals it handled
    os.write(1, b'tearing down\\n')
    time.sleep(3)

keep = Slow()
cli.finished()
"""


def test_a_signal_after_a_tool_finished_changes_nothing_even_while_python_shuts_down():
  """``cli.finished`` (eval.py, the export and the sweep once their output is written): a stop signal
  from then on, also while Python's shutdown tears JAX down (where it had reset a handled signal to
  the default: exit code 143, no line; the hostile pass's S-EVAL-END, S-EXP-END, SWEND-143), leaves
  the tool to end with its own exit code."""
  p = subprocess.Popen([sys.executable, '-c', FINISHED_THEN_SLOW_TEARDOWN], env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  assert p.stdout.readline() == 'tearing down\n'
  p.send_signal(signal.SIGTERM)
  p.send_signal(signal.SIGINT)
  _, err = p.communicate(timeout=60)
  assert p.returncode == 0 and not err, err


def test_a_signal_inside_a_garbage_collection_callback_still_stops_the_tool(tool_signals):
  # JAX registers a gc callback; an exception a signal handler raises inside one is 'ignored' by Python and
  # the program went on (found by CI: train.py printed that it stopped, then carried on)
  import gc

  from tpm_jax.cli import Interrupted, stop_on_signals
  sent = []

  def callback(phase, info):
    if phase == 'start' and not sent:
      sent.append(1)
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(10000):  # the handler runs here, inside the callback
        pass
  stop_on_signals()
  gc.callbacks.append(callback)
  try:
    with pytest.raises(Interrupted, match='SIGTERM'):
      gc.collect()
      gc.callbacks.remove(callback)
      time.sleep(5)  # the signal, sent again, lands here
  finally:
    if callback in gc.callbacks:
      gc.callbacks.remove(callback)
  assert sent


def test_a_signal_inside_a_weakref_callback_still_stops_the_tool(tool_signals):
  """Python swallows an exception raised in a weakref callback too ('Exception ignored in', found when
  a collection ran the callbacks of a finished run's objects): the signal is sent again."""
  import weakref

  from tpm_jax.cli import Interrupted, stop_on_signals

  class Thing:
    pass

  def callback(_):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10000):  # the handler runs here, inside the callback
      pass
  stop_on_signals()
  thing = Thing()
  ref = weakref.ref(thing, callback)
  with pytest.raises(Interrupted, match='SIGTERM'):
    del thing
    time.sleep(5)  # the signal, sent again, lands here
  assert ref() is None


def test_a_stop_during_a_write_that_must_finish_is_raised_when_it_ends(tool_signals):
  """The export's Orbax save runs under ``cli.stops_deferred``: a stop cut it short, and TensorStore's
  own threads went on writing into the folder the export had just removed (the hostile pass's S1,
  2 of 18 stops). Now the write ends, then the stop is raised."""
  from tpm_jax import cli
  cli.stop_on_signals()
  written = []
  with pytest.raises(cli.Interrupted, match='SIGTERM'):
    with cli.stops_deferred():
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.2)  # the handler ran meanwhile
      written.append('all')
  assert written == ['all'] and cli._RAISED  # ended as a stop (exit_process: os._exit)


def test_signals_while_a_tool_stops_are_the_same_request(tool_signals):
  """Ctrl-C pressed again while the tool is stopping (or JAX's exit clean-up runs) raises nothing more
  (found by the hostile pass: a traceback from an atexit callback after the one line); a signal
  REPEAT_S later is a new request."""
  from tpm_jax import cli
  cli.stop_on_signals()
  with pytest.raises(cli.Interrupted) as first:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
  assert first.value.signal_name == 'SIGINT'
  for s in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
    os.kill(os.getpid(), s)
    time.sleep(0.05)  # handled here, without an exception
  time.sleep(cli.REPEAT_S)
  with pytest.raises(cli.Interrupted, match='SIGTERM'):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)


def test_a_stop_while_a_checkpoint_is_read_is_a_stop_not_a_damaged_checkpoint(finished, monkeypatch):
  """Ctrl-C while Orbax restores (found by the hostile pass: eval.py said the export was 'not an
  export of this model'): ``Interrupted`` is a BaseException, as KeyboardInterrupt is, so the code
  that turns a library's errors into 'this file is damaged' lets it through."""
  import orbax.checkpoint as ocp

  from tpm_jax import export
  from tpm_jax.cli import Interrupted
  assert not issubclass(Interrupted, Exception)  # as KeyboardInterrupt

  def restore(*args, **kwargs):
    raise Interrupted('SIGINT')
  monkeypatch.setattr(ocp.StandardCheckpointer, 'restore', restore)
  with pytest.raises(Interrupted):
    export.restore_from_workdir(str(finished))


def test_a_stop_a_library_turns_into_its_own_error_is_reported_as_the_stop(tmp_path, finished):
  """TensorStore turns a read cut short by the stop into 'Encountered error while reading ...' (found
  by the hostile pass, via Orbax's restore): the tool reports the stop, not a damaged checkpoint."""
  code = f"""
import os, signal, sys
import orbax.checkpoint as ocp
from tpm_jax.export import main
def restore(*args, **kwargs):
  try:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100000):  # the handler raises here, as in a read
      pass
  except BaseException:
    raise ValueError('Encountered error while reading array index') from None
ocp.StandardCheckpointer.restore = restore
main(['--workdir', {str(finished)!r}, '--output', {str(tmp_path / 'out')!r}])
"""
  res = subprocess.run([sys.executable, '-c', code], env=_env(), capture_output=True, text=True, timeout=300)
  assert (res.returncode, res.stderr.strip()) == (1, 'error: stopped by SIGINT; nothing was written'), res.stderr[-2000:]
  assert not (tmp_path / 'out').exists()


def test_a_stop_inside_an_asyncio_callback_is_not_lost(tool_signals):
  """Orbax restores inside asyncio, which logs an exception raised in a callback and goes on (found by
  the hostile pass: eval.py stopped during a restore ran to the end): asyncio re-raises ``Interrupted``."""
  import asyncio

  from tpm_jax.cli import Interrupted, stop_on_signals

  def callback():
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10000):  # the handler runs here, inside the callback
      pass

  async def restore():
    asyncio.get_running_loop().call_soon(callback)
    await asyncio.sleep(2)
  stop_on_signals()
  with pytest.raises(Interrupted, match='SIGTERM'):
    asyncio.run(restore())


def test_a_tool_stopped_while_jax_compiles_ends_with_its_line_not_a_crash():
  """Ctrl-C during a compile: JAX goes on compiling in its own threads after the wait is cut short;
  a plain ``sys.exit`` then tears the backend down under them (a segfault after the tool's last
  line, found by the hostile pass in the sweep); ``cli.exit_process`` ends the process cleanly."""
  code = """
import os, signal, sys, threading
import jax, jax.numpy as jnp
from tpm_jax import cli
cli.stop_on_signals()
def f(x):  # about 5 s to compile
  for i in range(300):
    x = jnp.tanh(x @ x.T + i) * jnp.sin(x)
  return x
lowered = jax.jit(f).lower(jnp.ones((64, 64)))
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
  lowered.compile()
  print('compiled', flush=True)
except cli.Interrupted as e:
  print(f'stopped by {e.signal_name}', flush=True)
cli.exit_process(0)
"""
  env = {k: v for k, v in _env().items() if k not in ('XLA_FLAGS', 'JAX_COMPILATION_CACHE_DIR')}  # a real compile
  res = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
  assert (res.returncode, res.stdout) == (0, 'stopped by SIGINT\n'), (res.returncode, res.stdout, res.stderr[-2000:])


# -- outputs that never destroy -----------------------------------------------------------------
def test_export_never_destroys(tmp_path, finished, capsys, sigterm_once_written):
  workdir = _copy(finished, tmp_path / 'run')
  before = _listing(workdir)
  mine = tmp_path / 'mine'
  (mine / 'params').mkdir(parents=True)
  (mine / 'params' / 'notes.txt').write_text('my work')
  (mine / 'config.json').write_text('{"mine": true}')
  os.symlink(mine, tmp_path / 'link')
  os.symlink(tmp_path / 'weights.safetensors', tmp_path / 'wlink.safetensors')
  os.symlink(tmp_path / 'loop', tmp_path / 'loop')
  from tpm_jax import export
  (tmp_path / 'weights.safetensors').write_text('my weights')
  parent = tmp_path / 'parent'
  _copy(finished, parent / 'run')
  # a run starting up holds only its lock so far; a sweep's folder holds its plan (hostile pass 16b's X5, X4b)
  (tmp_path / 'starting' / 'run').mkdir(parents=True)
  (tmp_path / 'starting' / 'run' / '.lock').write_text('pid 1 on host since now (train.py)')
  (tmp_path / 'sweeping' / 'sw').mkdir(parents=True)
  (tmp_path / 'sweeping' / 'sw' / 'sweep.json').write_text('{}')
  refused = [(['--output', str(mine)], 'not written by the export'), (['--output', str(workdir)], 'inside the workdir'),
             (['--output', str(parent), '--overwrite'], f'replacing it would delete {parent / "run"}, a training '
                                                         f'workdir; choose a new folder'),
             (['--output', str(tmp_path / 'starting'), '--overwrite'],
              'starting/run, a folder a run or tool holds or held its lock on'),
             (['--output', str(tmp_path / 'sweeping'), '--overwrite'], "sweeping/sw, a sweep's folder"),
             (['--output', str(tmp_path / 'sweeping' / 'sw' / 'evals'), '--overwrite'],  # pass 18's L4: replaced
              f'is inside the sweep folder {tmp_path / "sweeping" / "sw"}'),  # the sweep's evaluations
             (['--output', str(tmp_path / 'out'), '--safetensors', str(tmp_path / 'weights.safetensors')],
              'not written by this tool; choose another name, or remove it first, or --overwrite to replace it'),
             (['--output', str(tmp_path / 'out.safetensors'), '--safetensors', str(tmp_path / 'out.safetensors')],
              'the export folder or inside it'),
             (['--output', str(tmp_path / 'out'), '--safetensors', str(workdir / 'checkpoints' / '4' / 'w.safetensors')],
              'inside the training workdir'),
             (['--output', str(workdir / 'checkpoints' / '4')], 'inside the workdir'),
             (['--output', str(tmp_path / 'link')], 'it is a symbolic link'),  # pass 12b's O2
             (['--output', str(tmp_path / 'out'), '--safetensors', str(tmp_path / 'wlink.safetensors')],
              'it is a symbolic link'),  # pass 13b's Os1 (eval.py's --output is the same check: Oe1)
             (['--output', str(tmp_path / 'loop' / 'sub')], 'loop is a link that leads nowhere'),  # O5c
             (['--output', str(tmp_path / 'out'), '--step', '3'], '--step=3'),
             (['--output', str(tmp_path / 'out'), '--safetensors', str(tmp_path / 'missing' / 'w.safetensors')],
              'does not exist')]
  for args, words in refused:  # the command line's own function, in this process: exit code 2, one line
    with pytest.raises(SystemExit) as e:
      export.main(['--workdir', str(workdir), *args])
    assert e.value.code == 2
    assert words in capsys.readouterr().err
  assert (mine / 'params' / 'notes.txt').read_text() == 'my work' and _listing(workdir) == before
  assert (tmp_path / 'weights.safetensors').read_text() == 'my weights' and (parent / 'run' / 'final.json').exists()
  assert not (tmp_path / 'out').exists()
  # an earlier export is replaced whole; a killed re-export leaves the old one intact
  p = subprocess.Popen([sys.executable, '-m', 'tpm_jax.export', '--workdir', str(workdir), '--output',
                        str(tmp_path / 'out'), '--step', '2'], env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  code, _, err = sigterm_once_written(p, tmp_path / 'out' / 'export.json')  # SIGTERM as it ends: still exit 0
  assert code == 0 and 'Traceback' not in err, err[-2000:]
  p = subprocess.Popen([sys.executable, '-m', 'tpm_jax.export', '--workdir', str(workdir), '--output',
                        str(tmp_path / 'out'), '--step', '4'], env=_env(), cwd=ROOT)
  time.sleep(3.0)
  p.kill()
  p.wait()
  import tpm_jax
  info = json.load(open(tmp_path / 'out' / 'export.json'))
  assert info['step'] in (2, 4)  # the old export or the new one, whole
  tpm_jax.load_model(str(tmp_path / 'out'))  # verified against its checksums
  assert _listing(workdir) == before
  # what a re-export killed part-way leaves (its files under its dead pid) is tidied by the next one;
  # an earlier export it had moved aside comes back when the output is missing
  from tpm_jax.export import exporting
  out, dead = tmp_path / 'out', p.pid
  os.rename(out, f'{out}.replaced-{dead}')
  os.makedirs(f'{out}.writing-{dead}/params')
  (tmp_path / f'w.safetensors.writing-{dead}.safetensors').write_text('half')
  from tpm_jax import evaluation  # a reader of the missing export names the one moved aside (pass 16b's SX2)
  with pytest.raises(ConfigError, match=f'out.replaced-{dead} beside it is the export an interrupted export moved'):
    evaluation.load_trained(str(out))
  exporting._recover_interrupted(str(out), str(tmp_path / 'w.safetensors'))
  assert json.load(open(out / 'export.json'))['step'] == info['step']
  os.rename(out, f'{out}.replaced-{dead}')
  export.export(str(workdir), str(out), step=4, safetensors=str(tmp_path / 'again.safetensors'))
  assert json.load(open(out / 'export.json'))['step'] == 4
  assert not [n for n in os.listdir(tmp_path) if '.writing-' in n or '.replaced-' in n]
  # the same export again: its own .safetensors file is replaced, no --overwrite needed
  export.export(str(workdir), str(out), step=4, safetensors=str(tmp_path / 'again.safetensors'))


def test_export_overwrite_never_replaces_a_folder_a_running_tool_uses(tmp_path, finished, capsys):
  """A run holds its workdir's lock for seconds before it writes its first file, and an export writes beside its
  output: ``export --overwrite`` over a folder holding either is refused (hostile pass 17's X5w, CC2_par)."""
  from tpm_jax import export
  run = tmp_path / 'starting' / 'run'
  run.mkdir(parents=True)
  holder = subprocess.Popen([sys.executable, '-c', 'import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); '
                             'fcntl.flock(fd, fcntl.LOCK_EX); print(1, flush=True); time.sleep(120)', str(run)],
                            stdout=subprocess.PIPE, text=True)
  writer = subprocess.Popen(['sleep', '120'])
  try:
    holder.stdout.readline()  # it holds the lock now
    (tmp_path / 'exporting' / f'out.writing-{writer.pid}').mkdir(parents=True)
    for folder, what in (('starting', 'starting/run, a folder a run or tool holds or held its lock on'),
                         ('exporting', f'exporting, a folder where a running process writes out.writing-{writer.pid}')):
      with pytest.raises(SystemExit) as e:  # named as what it is (hostile pass 17b's N4)
        export.main(['--workdir', str(finished), '--output', str(tmp_path / folder), '--overwrite'])
      err = capsys.readouterr().err
      assert e.value.code == 2 and f'replacing it would delete {tmp_path / what}' in err, err
    assert run.is_dir() and (tmp_path / 'exporting' / f'out.writing-{writer.pid}').is_dir()
  finally:
    for p in (holder, writer):
      p.kill()
      p.wait()
  # a run that starts in the folder while the export is written (after its checks): seen again before the folder is
  # replaced, and nothing is (hostile pass 17b's X5w)
  out = tmp_path / 'late'
  (out / 'mine').mkdir(parents=True)
  starts = lambda: (out / 'mine' / 'run').mkdir() or (out / 'mine' / 'run' / '.lock').write_text('pid 1 (train.py)')
  with pytest.raises(CheckpointError, match=f'{out}/mine/run came into use while the export was written \\(a folder a '
                                            f'run or tool holds or held its lock on\\); nothing was replaced'):
    export.export(str(finished), str(out), overwrite=True, before_commit=starts)
  assert (out / 'mine' / 'run' / '.lock').is_file() and not [n for n in os.listdir(tmp_path) if '.replaced-' in n]


def test_a_second_export_into_one_output_is_refused_while_the_first_runs(tmp_path, finished, capsys):
  """Two exports into one --output and one --safetensors could leave the folder of one and the timm file of the
  other, both exit 0 (hostile pass 14b's CC2). An export that finds a running export's .writing-<pid> beside its
  --output or --safetensors is refused (exit 2, one line, nothing left); once that process is gone its leftovers
  are tidied and the export goes on, and its line names the step it wrote."""
  from tpm_jax import export
  out, st = tmp_path / 'out', tmp_path / 'w.safetensors'
  other = subprocess.Popen(['sleep', '120'])  # a running process, holding what an export writes while it runs
  try:
    os.makedirs(f'{out}.writing-{other.pid}/params')
    (tmp_path / f'w.safetensors.writing-{other.pid}.safetensors').write_text('half')
    before = sorted(os.listdir(tmp_path))
    for args, flag in ((['--output', str(out)], '--output'),
                       (['--output', str(tmp_path / 'out2'), '--safetensors', str(st)], '--safetensors')):
      with pytest.raises(SystemExit) as e:
        export.main(['--workdir', str(finished), *args])
      err = capsys.readouterr().err
      assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
      assert f'{flag}=' in err and f'another export (pid {other.pid}' in err, err
      assert sorted(os.listdir(tmp_path)) == before  # nothing of its own left
  finally:
    other.kill()
    other.wait()
  export.main(['--workdir', str(finished), '--output', str(out), '--safetensors', str(st), '--step', '2'])
  assert capsys.readouterr().out.strip() == f'exported {finished} step 2 to {out}'
  assert json.load(open(out / 'export.json'))['step'] == 2 and st.is_file()
  assert not [n for n in os.listdir(tmp_path) if '.writing-' in n]


def test_eval_output_is_checked_before_the_evaluation(tmp_path, finished, finished_export):
  """--output: a missing folder, a file eval.py did not write, a path inside a training workdir or an
  export: one line before anything is evaluated, nothing changed. eval.py's check of --output is
  ``preflight.check_output_file`` with ``ours=evaluation.an_eval_result``: the cases through it here,
  one through ``evaluation.prepare`` and one through eval.py's process (the line, the exit code,
  nothing evaluated)."""
  from tpm_jax import preflight
  (tmp_path / 'notes.json').write_text('{"mine": 1}')
  before = _listing(finished)
  not_ours = lambda path: False  # evaluation.an_eval_result on the files below: none is an eval result
  for output, words in ((tmp_path / 'missing' / 'eval.json', 'does not exist'),
                        (finished / 'metrics.jsonl', 'inside the training workdir'),
                        (os.path.join(finished_export, 'eval.json'), 'inside the export')):
    with pytest.raises(ConfigError, match=words):
      preflight.check_output_file('--output', str(output), ours=not_ours)
  from tpm_jax import evaluation
  with pytest.raises(ConfigError, match='was not written by this tool'):  # eval.py's whole check, in this process
    evaluation.prepare(checkpoint_path=str(finished), output=str(tmp_path / 'notes.json'))
  res = _tool(os.path.join(ROOT, 'eval.py'), '--checkpoint', str(finished), '--output', str(tmp_path / 'eval.json'),
              '--batch_size', '0')
  assert res.returncode == 2 and '--batch_size=0' in _one_line_error(res), res.stderr[-2000:]
  assert 'top1' not in res.stdout and not (tmp_path / 'eval.json').exists()  # nothing was evaluated
  assert (tmp_path / 'notes.json').read_text() == '{"mine": 1}' and _listing(finished) == before


# -- verification without holes; nothing hangs --------------------------------------------------
def test_an_export_without_checksums_is_refused_everywhere(tmp_path, data_dir, finished_export):
  import tpm_jax
  from tpm_jax.checkpoint import CheckpointError
  _copy(finished_export, tmp_path / 'export')
  os.remove(tmp_path / 'export' / 'checksums.json')
  with pytest.raises(CheckpointError, match='has no checksums.json'):
    tpm_jax.load_model(str(tmp_path / 'export'))
  res = _tool(os.path.join(ROOT, 'eval.py'), '--checkpoint', str(tmp_path / 'export'))
  assert res.returncode == 1 and 'has no checksums.json' in _one_line_error(res)
  _, error, _ = _train_here(tmp_path / 'run', data_dir, f'--config.init.checkpoint={tmp_path / "export"}')  # train.py's
  assert isinstance(error, ConfigError) and 'has no checksums.json' in str(error), error  # trainer: exit 2
  assert not (tmp_path / 'run').exists()


def test_an_export_damaged_as_written_is_named_damaged_not_another_model(tmp_path, finished_export):
  import tpm_jax
  from tpm_jax import checkpoint
  from tpm_jax.checkpoint import CheckpointError
  out = _copy(finished_export, tmp_path / 'export')
  files = [os.path.join(d, f) for d, _, fs in os.walk(out / 'params') for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, 'r+b') as f:  # truncated, then checksummed again: it passes verification
    f.truncate(100)
  os.remove(out / 'checksums.json')
  checkpoint.write_checksums(str(out))
  with pytest.raises(CheckpointError) as e:
    tpm_jax.load_model(str(out))
  assert 'cannot be read' in str(e.value) and 'not an export of this model' not in str(e.value), e.value
  assert '<bound method' not in str(e.value) and len(str(e.value).splitlines()) == 1, e.value


def test_a_fifo_or_a_looping_link_where_a_json_file_belongs_is_refused_without_blocking(tmp_path, finished,
                                                                                           finished_export):
  """A FIFO as a step's or an export's checksums.json, or as a sweep run's final.json (found by the
  hostile pass: every reader waited for a writer forever), and a symlink to itself: refused, never
  opened (stat before open)."""
  from tpm_jax import export, sweep
  from tpm_jax.checkpoint import verify_checksums
  from tpm_jax.files import read_json_object
  signal.alarm(60)  # a regression blocks in open(): fail instead of hanging the suite
  try:
    run = _copy(finished, tmp_path / 'run')
    os.remove(run / 'checkpoints' / '4' / 'checksums.json')
    os.mkfifo(run / 'checkpoints' / '4' / 'checksums.json')
    with pytest.raises(CheckpointError, match='checksums.json is unreadable'):
      verify_checksums(str(run / 'checkpoints' / '4'), 4)
    out = _copy(finished_export, tmp_path / 'export')
    os.remove(out / 'checksums.json')
    os.mkfifo(out / 'checksums.json')
    with pytest.raises(CheckpointError, match='checksums.json is unreadable'):
      export.load_model(str(out))
    for name in ('config.json', 'export.json'):  # named as what they are, not as missing
      out = _copy(finished_export, tmp_path / f'export_{name}')
      os.remove(out / name)
      os.mkfifo(out / name)
      with pytest.raises(CheckpointError, match=f'its {name} is not a regular file'):
        export.load_model(str(out))
    os.remove(run / 'final.json')
    os.mkfifo(run / 'final.json')
    with pytest.raises(ConfigError, match='final.json is unreadable'):
      sweep.final_of(str(run))
    os.remove(run / 'final.json')
    os.symlink(run / 'final.json', run / 'final.json')  # a link to itself
    with pytest.raises(OSError):
      read_json_object(str(run / 'final.json'))
    with pytest.raises(ConfigError, match='final.json is unreadable'):
      sweep.final_of(str(run))
  finally:
    signal.alarm(0)


def test_an_init_export_with_non_finite_weights_is_bad_input_and_nothing_is_written(tmp_path, data_dir,
                                                                                   finished_export):
  """NaN parameters behind valid checksums in the export named by init.checkpoint (hostile pass 5:
  exit 1 and an empty workdir left behind): refused as bad input (ConfigError: exit 2), no workdir."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  from tpm_jax.checkpoint.integrity import write_checksums
  out = _copy(finished_export, tmp_path / 'export')
  params = ocp.StandardCheckpointer().restore(str(out / 'params'))
  leaves, tree = jax.tree.flatten(params)
  leaves[0] = np.full_like(np.asarray(leaves[0]), np.nan)
  shutil.rmtree(out / 'params')
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(str(out / 'params'), jax.tree.unflatten(tree, leaves))
  write_checksums(str(out))
  _, error, _ = _train_here(tmp_path / 'run', data_dir, f'--config.init.checkpoint={out}')
  assert isinstance(error, ConfigError) and 'is not accepted' in str(error) and 'non-finite' in str(error), error
  assert not (tmp_path / 'run').exists()


def test_a_checkpoint_that_is_not_a_directory_and_a_looping_workdir_link_are_named_as_such(tmp_path):
  """Hostile pass 5: eval.py --checkpoint /dev/zero exited 1 (a missing path exits 2); a workdir that is
  a link to itself was called 'a file'."""
  from tpm_jax import evaluation, preflight
  with pytest.raises(ConfigError, match='--checkpoint=/dev/zero is not accepted: not a directory'):
    evaluation.load_trained('/dev/zero')
  os.symlink(tmp_path / 'loop', tmp_path / 'loop')
  with pytest.raises(ConfigError, match='is a link that leads nowhere'):
    preflight.check_workdir_path(str(tmp_path / 'loop'))
  # Hostile pass 8: a folder that is neither a workdir nor an export (empty, a config.json alone, a
  # sweep's folder) was a run-time fault (exit 1) not naming the flag; two sources of weights, one ignored
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'config_only').mkdir()
  (tmp_path / 'config_only' / 'config.json').write_text('{}')
  for folder in ('empty', 'config_only'):
    with pytest.raises(ConfigError, match=f'--checkpoint={tmp_path / folder} is not accepted: neither a training workdir'):
      evaluation.prepare(checkpoint_path=str(tmp_path / folder))
  with pytest.raises(ConfigError, match='--checkpoint and --timm_checkpoint are both given'):
    evaluation.prepare(checkpoint_path=str(tmp_path / 'empty'), timm_checkpoint=str(tmp_path / 'w.npz'))


def _fill(path):
  """Fill the file system of folder ``path`` to the last byte (a full disk)."""
  try:
    with open(path / 'fill', 'wb') as f:
      while True:
        f.write(b'\0' * 4096)
        f.flush()
  except OSError:
    pass


def test_a_full_disk_under_export_eval_and_the_sweep_is_one_line_and_leaves_nothing(tmp_path, finished,
                                                                                      finished_export, capsys, tmpfs):
  """Hostile pass 8: export (Orbax's RESOURCE_EXHAUSTED, safetensors' SafetensorError), eval.py's
  --output and the sweep's tables on a full disk were tracebacks. Now one line each (exit 1), and
  nothing half-written is left."""
  from tpm_jax import export, sweep
  from tpm_jax.checkpoint import CheckpointWriteError
  full = tmpfs(tmp_path / 'full', '150k')
  _fill(full)
  with pytest.raises(CheckpointWriteError, match=f'{full / "ex"}: writing the export failed \\(No space left on device\\); '
                     'nothing was written$') as e:  # hostile pass 22's OUT02: TensorStore's text, cut mid-path
    export.export(str(finished), str(full / 'ex'))
  assert '\n' not in str(e.value)
  with pytest.raises(CheckpointWriteError, match='--safetensors=.*m.safetensors: writing it failed') as e:
    export.export(str(finished), str(tmp_path / 'ex2'), safetensors=str(full / 'm.safetensors'))
  assert '\n' not in str(e.value) and not (tmp_path / 'ex2').exists()
  assert sweep.main(['--checkpoint', str(finished_export), '--reductions', 'none', '--workdir', str(full / 'sw'),
                     '--throughput_batch', '2']) == 1
  err = capsys.readouterr().err
  assert 'cannot be written (No space left on device)' in err and len(err.strip().splitlines()) == 1, err
  res = _tool(os.path.join(ROOT, 'eval.py'), '--checkpoint', str(finished_export), '--output', str(full / 'e.json'),
              '--timed_runs', '1', '--batch_size', '2')
  assert res.returncode == 1 and 'cannot be written (No space left on device)' in _one_line_error(res), res.stderr[-2000:]
  assert 'Traceback' not in res.stderr and 'top1' in res.stdout  # the results were printed before
  # no .writing-<pid>, no half-written export or file; the sweep's folder, which its lock created and in
  # which nothing could be written, is removed with the lock
  assert sorted(os.listdir(full)) == ['fill']


def test_special_and_wrong_paths_are_one_line_and_never_block(tmp_path, data_dir, finished):
  """Weights, exports and workdirs that are FIFOs, directories, files or workdirs: one line each,
  before anything is written; train.py and eval.py's check on a FIFO return at once (stat before open)."""
  from configs import deit
  from tpm_jax import trainer
  from tpm_jax.config import ConfigError
  fifo = tmp_path / 'weights.safetensors'
  os.mkfifo(fifo)
  (tmp_path / 'a_file').write_text('x')

  def config(**init):
    c = deit.get_config('smoke')
    c.dataset.data_dir = str(data_dir)
    c.init.update(init)
    return c
  cases = [
      (dict(timm_checkpoint=str(tmp_path)), tmp_path / 'run', 'a directory'),
      (dict(checkpoint=str(fifo)), tmp_path / 'run', 'not a directory'),
      (dict(checkpoint=str(finished)), tmp_path / 'run', 'is a training workdir, not an export'),
      (dict(checkpoint=str(tmp_path / 'a_file')), tmp_path / 'run', 'not a directory'),
      ({}, tmp_path / 'a_file' / 'run', 'is a file'),
      ({}, tmp_path / ('x' * 300), 'longer than'),
      (dict(timm_checkpoint=str(tmp_path / 'cut.safetensors')), tmp_path / 'run', 'cannot read .* as safetensors'),
      ({}, tmp_path / 'fifo_metrics', 'metrics.jsonl is not a regular file'),
      ({}, tmp_path / 'a_sweep', "a sweep's folder"),
      ({}, tmp_path / 'lock_folder', '.lock is not a regular file'),
      ({}, tmp_path / 'an_export' / 'run', 'inside the export'),  # its checksums would fail
      ({}, finished / 'checkpoints' / 'run', 'inside the training workdir'),
  ]
  (tmp_path / 'an_export' / 'params').mkdir(parents=True)
  (tmp_path / 'an_export' / 'config.json').write_text('{}')
  from safetensors.numpy import save_file
  save_file({'pos_embed': __import__('numpy').zeros((1, 65, 48), 'float32')}, str(tmp_path / 'cut.safetensors'))
  whole = (tmp_path / 'cut.safetensors').read_bytes()
  (tmp_path / 'cut.safetensors').write_bytes(whole[:len(whole) // 3])  # truncated, as by a failed copy
  (tmp_path / 'a_sweep').mkdir()
  (tmp_path / 'a_sweep' / 'sweep.json').write_text('{}')
  (tmp_path / 'fifo_metrics').mkdir()
  os.mkfifo(tmp_path / 'fifo_metrics' / 'metrics.jsonl')  # a run would block forever opening it
  (tmp_path / 'lock_folder' / '.lock').mkdir(parents=True)
  for init, workdir, words in cases:
    with pytest.raises(ConfigError, match=words) as e:
      trainer.train_and_evaluate(config(**init), str(workdir))
    assert '\n' not in str(e.value)
  res = subprocess.run(_cmd(tmp_path / 'run', data_dir, f'--config.init.timm_checkpoint={fifo}'), env=_env(),
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 2 and 'not a regular file' in _one_line_error(res), res.stderr[-2000:]
  from tpm_jax import evaluation
  from tpm_jax.config import RunConfig
  with pytest.raises(ConfigError, match='not a regular file'):  # eval.py's check, in this process: never opened
    evaluation.prepare(timm_checkpoint=str(fifo), given=RunConfig.from_any(config()))
  assert not (tmp_path / 'run').exists() and sorted(os.listdir(tmp_path / 'an_export')) == ['config.json', 'params']
  assert not (finished / 'checkpoints' / 'run').exists()


def test_non_finite_timm_weights_are_refused_before_anything_is_written(tmp_path, data_dir):
  import numpy as np
  from safetensors.numpy import save_file

  import tpm_jax
  from tpm_jax.models.registry import model_from_config
  from tpm_jax.timm_weights import timm_state_dict
  sd = timm_state_dict(model_from_config(_smoke_config()))
  sd['blocks.1.mlp.fc1.weight'][0, 0] = np.nan
  save_file(sd, str(tmp_path / 'nan.safetensors'))
  _, error, _ = _train_here(tmp_path / 'run', data_dir, f'--config.init.timm_checkpoint={tmp_path / "nan.safetensors"}')
  assert isinstance(error, ConfigError), error  # train.py's trainer: exit 2
  assert 'blocks.1.mlp.fc1.weight: the checkpoint holds non-finite values' in str(error)
  assert not (tmp_path / 'run').exists()
  sd['blocks.1.mlp.fc1.weight'] = np.zeros_like(sd['blocks.1.mlp.fc1.weight'], dtype=np.int32)  # cast, all zeros
  with pytest.raises(ValueError, match='blocks.1.mlp.fc1.weight: the checkpoint holds int32 values'):
    tpm_jax.load_timm_weights(model_from_config(_smoke_config()), sd)
  del tpm_jax


def test_a_train_split_with_other_classes_or_files_is_refused_on_resume(tmp_path):
  """An image folder whose class folder was renamed (same size; every label now means another class)
  or whose images were swapped for others: the saved input position and labels would mean other
  data, so the resume is refused (exit 2), nothing written."""
  import numpy as np
  from PIL import Image

  from configs import deit
  from tpm_jax import trainer
  from tpm_jax.checkpoint import ResumeMismatch
  root = tmp_path / 'folder'
  rs = np.random.RandomState(0)
  for cls in ('a', 'b', 'c'):
    for split, n in (('train', 6), ('validation', 2)):
      (root / split / cls).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rs.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / cls / f'{i}.png')
  c = deit.get_config('smoke')
  c.dataset.image_folder, c.model.num_classes, c.total_steps = str(root), 3, 2
  c.model.depth, c.reduction.locations = 2, '1'  # SHALLOW
  trainer.train_and_evaluate(c, str(tmp_path / 'run'))
  from tpm_jax import evaluation, export
  from tpm_jax.config import ConfigError, RunConfig
  exported = export.export(str(tmp_path / 'run'), str(tmp_path / 'export'))
  c.total_steps = 4

  def refused():
    before = _listing(tmp_path / 'run')
    with pytest.raises(ResumeMismatch, match=r"dataset.train_split='train' of image folder .* holds other examples"):
      trainer.train_and_evaluate(c, str(tmp_path / 'run'))
    assert _listing(tmp_path / 'run') == before
  for split in ('train', 'validation'):  # the class names: labels 0, 1, 2 are now b, c, z
    (root / split / 'a').rename(root / split / 'z')
  refused()
  for trained in (str(tmp_path / 'run'), exported):  # eval.py's and the sweep's check: mislabelled results
    assert evaluation.trained_label_names(trained) == ['a', 'b', 'c']
    with pytest.raises(ConfigError, match=r"its classes are not those the model was trained on \(label 0: 'a' then, "
                                          r"'b' now"):
      evaluation.eval_dataset(RunConfig.from_any(c), 'validation', label_names=evaluation.trained_label_names(trained))
  for split in ('train', 'validation'):
    (root / split / 'z').rename(root / split / 'a')
  (root / 'train' / 'a' / '0.png').rename(root / 'train' / 'a' / '9.png')  # the files, under the same classes
  refused()
  (root / 'train' / 'a' / '9.png').rename(root / 'train' / 'a' / '0.png')  # as saved: it continues
  assert trainer.train_and_evaluate(c, str(tmp_path / 'run'))['step'] == 4


def test_a_sweep_folder_is_its_own(tmp_path, finished, capsys):
  """A sweep inside a training workdir, or --collect_only on a folder that does not exist: one line,
  exit 2, nothing created."""
  from tpm_jax import sweep
  config = os.path.join(ROOT, 'configs/deit.py') + ':smoke'
  before = _listing(finished)
  assert sweep.main(['--config', config, '--sweep', 'seed=0,1', '--workdir', str(finished)]) == 2
  assert 'inside the training workdir' in capsys.readouterr().err and _listing(finished) == before
  assert sweep.main(['--config', config, '--sweep', 'seed=0', '--workdir', str(tmp_path / 'typo'), '--collect_only']) == 2
  assert 'no such sweep folder' in capsys.readouterr().err and not (tmp_path / 'typo').exists()
  mine = tmp_path / 'mine'  # a user's folder with files of the names a sweep writes: never overwritten
  mine.mkdir()
  (mine / 'results.md').write_text('my notes')
  for args in (['--config', config, '--sweep', 'seed=0'], ['--checkpoint', str(finished), '--reductions', 'none']):
    assert sweep.main([*args, '--workdir', str(mine)]) == 2
    assert 'it holds results.md, which a sweep writes' in capsys.readouterr().err
    assert sorted(os.listdir(mine)) == ['results.md'] and (mine / 'results.md').read_text() == 'my notes'


def test_a_model_says_which_images_fit_it():
  """Images of another size, channel count or an empty batch: one line naming what the model takes
  (they gave XLA's broadcasting error or a division by zero)."""
  import jax.numpy as jnp

  import tpm_jax
  model = tpm_jax.create_model('vit_custom', img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)
  forward = tpm_jax.jit_forward(model)
  for shape in ((2, 31, 31, 3), (2, 64, 64, 3), (2, 32, 32, 1), (0, 32, 32, 3), (32, 32, 3)):
    for f in (model, forward):
      with pytest.raises(ValueError, match=r'do not fit this model: expected \(B, 32, 32, 3\) with B >= 1'):
        f(jnp.zeros(shape))


def test_special_files_in_the_data_and_an_empty_workdir_are_refused_without_blocking(tmp_path, data_dir):
  """A FIFO where TFDS reads dataset_info.json would block the run beyond any signal; a data dir that is
  a file or a FIFO is named as such (not as missing ImageNet files); an empty --workdir would train into
  the current directory. Each: one line, nothing written, nothing opened."""
  from tpm_jax import preflight, trainer
  from tpm_jax.config import DataConfig
  copy = _copy(data_dir, tmp_path / 'tfds')
  info = next(copy.rglob('dataset_info.json'))
  info.unlink()
  os.mkfifo(info)
  (tmp_path / 'a_file').write_text('x')
  os.mkfifo(tmp_path / 'a_fifo')
  for where, words in ((copy, f'{info} is not a regular file'), (tmp_path / 'a_file', 'it is not a directory'),
                       (tmp_path / 'a_fifo', 'it is not a directory')):
    with pytest.raises(ConfigError, match=words):
      preflight.check_data(DataConfig(name='imagenet2012', data_dir=str(where)))
  with pytest.raises(ConfigError, match="workdir='' is not accepted: expected a path"):
    trainer.train_and_evaluate(_smoke_config(), '')
  with pytest.raises(ConfigError, match="--output='' is not accepted"):
    preflight.check_output_file('--output', '')

"""Hostile passes 21 and 22's findings (docs/results/hostile/pass21.md, pass22.md), each as a user met it:
bad multi-process flags, --distributed off a cluster, a stop while the processes wait for each other, epoch counts past the step counter, a dotted --sweep key, a sweep folder's evals/ that is a file,
read-only data dirs and quickstart workdirs, another spelling of fashion_mnist, an export with a fusion the
model lacks, a head note said twice, a lowered forward's executable, a .safetensors only its writer reads."""
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx
from test_one_line_errors import _one_line, _run

import tpm_jax
from configs import fmnist
from tpm_jax import distributed, preflight
from tpm_jax.checkpoint.exports import param_mismatch
from tpm_jax.config import ConfigError, DataConfig, RunConfig
from tpm_jax.models.registry import model_from_config
from tpm_jax.sweep.folder import check_sweep_folder
from tpm_jax.sweep.planning import parse_sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('args, env, named', [
    (dict(coordinator_address='127.0.0.1:23457', num_processes=2, process_id=2), {}, '--process_id=2'),  # MP03
    (dict(num_processes=2, process_id=0), {}, '--num_processes=2 needs --coordinator_address'),  # MP04
    (dict(coordinator_address='127.0.0.1:23457', num_processes=2), {}, 'needs --process_id'),
    (dict(coordinator_address='127.0.0.1:99999', num_processes=2, process_id=0), {}, "'127.0.0.1:99999'"),  # MP05
    (dict(coordinator_address='localhost', num_processes=2, process_id=0), {}, 'HOST:PORT'),
    (dict(), {'JAX_NUM_PROCESSES': 'two'}, "JAX_NUM_PROCESSES='two'"),  # MP06
    (dict(num_processes=0), {}, '--num_processes=0'),
    (dict(coordinator_address='127.0.0.1:1234'), {}, 'needs --num_processes'),  # pass 22's MP10
    (dict(coordinator_address='127.0.0.1 :1234', num_processes=2, process_id=0), {}, 'HOST:PORT'),  # MP15
    (dict(coordinator_address='127.0.0.1:\u00b2', num_processes=2, process_id=0), {}, 'HOST:PORT'),  # MP12
])
def test_bad_multi_process_arguments_are_refused_naming_the_flag_or_variable(monkeypatch, args, env, named):
  for k in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  with pytest.raises(ConfigError, match=named.replace('(', r'\(').replace('[', r'\[')):
    distributed.resolve(**args)


def test_a_coordinator_port_in_use_is_refused_for_process_0_only():
  """Pass 22's MP18: JAX's coordinator could not bind the port, then a segmentation fault."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    s.listen()
    address = f'127.0.0.1:{s.getsockname()[1]}'
    with pytest.raises(ConfigError, match=r'is in use on this machine \(process 0 runs the coordinator there\)'):
      distributed.resolve(address, 2, 0)
    assert distributed.resolve(address, 2, 1) == (address, 2, 1)  # process 1 connects to it


def test_good_multi_process_arguments_resolve_from_flags_or_the_environment(monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '[::1]:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('JAX_PROCESS_ID', '1')
  assert distributed.resolve() == ('[::1]:1234', 2, 1)
  assert distributed.resolve('10.0.0.1:80', 4, 3) == ('10.0.0.1:80', 4, 3)


def test_train_py_refuses_a_port_that_cannot_exist_at_once(tmp_path):
  """MP05: JAX waited its 300 s for a coordinator at port 99999, then aborted from C++."""
  res = _run('train.py', '--config', 'configs/fmnist.py:smoke', '--workdir', str(tmp_path / 'r'),
             '--coordinator_address=127.0.0.1:99999', '--num_processes=2', '--process_id=0')
  assert res.returncode == 2, res.stderr[-2000:]
  assert _one_line(res).startswith("error: --coordinator_address='127.0.0.1:99999' is not accepted")
  assert not (tmp_path / 'r').exists()


def test_distributed_off_a_cluster_is_one_line(tmp_path):
  """Pass 22's MP14: bare jax.distributed.initialize() found no TPU pod or SLURM job: a ValueError traceback."""
  res = _run('train.py', '--config', 'configs/fmnist.py:smoke', '--workdir', str(tmp_path / 'r'), '--distributed')
  assert res.returncode == 2, res.stderr[-2000:]
  assert _one_line(res).startswith('error: --distributed found no cluster to join')
  assert not (tmp_path / 'r').exists()


def test_a_stop_while_the_processes_wait_for_each_other_ends_the_process_at_once(tmp_path):
  """Pass 22's MP15, MP17: process 0 of 2, its peer never started, waited JAX's 300 s in C++, where
  Python's handlers do not run (SIGTERM went unanswered), then aborted with a C++ stack dump."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  p = subprocess.Popen([sys.executable, 'train.py', '--config', 'configs/fmnist.py:smoke', '--workdir', str(tmp_path / 'r'),
                        f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', '--process_id=0'], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline and p.poll() is None:  # the coordinator listens: process 0 waits for its peer
    try:
      socket.create_connection(('127.0.0.1', port), 0.2).close()
      break
    except OSError:
      time.sleep(0.2)
  time.sleep(0.5)
  p.send_signal(signal.SIGTERM)
  _, err = p.communicate(timeout=30)  # at once, not after 300 s
  assert p.returncode == 0 and err.strip() == 'stopped by SIGTERM during start-up: nothing was trained or written', err
  assert not (tmp_path / 'r').exists()


@pytest.mark.parametrize('field', ['optim.warmup_epochs', 'keep_warmup_epochs', 'num_epochs'])
def test_every_epoch_count_past_the_step_counter_is_refused_naming_it(field):
  """OS13, OS14, OS18 (AR13's bound covered num_epochs only): an OverflowError traceback, the last two
  after config.json was written. Each count is turned into steps where the run's other counts are,
  before anything is written (trainer.train_and_evaluate)."""
  c = fmnist.get_config('smoke,method=tpm')
  section, _, name = field.rpartition('.')
  setattr(c[section] if section else c, name, 1e308)
  if field == 'num_epochs':
    c.total_steps = 0
  run = RunConfig.from_any(c)
  with pytest.raises(ConfigError, match=rf'{field}=1e\+308 is not accepted: expected at most 2147483647 steps'):
    run.steps(1875.0), run.optim.warmup_steps(1875.0), run.keep_stages(1875.0)
  if field == 'keep_warmup_epochs':  # method none reads no keep-rate warmup: not refused, as a sweep's plan does not
    assert run.replace(reduction=dict(method='none')).keep_stages(1875.0) == [(1, None)]  # refuse it (pass 22's EP12)


def test_a_dotted_sweep_key_is_named_as_a_field_that_cannot_be_swept():
  """SP06, SP07: the line blamed the values ('non-empty values')."""
  with pytest.raises(ConfigError, match=r'--sweep optim.lr: a --config.optim.lr field cannot be swept'):
    parse_sweeps(['optim.lr=1e-3,2e-3'])
  with pytest.raises(ConfigError, match='non-empty values'):
    parse_sweeps(['seed=1,,2'])


def test_a_sweep_folder_whose_evals_or_runs_is_a_file_is_refused_before_any_work(tmp_path):
  """DS14: 'cannot be written (File exists) ... run the same command to go on', every time."""
  for sub in ('evals', 'runs'):
    folder = tmp_path / sub
    folder.mkdir()
    (folder / sub).write_text('x')
    with pytest.raises(ConfigError, match=f'its {sub} is not a folder'):
      check_sweep_folder(str(folder), collect_only=False)


def test_a_read_only_data_dir_or_quickstart_workdir_is_bad_input_naming_it(tmp_path, tmpfs, capsys):
  """OP22, OP25: an errno line (prepare), exit 1 after start-up (train.py); OP23: the quickstart's."""
  read_only_dir = tmpfs(tmp_path / 'ro', '64k', read_only=True)
  from tpm_jax.data.prepare import prepare
  with pytest.raises(ConfigError, match=rf'dataset.data_dir={read_only_dir}/tfds is not accepted: {read_only_dir} is '
                                        r'not writable \(read-only file system'):
    prepare(DataConfig(name='fashion_mnist', data_dir=str(read_only_dir / 'tfds')).validated())
  from tpm_jax import quickstart
  with pytest.raises(SystemExit) as e:
    quickstart.main(['--workdir', str(read_only_dir / 'qs'), '--config_arg', 'smoke'])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == f'error: --workdir {read_only_dir}/qs: {read_only_dir} is not writable ' \
                                            '(read-only file system or permissions)'


def test_fashion_mnist_by_another_spelling_is_prepared_from_debian_s_files():
  """PR25, PR26: 'fashion_mnist:3.0.1' and 'Fashion_MNIST' were sent to the network check."""
  import tensorflow_datasets as tfds

  from tpm_jax.data.prepare import _from_debian
  assert all(_from_debian(tfds.builder(n, data_dir='/nonexistent')) for n in ('fashion_mnist', 'Fashion_MNIST',
                                                                             'fashion_mnist:3.0.1'))
  assert not _from_debian(tfds.builder('mnist', data_dir='/nonexistent'))


def test_an_export_with_a_fusion_the_model_lacks_is_named_not_called_damaged():
  """EX13: the extra parameters passed the fit check, and the restore's failure read 'export it again'."""
  tiny = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, num_classes=10)
  fused = tpm_jax.create_model('vit_custom', reduction=dict(method='tpm', keep_rate=0.5, locations=(2,)),
                               multiscale=dict(method='pool'), **tiny)
  plain = tpm_jax.create_model('vit_custom', reduction=dict(method='tpm', keep_rate=0.5, locations=(2,)), **tiny)
  saved = {'.'.join(map(str, p)): (tuple(v.shape), v.dtype) for p, v in nnx.to_flat_state(nnx.state(fused, nnx.Param))}
  why = param_mismatch(saved, nnx.state(plain, nnx.Param))
  assert why is not None and why.startswith('multiscale.') and 'a multi-scale fusion; this model has none' in why, why
  assert param_mismatch(saved, nnx.state(fused, nnx.Param)) is None


def test_a_timm_head_left_out_is_said_once(tmp_path, caplog):
  """WT43: the start-up check loaded the weights too, and said it as well."""
  c = fmnist.get_config('smoke')
  c.model.num_classes = 1000
  path = tpm_jax.export_timm_weights(model_from_config(RunConfig.from_any(c)), str(tmp_path / 'w.safetensors'))
  c.model.num_classes, c.init.timm_checkpoint = 10, path
  run = RunConfig.from_any(c)
  with caplog.at_level(logging.WARNING):
    preflight.check_init(run, nnx.eval_shape(lambda: model_from_config(run)))
  assert 'head' not in caplog.text, caplog.text


def test_a_lowered_forward_compiles_to_a_function_of_the_images():
  """JF06: the executable took (state, images), which the docstring did not say."""
  model = tpm_jax.create_model('vit_custom', img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
  forward = tpm_jax.jit_forward(model)
  x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
  compiled = forward.lower(x).compile()
  np.testing.assert_array_equal(np.asarray(compiled(x)), np.asarray(forward(x)))
  np.testing.assert_array_equal(np.asarray(compiled(forward.state, x)), np.asarray(forward(x)))  # as it was called
  assert compiled.cost_analysis() is not None and 'HloModule' in forward.lower(x).compile().as_text()
  assert jax.tree.leaves(compiled.state)  # the snapshot, bound


def test_timm_weights_into_a_missing_folder_name_the_folder(tmp_path):
  """Pass 22's WX03: safetensors named its temporary file."""
  model = tpm_jax.create_model('vit_custom', img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
  with pytest.raises(FileNotFoundError, match=f"no such folder to write the .safetensors file into: '{tmp_path}/nodir'"):
    tpm_jax.export_timm_weights(model, str(tmp_path / 'nodir' / 'w.safetensors'))


def test_an_exported_safetensors_file_is_readable_as_the_export_s_other_files(tmp_path):
  """safetensors' save_file writes 0600: another account (a serving job) could not read the weights."""
  model = tpm_jax.create_model('vit_custom', img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
  path = tpm_jax.export_timm_weights(model, str(tmp_path / 'm.safetensors'))
  (tmp_path / 'other').write_text('x')  # a file this process makes, under its umask
  assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(tmp_path / 'other').st_mode)
  assert sorted(os.listdir(tmp_path)) == ['m.safetensors', 'other']


def test_pretrained_weights_without_a_network_are_one_line_at_once(tmp_path):
  """Pass 23's TR13: weights neither cached nor reachable (offline mode off) were 23 lines of
  huggingface_hub's retries over 26 s before the one line. The Hub's host is asked first (here a
  name that never resolves, RFC 2606's .invalid, so the test means the same on a machine with a network)."""
  env = {k: v for k, v in os.environ.items() if 'proxy' not in k.lower()}
  env.update(HF_ENDPOINT='https://hub.invalid', HF_HUB_OFFLINE='0', HF_HUB_CACHE=str(tmp_path / 'hub'),
             JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  res = subprocess.run([sys.executable, 'train.py', '--config', 'configs/fmnist.py:smoke', '--workdir',
                        str(tmp_path / 'run'), '--config.model.name=vit_small_patch14_dinov2',
                        '--config.init.pretrained=true'], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 2, res.stderr[-3000:]
  line = _one_line(res)
  assert 'timm/vit_small_patch14_dinov2.lvd142m/model.safetensors' in line and 'hub.invalid' in line, line
  assert 'Retry' not in res.stderr and 'HTTP' not in res.stderr, res.stderr[-3000:]
  assert not (tmp_path / 'run').exists()


def test_a_model_larger_than_the_machine_s_memory_is_one_line_before_anything_is_written(tmp_path):
  """Pass 23's TR19: ``model.embed_dim=300000000`` aborted in XLA's compiler (rc 134, a C++ stack) and left an
  empty workdir. Its parameters alone would take 1.6e10 GiB."""
  res = _run('train.py', '--config', 'configs/fmnist.py:smoke', '--workdir', str(tmp_path / 'r'),
             '--config.model.embed_dim=300000000')
  assert res.returncode == 2
  line = _one_line(res)
  assert line.startswith("error: model.name='vit_custom' (embed_dim=300000000, depth=4,") and 'training it takes' in line
  assert not (tmp_path / 'r').exists()


def test_the_memory_check_counts_at_most_the_parameters_of_every_model_and_never_traces_it():
  """Pass 24's MM03 / SG01: the check counted the parameters alone (a model just under them was killed by the
  kernel) by tracing the model's initialisation (minutes at depth 200, signals unheard). Now a bound from the
  config: at most the parameters of every registered model (never a false refusal), at least 60% of them."""
  for name in tpm_jax.list_models():
    model = nnx.eval_shape(lambda: tpm_jax.create_model(name, depth=2))
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 0.6 * n <= preflight.min_parameters(tpm_jax.model_config(name, depth=2)) <= n, name
  c = fmnist.get_config('smoke')
  c.model.depth = 10 ** 7  # 2.8e11 parameters, 4 TiB to train: refused at once from the config (a trace would take days)
  run = RunConfig.from_any(c)
  with pytest.raises(ConfigError, match=f'training it takes at least .* GiB \\({preflight.min_parameters(run.vit):,} '
                                        f'parameters or more'):
    preflight.check_model_fits(run)
  c.model.depth = 4
  preflight.check_model_fits(RunConfig.from_any(c))


def test_preparing_through_a_dead_proxy_is_one_line_at_once(tmp_path, monkeypatch, capsys):
  """Pass 24's PR02: with https_proxy set the network check was skipped, and TFDS retried through a proxy that
  refuses every connection for minutes; pass 25's NW01: one that never answers, the same. The proxy itself is asked
  now, a CONNECT to the host."""
  from tpm_jax.data.prepare import main
  with socket.socket() as s:  # a port nothing listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  for var in ('https_proxy', 'HTTPS_PROXY', 'no_proxy', 'NO_PROXY'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv('https_proxy', f'http://127.0.0.1:{port}')
  assert main(['--name', 'mnist', '--data_dir', str(tmp_path / 'd')]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: mnist: preparing it downloads its files, and this machine cannot reach the network '
                        f'(storage.googleapis.com: the proxy http://127.0.0.1:{port} (') and err.count('\n') == 1, err
  assert not (tmp_path / 'd').exists()
  with socket.socket() as silent:  # pass 25's NW01: a proxy that takes the connection and never answers
    silent.bind(('127.0.0.1', 0))
    silent.listen(4)
    quiet = silent.getsockname()[1]
    monkeypatch.setenv('https_proxy', f'http://127.0.0.1:{quiet}')
    assert main(['--name', 'mnist', '--data_dir', str(tmp_path / 'd')]) == 2
  err = capsys.readouterr().err
  assert err.endswith(f'(storage.googleapis.com: the proxy http://127.0.0.1:{quiet} (no answer within '
                      f'5 s)); prepare it on a machine that can (python -m tpm_jax.data.prepare --name mnist --data_dir '
                      f'DIR) and copy DIR here\n') and err.count('\n') == 1, err
  assert not (tmp_path / 'd').exists()

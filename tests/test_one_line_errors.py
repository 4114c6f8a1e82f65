"""Issue 13's traceback list: each bad start is one line on stderr (`error: ...`, naming the file or
field), the documented exit code, and nothing written. Real processes, real files."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, cwd=ROOT):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def _one_line(res):
  errors = [l for l in res.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'Traceback' not in res.stderr, res.stderr[-3000:]
  return errors[0]


def test_missing_config_file_is_one_line_naming_it(tmp_path):
  res = _run('train.py', '--config', 'configs/nope.py:smoke', '--workdir', str(tmp_path / 'run'))
  assert res.returncode == 2
  line = _one_line(res)
  assert 'configs/nope.py' in line and 'No such file' in line
  assert not (tmp_path / 'run').exists()


def test_workdir_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
  f = tmp_path / 'run'
  f.write_text('not a directory')
  res = _run('train.py', '--config', 'configs/quickstart.py:smoke', '--workdir', str(f))
  assert res.returncode == 2
  assert f'workdir {f} is a file' in _one_line(res)
  assert f.read_text() == 'not a directory'


def test_export_errors_are_one_line(tmp_path):
  res = _run('-m', 'tpm_jax.export', '--workdir', str(tmp_path / 'nope'), '--output', str(tmp_path / 'out'))
  assert res.returncode == 2
  assert 'is not a training workdir' in _one_line(res)
  assert 'RuntimeWarning' not in res.stderr, res.stderr  # runpy's, when the module ran twice (imported, then as __main__)
  assert not (tmp_path / 'out').exists()


def test_sweep_collect_only_with_print_commands_is_one_line(tmp_path):
  res = _run('-m', 'tpm_jax.sweep', '--workdir', str(tmp_path), '--collect_only', '--print_commands')
  assert res.returncode == 2
  assert '--config' in _one_line(res)


def test_eval_py_with_a_timm_file_of_the_wrong_shapes_or_a_pickled_model_is_one_line(tmp_path):
  import pytest
  torch = pytest.importorskip('torch')
  import tpm_jax
  wide = tpm_jax.create_model('vit_custom', img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=3)
  wrong = tmp_path / 'wide.safetensors'
  tpm_jax.export_timm_weights(wide, str(wrong))  # real timm-named weights, of another width than the smoke model
  pickled = tmp_path / 'model.pth'
  torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module, not a state dict
  res = _run('eval.py', '--config', 'configs/deit.py:smoke', '--timm_checkpoint', str(wrong),
             '--output', str(tmp_path / 'eval.json'))
  assert res.returncode == 2, res.stderr[-3000:]
  line = _one_line(res)
  assert line.startswith(f"error: --timm_checkpoint='{wrong}'") and 'shape' in line, line
  assert not (tmp_path / 'eval.json').exists()
  # the same check (evaluation.prepare), in this process
  import warnings

  from configs import deit
  from tpm_jax import evaluation
  from tpm_jax.config import ConfigError, RunConfig
  torch.save({'w': torch.nn.Linear(2, 2)}, pickled, pickle_protocol=4)  # torch warns on protocol 4 (pass 18's W02)
  with pytest.raises(ConfigError) as e, warnings.catch_warnings():
    warnings.simplefilter('error')  # a warning of torch's would be a second line on stderr
    evaluation.prepare(timm_checkpoint=str(pickled), given=RunConfig.from_any(deit.get_config('smoke')),
                       output=str(tmp_path / 'eval.json'))
  assert str(e.value).startswith(f"--timm_checkpoint='{pickled}'") and '\n' not in str(e.value)
  assert 'is not a state dict of tensors (torch.load(weights_only=True) refuses it' in str(e.value)
  from safetensors.torch import load_file, save_file  # float8 weights (pass 19's WT01, WT02: a TypeError traceback)
  float8 = {k: v.to(torch.float8_e4m3fn) for k, v in load_file(wrong).items()}
  save_file(float8, tmp_path / 'f8.safetensors')
  torch.save(float8, tmp_path / 'f8.pth')
  for f in ('f8.safetensors', 'f8.pth'):
    with pytest.raises(ConfigError, match=r'holds torch.float8_e4m3fn values, which are not read as weights'):
      evaluation.prepare(timm_checkpoint=str(tmp_path / f), given=RunConfig.from_any(deit.get_config('smoke')))
  named = tmp_path / 'weights.pth'  # a safetensors file under a torch name (pass 18's W07: said to pickle objects)
  named.write_bytes(wrong.read_bytes())
  with pytest.raises(ConfigError, match=r'weights.pth is not a state dict of tensors \(it is a safetensors file: name '
                                        r'it .safetensors\)'):
    evaluation.prepare(timm_checkpoint=str(named), given=RunConfig.from_any(deit.get_config('smoke')))


def test_prepare_errors_are_one_line(tmp_path):
  res = _run('-m', 'tpm_jax.data.prepare', '--name', 'no_such_dataset_xyz', '--data_dir', str(tmp_path))
  assert res.returncode == 2
  assert 'no_such_dataset_xyz' in _one_line(res)
  assert 'RuntimeWarning' not in res.stderr, res.stderr  # runpy's, when the module ran twice (imported, then as __main__)


def test_preparing_a_download_without_a_network_is_one_line_at_once(tmp_path, capsys):
  """Hostile pass 19's PR11: ``--name mnist`` on a machine without a name server retried each URL ten times, for
  minutes. One line now, before TFDS tries (skipped where this machine reaches the network: it would download)."""
  import socket

  import pytest

  from tpm_jax.data.prepare import TFDS_HOST, main
  try:
    socket.getaddrinfo(TFDS_HOST, 443)
    pytest.skip(f'this machine resolves {TFDS_HOST}')
  except OSError:
    pass
  assert main(['--name', 'mnist', '--data_dir', str(tmp_path)]) == 2
  assert capsys.readouterr().err.startswith(f'error: mnist: preparing it downloads its files, and this machine cannot '
                                            f'reach the network ({TFDS_HOST}: ')
  assert os.listdir(tmp_path) == []


def test_help_lists_the_flags_and_exits_0():
  """train.py --help (found by the hostile pass: 'Unknown command line flag help', exit 2); eval.py's
  goes through the same cli.parse_flags_or_exit."""
  res = _run('train.py', '--help')
  assert res.returncode == 0 and '--workdir' in res.stdout and '--config' in res.stdout, res.stderr[-2000:]
  assert res.stdout.startswith('Train a ViT/DeiT with token reduction.') and not res.stderr


def test_the_tools_bad_command_lines_are_one_line(tmp_path, capsys):
  """Hostile pass 19's PR01, PR02, SW14: argparse's usage block, then its error (3 to 7 lines), and a
  misspelt flag not named when a required one was missing too. One line now, naming the flag, and nothing
  written; SW05: a training sweep's --split (it goes with --reductions) was dropped without a word."""
  import pytest

  from tpm_jax.data.prepare import main as prepare
  from tpm_jax.export import main as export
  from tpm_jax.quickstart import main as quickstart
  from tpm_jax.sweep import main as sweep
  w = str(tmp_path / 'w')
  for main, argv, says in (
      (prepare, ['--nme', 'fashion_mnist', '--data_dir', w], 'unrecognized arguments: --nme fashion_mnist; python -m '
       'tpm_jax.data.prepare --help lists the flags'),
      (prepare, ['--data_dir', w], 'the following arguments are required: --name; python -m tpm_jax.data.prepare '
       '--help lists the flags'),
      (sweep, ['--config', 'configs/fmnist.py:smoke', '--sweep', 'seed=0'], 'the following arguments are required: '
       '--workdir; python -m tpm_jax.sweep --help lists the flags'),
      (export, ['--work', w, '--output', str(tmp_path / 'out')], 'unrecognized arguments: --work '),
      (quickstart, ['--workdir', w, '--steps', '3'], 'unrecognized arguments: --steps 3; ')):
    with pytest.raises(SystemExit) as e:
      main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f'error: {says}') and err.count('\n') == 1, err
  assert sweep(['--config', 'configs/fmnist.py:smoke', '--sweep', 'seed=0', '--workdir', w, '--split', 'test']) == 2
  assert capsys.readouterr().err == ("error: --split goes with --reductions (an off-the-shelf sweep); a training sweep "
                                     "evaluates each run's dataset.eval_split: give --config.dataset.eval_split=... "
                                     "instead\n")
  assert sweep(['--config', 'configs/fmnist.py:smoke', '--sweep', 'seed=0', '--workdir', w, '--python', w]) == 2
  assert capsys.readouterr().err == (f'error: --python={w} is not accepted: not an executable file (the Python that '
                                     f'runs train.py)\n')  # SW08: each run failed, said as a write that failed
  assert os.listdir(tmp_path) == []

"""Export an inference checkpoint, load it, and evaluate it with eval.py: the accuracy is exactly
what the training run logged for that step."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tpm_jax
from configs import deit
from tpm_jax import export, preflight, trainer
from tpm_jax.checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# One worker runs this file's tests (test.sh: --dist loadgroup), so the trained fixture is built once.
pytestmark = pytest.mark.xdist_group('export_eval')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_imagenet):
  tmp = tmp_path_factory.mktemp('export')
  c = deit.get_config('smoke')
  os.symlink(tiny_imagenet, tmp / 'tfds')  # the session's tiny imagenet2012 (4 classes, 16 validation images)
  c.dataset.data_dir = str(tmp / 'tfds')
  c.optim.ema_decay = 0.5
  c.optim.lr = 3e-3 * 512 / 16
  c.total_steps = c.eval_every_steps = c.checkpoint_every_steps = 8
  final = trainer.train_and_evaluate(c, str(tmp / 'run'))
  return tmp, final


def test_export_load_and_eval_reproduce_the_logged_accuracy(trained, caplog, tensorflow_report):
  """Also: the export's command line and eval.py import no TensorFlow (checked at the exit of their
  process, as tests/test_sweep.py checks train.py's)."""
  tmp, final = trained
  out = tmp / 'export'
  with caplog.at_level('WARNING', logger='tpm_jax'):
    export.main(['--workdir', str(tmp / 'run'), '--output', str(out), '--safetensors', str(tmp / 'model.safetensors')])
  assert json.load(open(out / 'export.json'))['step'] == 8
  # timm's layout has no place for the multi-scale fusion: the .safetensors leaves it out and says so
  assert 'multiscale' in caplog.text and 'left out' in caplog.text
  assert f'warning: {tmp / "model.safetensors"} holds the timm backbone only' in caplog.text  # its final name

  from_export = tpm_jax.load_model(str(out))
  from_workdir = export.restore_from_workdir(str(tmp / 'run'))[0]  # the EMA parameters
  x = jnp.asarray(np.random.RandomState(0).randn(2, 32, 32, 3), jnp.float32)
  np.testing.assert_array_equal(np.asarray(tpm_jax.jit_forward(from_export)(x)),
                                np.asarray(tpm_jax.jit_forward(from_workdir)(x)))
  from tpm_jax.timm_weights import read_state_dict
  assert 'blocks.0.attn.qkv.weight' in read_state_dict(str(tmp / 'model.safetensors'))

  # On 8 devices (as a GPU or TPU host has several), in one process: a loaded model takes a batch
  # sharded over 8 devices, as a freshly built one does (its restored parameters are not committed to
  # device 0), then the export's command line and eval.py (the loaded state must be put on the batches' mesh)
  env, read_tensorflow_report = tensorflow_report
  res = subprocess.run([sys.executable, '-c', SHARDED_BATCH_THEN_EVAL_PY, str(out), str(tmp / 'run'),
                        str(tmp / 'export_cli'), os.path.join(ROOT, 'eval.py'), '--checkpoint', str(out),
                        '--output', str(tmp / 'eval.json'), '--batch_size', '8', '--timed_runs', '2'],
                       env=dict(env, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='8'),
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert res.stdout.split()[:3] == ['8', 'ok', 'ok'], res.stdout
  assert json.load(open(tmp / 'export_cli' / 'export.json'))['step'] == 8
  assert [imported for _, imported in read_tensorflow_report()] == [False]
  result = json.load(open(tmp / 'eval.json'))
  assert result['examples'] == 16
  assert result['top1'] == final['eval_top1'] and result['top5'] == final['eval_top5']
  assert result['analytic_gmacs'] > 0 and result['xla_gflops'] > 0 and result['images_per_sec'] > 0
  assert 'top1' in res.stdout  # the table
  absl_lines = [l for l in res.stderr.splitlines() if re.match(r'[IWE]\d{4} ', l)]
  assert not absl_lines, absl_lines[:5]  # libraries' log lines only with -v (cli.quiet_library_logs)


SHARDED_BATCH_THEN_EVAL_PY = """
import runpy, sys, jax, jax.numpy as jnp, numpy as np, tpm_jax
from jax.sharding import NamedSharding, PartitionSpec as P
from tpm_jax import export
print(jax.device_count())
x = jnp.asarray(np.random.RandomState(0).randn(8, 32, 32, 3), jnp.float32)
sharded = jax.device_put(x, NamedSharding(jax.make_mesh((8,), ('d',)), P('d')))
for model in (tpm_jax.load_model(sys.argv[1]), export.restore_from_workdir(sys.argv[2])[0]):
  forward = tpm_jax.jit_forward(model)  # as the README runs a model: placed parameters or an error
  np.testing.assert_allclose(np.asarray(forward(sharded)), np.asarray(forward(x)), rtol=1e-5, atol=1e-5)
  print('ok')
if export.main(['--workdir', sys.argv[2], '--output', sys.argv[3]]):
  raise SystemExit('the export failed')
sys.argv = sys.argv[4:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def test_init_from_an_export(trained, tmp_path):
  tmp, _ = trained
  out = tmp / 'export_for_init'
  export.export(str(tmp / 'run'), str(out))
  c = deit.get_config('smoke')
  c.init.checkpoint = str(out)
  # the trainer's jitted, sharded init, with the export's weights as its argument
  setup = trainer.setup_training(c, total_steps=1, steps_per_epoch=1)
  model = nnx.merge(setup.graphdef, setup.state).model
  x = jnp.asarray(np.random.RandomState(1).randn(2, 32, 32, 3), jnp.float32)
  np.testing.assert_array_equal(np.asarray(tpm_jax.jit_forward(model)(x)),
                                np.asarray(tpm_jax.jit_forward(tpm_jax.load_model(str(out)))(x)))


def test_an_export_of_another_model_is_refused_up_front(trained, tmp_path):
  from tpm_jax.config import ConfigError
  from tpm_jax.preflight import validate_train_config
  tmp, _ = trained
  out = tmp / 'export_for_init'
  if not out.exists():
    export.export(str(tmp / 'run'), str(out))
  c = deit.get_config('smoke')
  c.dataset.name = 'mnist'
  c.init.checkpoint = str(out)
  validate_train_config(c, num_devices=1)  # the same architecture: accepted
  c.multiscale.method = 'cross'  # the export has the 'pool' fusion's parameters, not these
  with pytest.raises(ConfigError, match=r'init.checkpoint=.* does not fit the model: multiscale\.'):
    validate_train_config(c, num_devices=1)
  c.multiscale.method = 'pool'
  c.model.embed_dim, c.model.num_heads = 64, 4
  with pytest.raises(ConfigError, match=r'init.checkpoint=.* does not fit the model: .* the model needs \(.*64'):
    validate_train_config(c, num_devices=1)


def test_eval_py_on_timm_weights(trained):
  """eval.py --timm_checkpoint: timm-named weights evaluated with --config's model and data."""
  tmp, _ = trained
  weights = tmp / 'model.safetensors'
  if not weights.exists():
    export.export(str(tmp / 'run'), str(tmp / 'export_timm'), safetensors=str(weights))
  res = subprocess.run([sys.executable, os.path.join(ROOT, 'eval.py'), '--config', os.path.join(ROOT, 'configs/deit.py') + ':smoke',
                        '--timm_checkpoint', str(weights), f'--config.dataset.data_dir={tmp / "tfds"}',
                        '--output', str(tmp / 'eval_timm.json'), '--batch_size', '8', '--timed_runs', '2'],
                       env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT), capture_output=True, text=True,
                       timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  result = json.load(open(tmp / 'eval_timm.json'))
  assert result['source'] == 'timm' and result['examples'] == 16 and 0 <= result['top1'] <= 1
  assert result['fresh_parameters'].startswith('multiscale: not in the checkpoint')  # timm files cannot hold it


def test_a_backbone_export_initialises_a_multiscale_model(tmp_path):
  """Fine-tuning with multi-scale fusion from an unpruned backbone's export: the fusion parameters are
  not in the export, so they start from their initialisation, which computes exactly the backbone's
  function (zero output projections)."""
  import jax
  import orbax.checkpoint as ocp
  from flax import nnx

  from configs import fmnist
  from tpm_jax.checkpoint import write_checksums
  from tpm_jax.config import RunConfig
  from tpm_jax.export import load_params_into
  from tpm_jax.models.registry import model_from_config
  from tpm_jax.preflight import validate_train_config
  backbone_config = fmnist.get_config('method=none,smoke')
  backbone = model_from_config(backbone_config)
  with ocp.StandardCheckpointer() as ckptr:  # an export as python -m tpm_jax.export writes it
    ckptr.save(str(tmp_path / 'params'), nnx.state(backbone, nnx.Param))
  (tmp_path / 'config.json').write_text(json.dumps(RunConfig.from_any(backbone_config).to_dict()))
  write_checksums(str(tmp_path))
  for ms in ('pool', 'cross'):
    c = fmnist.get_config(f'method=tpm,multiscale={ms},smoke')
    c.dataset.name, c.init.checkpoint = 'mnist', str(tmp_path)
    validate_train_config(c, num_devices=jax.device_count(), process_count=1)  # accepted
    fused, plain = model_from_config(c), model_from_config(fmnist.get_config('method=tpm,smoke'))
    load_params_into(fused, str(tmp_path))
    load_params_into(plain, str(tmp_path))
    x = jnp.asarray(np.random.RandomState(0).rand(2, 32, 32, 1), jnp.float32)
    np.testing.assert_array_equal(np.asarray(fused(x)), np.asarray(plain(x)))
    np.testing.assert_array_equal(np.asarray(fused.blocks[0].attn.qkv.kernel[...]),
                                  np.asarray(backbone.blocks[0].attn.qkv.kernel[...]))


def test_a_changed_byte_in_an_export_is_refused_by_load_model_and_init(trained, tmp_path):
  """An export carries SHA-256 checksums of its files; a byte changed afterwards (sizes kept) is
  named by load_model and by a run that starts from the export, which writes nothing."""
  tmp, _ = trained
  out = tmp_path / 'export'
  export.main(['--workdir', str(tmp / 'run'), '--output', str(out)])
  assert set(json.load(open(out / 'checksums.json'))['files']) >= {'config.json', 'export.json'}
  tpm_jax.load_model(str(out))  # intact: loads
  data = max((p for p in (out / 'params').rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  data.write_bytes(bytes(raw))
  with pytest.raises(CheckpointError, match=rf'^export {out}: {data} fails its SHA-256 check'):
    tpm_jax.load_model(str(out))
  res = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--config',
                        os.path.join(ROOT, 'configs/deit.py') + ':smoke', '--workdir', str(tmp_path / 'run'),
                        f'--config.init.checkpoint={out}', f'--config.dataset.data_dir={tmp / "tfds"}'],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
  assert res.returncode == 2, res.stderr[-2000:]  # a bad input file: refused at start-up
  assert [l for l in res.stderr.splitlines() if l.startswith('error:')] == [
      f'error: init.checkpoint={str(out)!r} is not accepted: export {out}: {data} fails its SHA-256 check (changed '
      f'since the save)'], res.stderr[-2000:]
  assert not (tmp_path / 'run').exists()


# -- off-the-shelf: a trained model evaluated under another token reduction (eval.py --reduction) --------
def _export_with_timm_file(trained):
  tmp, _ = trained
  out, weights = tmp / 'export_off_the_shelf', tmp / 'off_the_shelf.safetensors'
  if not out.exists():
    export.export(str(tmp / 'run'), str(out), safetensors=str(weights))
  return out, weights


@pytest.mark.parametrize('setting', ['tpm:0.5', 'tome:0.5', 'evit:0.7@locations=2', 'none'])
def test_off_the_shelf_equals_create_model_with_the_checkpoint_s_weights(trained, setting):
  """The trained (tpm + pool) smoke model under another reduction: the same logits as the model
  ``create_model`` builds for that reduction with the checkpoint's weights read through the timm
  file (another path: timm's names, no multi-scale fusion)."""
  from tpm_jax.models.registry import with_weights_of
  from tpm_jax.reduction_setting import parse_setting
  out, weights = _export_with_timm_file(trained)
  run = export.read_config(str(out))
  model, fresh, left_out = with_weights_of(tpm_jax.load_model(str(out)), parse_setting(setting).apply(run))
  assert fresh == [] and left_out and all(p.startswith('multiscale.') for p in left_out)  # the pool fusion
  reduction = {'tpm:0.5': dict(method='tpm', keep_rate=0.5, locations=(1, 2)),
               'tome:0.5': dict(method='tome', r=(32, 16), locations=(1, 2)),  # 64 -> 32 -> 16 patches, as tpm:0.5
               'evit:0.7@locations=2': dict(method='evit', keep_rate=0.7, locations=(2,)),
               'none': 'none'}[setting]
  ref = tpm_jax.create_model('vit_custom', num_classes=run.vit.num_classes, img_size=32, patch_size=4, embed_dim=48, depth=4,
                             num_heads=3, reduction=reduction)
  tpm_jax.load_timm_weights(ref, str(weights))
  x = jnp.asarray(np.random.RandomState(3).randn(4, 32, 32, 3), jnp.float32)
  np.testing.assert_allclose(np.asarray(tpm_jax.jit_forward(model)(x)), np.asarray(tpm_jax.jit_forward(ref)(x)),
                             rtol=1e-6, atol=1e-6)
  assert str(tpm_jax.token_schedule(model)) == str(tpm_jax.token_schedule(ref))
  if setting == 'tome:0.5':
    assert str(tpm_jax.token_schedule(model)) == str(tpm_jax.token_schedule(
        parse_setting('tpm:0.5').apply(run)))  # ToMe matched to tpm's token counts


def test_off_the_shelf_fusion_the_backbone_never_had_starts_as_the_identity():
  """tpm with multi-scale fusion on a backbone without one: the fusion's parameters start as in a new
  model, whose zero output leaves the function that of tpm without fusion."""
  from configs import fmnist
  from tpm_jax.config import RunConfig
  from tpm_jax.models.registry import model_from_config, with_weights_of
  from tpm_jax.reduction_setting import parse_setting
  run = RunConfig.from_any(fmnist.get_config('method=none,smoke'))
  backbone = model_from_config(run.replace(seed=5))
  x = jnp.asarray(np.random.RandomState(0).rand(2, 32, 32, 1), jnp.float32)
  plain = with_weights_of(backbone, parse_setting('tpm:0.5').apply(run))[0]
  for ms in ('pool', 'cross'):
    fused, fresh, left_out = with_weights_of(backbone, parse_setting(f'tpm+{ms}:0.5').apply(run))
    assert fresh and all(p.startswith('multiscale.') for p in fresh) and left_out == []
    np.testing.assert_array_equal(np.asarray(fused(x)), np.asarray(plain(x)))
  with pytest.raises(tpm_jax.ConfigError, match='another backbone'):
    with_weights_of(backbone, run.replace(model=dict(embed_dim=64, num_heads=2)))


def test_eval_py_reduction_names_it_and_refuses_bad_settings_up_front(trained, tmp_path):
  tmp, _ = trained
  out, _ = _export_with_timm_file(trained)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  base = [sys.executable, os.path.join(ROOT, 'eval.py'), '--checkpoint', str(out), '--batch_size', '4',
          '--timed_runs', '1']
  from tpm_jax.reduction_setting import parse_setting
  bad = 'tpm:0.5@locations=7'  # parsed, refused by the model (depth 4): in eval.py's process
  res = subprocess.run(base + ['--reduction', bad, '--output', str(tmp_path / 'bad.json')], env=env,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr[-2000:]
  assert res.stderr.startswith('error: --reduction: ') and 'block indices in [0, 4)' in res.stderr and bad in res.stderr
  assert not (tmp_path / 'bad.json').exists()
  with pytest.raises(tpm_jax.ConfigError, match=re.escape("'tpm:1.5'") + '.*' + re.escape('keep rate 1.5 is not in (0, 1]')):
    parse_setting('tpm:1.5')  # what eval.py parses first (the flag named as above)
  res = subprocess.run(base + ['--reduction', 'tome:0.5', '--output', str(tmp_path / 'tome.json')], env=env,
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  result = json.load(open(tmp_path / 'tome.json'))
  assert (result['reduction'], result['method'], result['r'], result['locations']) == ('tome:0.5', 'tome', '32,16', '1,2')
  assert result['tokens'] == '65 -> 33 -> 17' and result['examples'] == 16 and result['multiscale'] == 'none'
  assert 'multiscale' in result['unused_parameters'] and 'fresh_parameters' not in result
  from tpm_jax.evaluation import describe_reduction
  from tpm_jax.models.registry import model_from_config
  capped = parse_setting('tome:100000').apply(export.read_config(str(out)))  # r as applied, capped at half
  assert describe_reduction(model_from_config(capped), capped)['r'] == '32,16,8,4'  # 65 -> 33 -> 17 -> 9 -> 5
  expected = tpm_jax.count_flops(model_from_config(parse_setting('tome:0.5').apply(export.read_config(str(out)))),
                                 compile=False)['analytic_gmacs']
  assert result['analytic_gmacs'] == pytest.approx(expected)
  assert 'tome:0.5' in res.stdout and '65 -> 33 -> 17' in res.stdout  # the table names it


def test_a_sweep_over_one_checkpoint_evaluates_each_reduction_once(trained, tmp_path, capsys):
  """python -m tpm_jax.sweep --checkpoint X --reductions ...: one evaluation per setting, kept; the
  setting the model was trained with reproduces the training run's own last evaluation."""
  import csv

  from tpm_jax import sweep
  from tpm_jax.config import ConfigError
  from tpm_jax.reduction_setting import parse_settings
  tmp, final = trained
  out, _ = _export_with_timm_file(trained)
  workdir = tmp_path / 'sw'
  for same in ('tpm:0.7,tpm:0.70', 'evit:0.7,evit:0.7@prop_attn=off',  # one model spelled two ways (pass 13a's OTS_*)
               'drop:0.7,drop:0.7@prop_attn=on'):  # drop's tokens are one patch each: log(1) = 0 (pass 18's SR5)
    with pytest.raises(ConfigError, match='is the same model as'):
      sweep.evaluate_reductions(str(out), parse_settings(same), str(workdir))
  assert not workdir.exists()
  rows = sweep.evaluate_reductions(str(out), parse_settings('tpm+pool:0.7,none,tome:0.5'), str(workdir),
                                   throughput_batch=2, rounds=1)
  assert [r['name'] for r in rows] == ['tpm+pool:0.7', 'none', 'tome:0.5']
  assert rows[0]['top1'] == final['eval_top1'] and rows[0]['top5'] == final['eval_top5']  # as trained
  assert rows[0]['tokens'] == '65 -> 46 -> 33' and rows[1]['tokens'] == '65' and rows[2]['tokens'] == '65 -> 33 -> 17'
  assert rows[1]['analytic_gmacs'] > rows[0]['analytic_gmacs'] > rows[2]['analytic_gmacs']
  assert 'unused_parameters' in rows[1] and all(r['images_per_sec'] > 0 for r in rows)
  table = list(csv.DictReader(open(workdir / 'results.csv')))
  assert [(r['reduction'], float(r['top1'])) for r in table] == [(r['name'], r['top1']) for r in rows]
  assert open(workdir / 'pareto.png', 'rb').read(4) == b'\x89PNG' and 'tome:0.5' in (workdir / 'results.md').read_text()

  evaluated = {p.name: p.stat().st_mtime_ns for p in (workdir / 'evals').iterdir()}
  again = sweep.evaluate_reductions(str(out), parse_settings('none,drop:0.5'), str(workdir), throughput_batch=2,
                                    rounds=1)
  assert {p.name: p.stat().st_mtime_ns for p in (workdir / 'evals').iterdir() if p.name in evaluated} == evaluated
  # one table for the folder: the earlier call's settings collected beside the new one
  assert [r['name'] for r in again] == ['tpm+pool:0.7', 'none', 'tome:0.5', 'drop:0.5']
  assert [r['top1'] for r in again[:3]] == [r['top1'] for r in rows] and (workdir / 'evals' / 'drop-0.5.json').exists()
  assert [r['reduction'] for r in csv.DictReader(open(workdir / 'results.csv'))] == [r['name'] for r in again]
  # a kept file that is another setting's evaluation (eval.py may not write there either): refused
  shutil.copy(workdir / 'evals' / 'none.json', tmp_path / 'none.json')
  shutil.copy(workdir / 'evals' / 'none.json', workdir / 'evals' / 'tome-0.5.json')
  with pytest.raises(ConfigError, match='tome-0.5.json is the evaluation of another checkpoint, split or setting'):
    sweep.evaluate_reductions(str(out), parse_settings('tome:0.5'), str(workdir))
  with pytest.raises(ConfigError, match='inside the sweep folder'):
    preflight.check_output_file('--output', str(workdir / 'evals' / 'tome-0.5.json'), ours=lambda p: True)
  # the record of the same setting name made with other fields (a later version's default), or without a record of
  # what it applied (a version before 'applied'): evaluated again, never reported under today's name (hostile pass
  # 20's DS01: refused, told to remove it; DS02: the old model's top-1 beside today's GMACs)
  (workdir / 'evals' / 'tome-0.5.json').unlink()  # (the other setting's copy above, put back below)
  record = json.load(open(workdir / 'evals' / 'drop-0.5.json'))
  assert record['applied']['reduction.method'] == 'drop'
  for old in (dict(record, applied=dict(record['applied'], **{'reduction.schedule': [[3, 65, 40]]}), top1=0.125),
              {k: v for k, v in dict(record, top1=0.125).items() if k != 'applied'}):
    (workdir / 'evals' / 'drop-0.5.json').write_text(json.dumps(old))
    capsys.readouterr()  # collecting only: not reported, and not said to be evaluated (hostile pass 21's DS10)
    rows = sweep.evaluate_reductions(str(out), parse_settings('drop:0.5'), str(workdir), collect_only=True)
    assert 'drop:0.5' not in [r['name'] for r in rows]
    assert 'not reported (give --reductions drop:0.5, without --collect_only, to evaluate it again)' in capsys.readouterr().out
    rows = sweep.evaluate_reductions(str(out), parse_settings('drop:0.5'), str(workdir), throughput_batch=2, rounds=1)
    assert [r['top1'] for r in rows if r['name'] == 'drop:0.5'] == [record['top1']] != [0.125]
    assert json.load(open(workdir / 'evals' / 'drop-0.5.json'))['applied'] == record['applied']
  (workdir / 'evals' / 'drop-0.5.json').unlink()
  shutil.copy(tmp_path / 'none.json', workdir / 'evals' / 'tome-0.5.json')
  # another checkpoint (the workdir, at its step) into the same folder: refused, nothing written
  before = sorted(p.name for p in workdir.rglob('*'))
  with pytest.raises(ConfigError, match='holds the evaluations of another checkpoint'):
    sweep.evaluate_reductions(str(tmp / 'run'), parse_settings('none'), str(workdir))
  with pytest.raises(ConfigError, match="--reductions: reduction setting 'tpm:0.5@locations=9' does not fit"):
    sweep.evaluate_reductions(str(out), parse_settings('none,tpm:0.5@locations=9'), str(tmp_path / 'sw2'))
  assert sorted(p.name for p in workdir.rglob('*')) == before and not (tmp_path / 'sw2').exists()
  # the folder is the --reductions kind: a training sweep or its collection there is one line, exit 2
  config = os.path.join(ROOT, 'configs/deit.py') + ':smoke'
  assert sweep.main(['--config', config, '--sweep', 'seed=0,1', '--workdir', str(workdir)]) == 2
  assert sweep.main(['--workdir', str(workdir), '--collect_only']) == 2
  # and no sweep goes into an export (its files are checksummed), nor into its folder
  for folder in (out, out / 'sweep'):
    with pytest.raises(ConfigError, match='inside the export'):
      sweep.check_outside_workdirs_and_exports('--workdir', str(folder), folder=True)
  assert sweep.main(['--checkpoint', str(out), '--reductions', 'none', '--workdir', str(out / 'sweep')]) == 2
  assert sweep.main(['--checkpoint', str(out), '--reductions', 'none', '--workdir', str(tmp_path / 'typo'),
                     '--collect_only']) == 2
  assert not (out / 'sweep').exists() and not (tmp_path / 'typo').exists()
  tpm_jax.load_model(str(out))  # still whole
  capsys.readouterr()
  for reductions, says in (('', "--reductions='' is not accepted: expected reduction settings"),  # pass 18's SR3, SR4
                           ('none,,tpm:0.7', "--reductions: reduction setting '' is not accepted")):
    assert sweep.main(['--checkpoint', str(out), '--reductions', reductions, '--workdir', str(tmp_path / 'e')]) == 2
    assert capsys.readouterr().err.startswith(f'error: {says}') and not (tmp_path / 'e').exists()
  shutil.copytree(out, tmp_path / 'xp' / 'evals')  # an export where the sweep writes (pass 19's XP01: ruined by it)
  assert sweep.main(['--checkpoint', str(out), '--reductions', 'none', '--workdir', str(tmp_path / 'xp')]) == 2
  assert f"its evals/, where the sweep writes, is the export {tmp_path / 'xp' / 'evals'}" in capsys.readouterr().err
  tpm_jax.load_model(str(tmp_path / 'xp' / 'evals'))  # still whole


def test_a_sweep_names_a_workdir_step_by_its_checksums(trained, tmp_path):
  """A run saved again to the same step (a new run with --config.overwrite=true) is another checkpoint:
  the sweep's record of a workdir holds the step's checksums, not only its number."""
  from tpm_jax import sweep
  tmp, _ = trained
  run = tmp_path / 'run'
  shutil.copytree(tmp / 'run', run)
  first = sweep._identity(str(run), 'workdir step 8')
  assert first['checksums_sha256'] == hashlib.sha256((run / 'checkpoints' / '8' / 'checksums.json').read_bytes()).hexdigest()
  sums = json.load(open(run / 'checkpoints' / '8' / 'checksums.json'))
  json.dump(dict(sums, changed=True), open(run / 'checkpoints' / '8' / 'checksums.json', 'w'))
  assert sweep._identity(str(run), 'workdir step 8') != first

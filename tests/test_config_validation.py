"""Bad input gets one line naming the field and what is accepted, before anything is written or
compiled (exit code 2 from train.py)."""
import os
import subprocess
import sys

import pytest

from configs import deit
from tpm_jax import trainer
from tpm_jax.config import ConfigError, RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke(**changes):
  c = deit.get_config('smoke')
  c.dataset.name = 'mnist'
  c.update_from_flattened_dict(changes)
  return c


BAD = [
    (dict(**{'reduction.keep_rate': '1.5'}), r'reduction.keep_rate=.1.5. .*\(0, 1\]'),
    (dict(**{'reduction.keep_rate': '0.0'}), r'reduction.keep_rate=.0.0. .*\(0, 1\]'),
    (dict(**{'reduction.locations': '1,7'}), r'reduction.locations=\(1, 7\) .*\[0, 4\)'),
    (dict(**{'reduction.locations': '2,1'}), r'reduction.locations=\(2, 1\) .*strictly increasing'),
    (dict(**{'reduction.locations': ''}), r"reduction.locations='' .*at least one block index for method 'tpm'"),  # pass 12b's B8
    (dict(**{'reduction.locations': '1,2', 'reduction.keep_rate': '0.5,0.6,0.7'}), r'reduction.keep_rate=.*one per location'),
    # a keep-rate warmup that ToMe with an integer r would ignore (hostile pass 14b's KW1)
    (dict(**{'reduction.method': 'tome', 'reduction.r': '8', 'keep_warmup_epochs': 1.0}),
     r'keep_warmup_epochs=1.0 is not accepted: expected 0 for ToMe with an integer r'),
    (dict(**{'reduction.method': 'prune'}), r"reduction.method='prune' .*'none', 'tpm', 'evit', 'drop', 'tome'"),
    (dict(**{'multiscale.method': 'pyramid'}), r"multiscale.method='pyramid' .*'none', 'pool', 'cross'"),
    (dict(**{'model.name': 'deit_huge'}), r"model.name='deit_huge' .*deit_small_patch16_224"),
    (dict(**{'model.img_size': 30}), r'model.img_size=30 .*multiple of model.patch_size=4'),
    (dict(**{'model.pos_embed_init': 'learned'}), r"model.pos_embed_init='learned' .*'trunc_normal', 'sincos2d'"),
    (dict(**{'batch_size': 15, 'grad_accum_steps': 2}), r'batch_size=15 .*grad_accum_steps=2'),
    (dict(**{'mesh.data': 3, 'mesh.fsdp': 1}), r'mesh=\(data=3, fsdp=1\) .*multiply to the 1 devices'),
    (dict(**{'dataset.name': 'imagenet_9000'}), r"dataset.name='imagenet_9000' .*TFDS dataset name"),
    (dict(**{'dataset.name': 'imagenet2012', 'dataset.manual_dir': '/nonexistent'}),
     r"dataset.manual_dir='/nonexistent' .*ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"),
    (dict(**{'init.timm_checkpoint': '/nonexistent.safetensors'}), r'init.timm_checkpoint=.*no such file'),
    # an export over timm weights: the timm file had no effect (hostile pass 10's V18)
    (dict(**{'init.timm_checkpoint': 'w.safetensors', 'init.checkpoint': 'export'}),
     r'init.checkpoint is not accepted with init.timm_checkpoint: expected one source of weights'),
    (dict(**{'optim.lr': float('inf')}), r'optim.lr=inf .*a finite number'),
    (dict(**{'seed': -1}), r'seed=-1 .*\[0, 2\*\*31\)'),
    (dict(**{'dataset.workers': 100000}), r'dataset.workers=100000 .*at most the \d+ CPUs of this machine'),
]


@pytest.mark.parametrize('changes, match', BAD, ids=[m.split('=')[0] for _, m in BAD])
def test_bad_config_fails_before_writing(tmp_path, changes, match):
  workdir = tmp_path / 'run'
  with pytest.raises(ConfigError, match=match) as e:
    trainer.train_and_evaluate(_smoke(**changes), str(workdir))
  assert '\n' not in str(e.value)
  assert not workdir.exists()


def test_workdir_with_another_run_is_refused(tmp_path):
  (tmp_path / 'config.json').write_text(_smoke(**{'reduction.method': 'evit'}).to_json())
  with pytest.raises(ConfigError, match=r"reduction.method='evit' there, 'tpm' now.*--config.overwrite"):
    trainer.train_and_evaluate(_smoke(), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['config.json']


def test_a_tome_run_saved_with_its_r_spelled_out_is_the_run_r_keep_asks_for(tmp_path):
  """Runs made before ToMe's r='keep' saved the matched r per location: the same token counts are the same run
  (resume, the same command again), other counts are not; a field the method does not read never mattered."""
  import json

  from tpm_jax.checkpoint import check_config_json
  from tpm_jax.config import RunConfig
  now = RunConfig.from_any(_smoke(**{'reduction.method': 'tome', 'reduction.r': 'keep', 'reduction.keep_rate': '0.5'}))
  assert now.reduction.tome_r(now.vit.num_patches) == (32, 16)  # 64 patches, blocks 1 and 2
  old = now.to_dict()
  old['reduction'].update(r=[32, 16], keep_rate=0.7, tau=9.0)  # keep_rate and tau: not read with an integer r
  (tmp_path / 'config.json').write_text(json.dumps(old))
  check_config_json(str(tmp_path), now)
  with pytest.raises(ConfigError, match=r'reduction.schedule=.* there, .* now'):
    check_config_json(str(tmp_path), now.replace(reduction=dict(keep_rate=0.7)))


def test_workdir_config_json_is_compared_as_a_typed_run_config(tmp_path):
  """config.json read back as a RunConfig: a field it lacks has the run config's one default; a
  string keep rate and its float are the same run; another value of an identity field is refused."""
  import json

  from tpm_jax.checkpoint import check_config_json
  from tpm_jax.config import RunConfig
  old = json.loads(_smoke().to_json())
  del old['model']['pos_embed_init']
  (tmp_path / 'config.json').write_text(json.dumps(old))
  check_config_json(str(tmp_path), RunConfig.from_any(_smoke()))
  check_config_json(str(tmp_path), RunConfig.from_any(_smoke(**{'reduction.keep_rate': '0.70', 'optim.lr': 0.5})))
  with pytest.raises(ConfigError, match=r"model.pos_embed_init='trunc_normal' there, 'sincos2d' now"):
    check_config_json(str(tmp_path), RunConfig.from_any(_smoke(**{'model.pos_embed_init': 'sincos2d'})))


def test_wrong_shaped_timm_checkpoint_names_the_parameter(tmp_path):
  import tpm_jax
  other = tpm_jax.create_model('vit_custom', img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4)
  path = tpm_jax.export_timm_weights(other, tmp_path / 'other.safetensors')
  with pytest.raises(ConfigError, match=r"init.timm_checkpoint=.* does not fit model vit_custom: blocks.0.attn.proj.bias: checkpoint shape \(64,\) .*expects \(48,\)"):
    trainer.train_and_evaluate(_smoke(**{'init.timm_checkpoint': path}), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('args, line', [
    (['--config.reduction.keep_rate=2.0'],
     "error: reduction.keep_rate='2.0' is not accepted: expected a float in (0, 1] or one per location"),
    (['--config.reduction.keeprate=0.5'], 'error: config.reduction.keeprate is not a known config field (did you mean keep_rate?)'),
    (['--config.batch_size=abc'], "error: flag --config.batch_size=abc: invalid literal for int() with base 10: 'abc'"),
    (['config.seed=3'], "error: unexpected argument 'config.seed=3': flags start with -- (for example --config.seed=3)"),
])
def test_cli_exit_code_2_and_one_line(tmp_path, args, line):
  res = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--config', os.path.join(ROOT, 'configs/deit.py') + ':smoke',
                        '--workdir', str(tmp_path / 'run'), *args],
                       env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
  assert res.returncode == 2
  assert [l for l in res.stderr.splitlines() if l.startswith('error:')] == [line]
  assert 'Traceback' not in res.stderr and not (tmp_path / 'run').exists()


def test_a_config_arg_that_is_not_a_number_names_its_key():
  """Hostile pass 8: 'seed=abc' in an arg string was \"invalid literal for int()\", naming neither the
  key nor what is accepted. train.py's line is absl's message with the innermost cause of it, which is
  now the config's own. A key naming what ``smoke`` sets is refused beside it (hostile pass 17b's N6:
  ``fmnist.py:smoke,width=96`` trained width 48 without a word); the recipes built on fmnist.py keep working."""
  from configs import deit, fmnist, fmnist_backbone, quickstart
  from tpm_jax.cli import describe_flag_error
  smoke_sets = 'is not accepted with smoke, which sets the model (a tiny vit_custom): give one or the other'
  for get, arg, says in ((deit.get_config, 'smoke,seed=abc', "config arg seed='abc' is not accepted: expected an int"),
                         (fmnist.get_config, 'smoke,width=96', f'config arg width=96 {smoke_sets}'),
                         (fmnist.get_config, 'smoke=treu', "config arg smoke='treu' is not accepted: expected true or "
                          "false (or smoke alone: true)"),  # hostile pass 18's Z25: read as false, the full run
                         (deit.get_config, 'smoke,keep,method=tpm',  # pass 19's A02: keep 1.0 (float(True))
                          'config arg keep needs a value (keep=...); only true/false keys stand alone'),
                         (deit.get_config, 'smoke,method=tpm,keep=0.7,keep=0.5',  # pass 18's Z03: the last one won
                          'config arg keep is given twice (keep=0.7, then keep=0.5): give it once'),
                         (fmnist.get_config, 'depth=6,method=tpm,smoke', f'config arg depth=6 {smoke_sets}'),
                         (deit.get_config, 'model=deit_tiny_patch16_224,smoke',
                          f'config arg model=deit_tiny_patch16_224 {smoke_sets}'),
                         (deit.get_config, 'smoke,keep=abc', "config arg keep='abc' is not accepted: expected a number"),
                         (fmnist_backbone.get_config, 'method=tpm,distinct=abc',
                          "config arg distinct='abc' is not accepted: expected a number in [0, 1e6]")):
    try:
      try:
        get(arg)
      except ValueError as inner:  # as absl reports it: its own message, the config's error as the cause
        raise RuntimeError('Error whilst parsing config file:') from inner
    except RuntimeError as outer:
      assert describe_flag_error(outer, []) == f'Error whilst parsing config file: {says}'
    else:
      raise AssertionError(f'{arg} was accepted')
  assert fmnist.get_config('smoke,epochs=2').model.embed_dim == 48 == quickstart.get_config('smoke').model.embed_dim
  assert fmnist.get_config('smoke=TRUE').total_steps == fmnist.get_config('smoke').total_steps == 6
  assert fmnist.get_config('smoke=off').total_steps == fmnist.get_config('').total_steps != 6
  assert fmnist_backbone.get_config('smoke').model.depth == 4 and fmnist_backbone.get_config('').model.depth == 12
  assert quickstart.get_config('').model.embed_dim == 96


def test_an_arg_string_s_multiscale_and_epochs_are_what_was_asked():
  """Hostile pass 19's A07/A08b: ``multiscale=pool`` (or cross) beside ``method=none`` trained the plain backbone
  without a word: now given to the config as asked, and refused by its check as ``--config.multiscale.method``
  is. Left out, multiscale is pool with a reduction and none without. A18: ``epochs=0`` was read as "the
  stage's default" and trained 3 epochs: now 0 epochs, refused as ``num_epochs=0`` is."""
  from configs import deit, fmnist, quickstart
  for get, arg in ((fmnist.get_config, 'smoke,multiscale=pool'), (deit.get_config, 'smoke,method=none,multiscale=cross'),
                   (quickstart.get_config, 'smoke,method=none,multiscale=pool')):
    with pytest.raises(ConfigError, match=r"^multiscale.method='(pool|cross)' is not accepted: expected 'none' when "
                       r"reduction.method='none'"):
      RunConfig.from_any(get(arg))
  assert [(c.reduction.method, c.multiscale.method) for c in (
      deit.get_config(''), deit.get_config('method=none'), quickstart.get_config('smoke'),
      quickstart.get_config('smoke,method=none'), fmnist.get_config('method=tpm'),
      fmnist.get_config('method=tpm,multiscale=cross'))] == [('tpm', 'pool'), ('none', 'none'), ('tpm', 'pool'),
                                                            ('none', 'none'), ('tpm', 'none'), ('tpm', 'cross')]
  with pytest.raises(ConfigError, match=r'^total_steps=0 is not accepted: expected a positive number of steps, or num_epochs > 0'):
    RunConfig.from_any(fmnist.get_config('stage=pretrain,epochs=0'))
  assert [fmnist.get_config(a).num_epochs for a in ('stage=pretrain', 'epochs=0.5', '')] == [3.0, 0.5, 0.2]
  assert [fmnist.get_config(f'depth={d}').reduction.locations for d in (1, 2, 4, 6, 12)] == [
      '0', '1', '1,2,3', '1,3,4', '3,6,9']  # pass 19's A12: depth=1 got (1,), past its one block
  RunConfig.from_any(fmnist.get_config('depth=1,method=tpm'))
  with pytest.raises(ValueError, match=r"^config arg epochs='x' is not accepted: expected a number$"):
    fmnist.get_config('epochs=x')
  for arg in ('smoke,method=tpm,distinct=', 'smoke,multiscale=', 'smoke,method=tpm,prop_attn= '):  # pass 20's AR02,
    key = arg.split(',')[-1].split('=')[0]  # AR09: an empty value trained the default without a word
    with pytest.raises(ValueError, match=rf'^config arg {key}= has no value: give {key}=<value>, or leave {key} out'):
      fmnist.get_config(arg)
  huge = fmnist.get_config('stage=pretrain,epochs=1e308')  # hostile pass 20's AR13: an OverflowError traceback
  with pytest.raises(ConfigError, match=r'^num_epochs=1e\+308 is not accepted: expected at most 2147483647 steps '
                     r'\(468.75 steps per epoch here\)$'):
    RunConfig.from_any(huge).steps(468.75)
  huge.total_steps = 2 ** 31
  with pytest.raises(ConfigError, match=r'^total_steps=2147483648 is not accepted: expected at most 2147483647'):
    RunConfig.from_any(huge)


@pytest.mark.parametrize('config, arg', [('fmnist', 'method=tome'), ('fmnist', 'method=tome,smoke'),
                                         ('fmnist', 'method=tome,keep=0.5,depth=6,patch=4'),
                                         ('deit', 'method=tome,keep=0.5'), ('deit', 'method=tome,keep=0.7,smoke')])
def test_tome_merges_what_the_keep_rate_removes_at_each_location(config, arg):
  """The recipes set ToMe's r per location from the model they describe unless r is given (``smoke``
  shrinks the model and drops a location): r_i = tokens before - ceil(keep * tokens before), so a
  sweep's keep is one token count for every method (hostile pass 12's IGN_tome: deit.py's ToMe
  ignored keep)."""
  import importlib
  import math

  from tpm_jax.config import RunConfig
  c = importlib.import_module(f'configs.{config}').get_config(arg)
  if config == 'deit':
    from configs import deit
    assert deit.get_config('method=tome,r=8').reduction.r == '8'  # ToMe's own way, every block
    assert deit.get_config('method=tome,r=8').reduction.locations is None
  run = RunConfig.from_any(c)  # refused before: r had 3 entries for smoke's 2 locations
  assert run.reduction.r == 'keep'  # resolved from the final model and locations, whatever set them
  locations = run.reduction.locations
  r = run.reduction.tome_r(run.vit.num_patches)
  m, keep = run.vit.num_patches, float(c.reduction.keep_rate)
  assert len(r) == len(locations)
  for r_i in r:
    assert r_i == m - math.ceil(keep * m)
    m -= r_i


def test_a_config_that_is_not_a_file_is_one_line_and_never_blocks(tmp_path):
  """--config /dev/zero would be read forever by the config loader: refused before it is opened."""
  res = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--config', '/dev/zero', '--workdir',
                        str(tmp_path / 'run')], env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT),
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 2 and [l for l in res.stderr.splitlines() if l.startswith('error:')] == [
      'error: --config /dev/zero: not a regular file (expected a configs/*.py file)']
  assert not (tmp_path / 'run').exists()


def test_a_batch_larger_than_the_train_split_is_refused(tmp_path):
  """batch_size=100000 on a split of 8 examples read the split thousands of times for one step (a run
  that never got to its first step): refused before anything is written."""
  import tensorflow_datasets as tfds
  c = _smoke(**{'dataset.name': 'cifar10', 'dataset.eval_split': 'test'})
  with tfds.testing.mock_data(num_examples=8), pytest.raises(ConfigError, match=r'batch_size=16 .*at most the 8'):
    trainer.train_and_evaluate(c, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_tpm_s_defaults_and_configs_saved_before_distinct_existed():
  """tpm's defaults (docs/RESULTS.md section 0): tokens' similarity, size-weighted merges, ranked by attention and
  distinctness (``distinct`` 2; 0 for the other methods, which do not read it). A reduction saved by a version
  before ``distinct`` existed (every other field written: a config.json, a checkpoint's or export's config) ranked
  by attention alone, and is read so: the model it trained, not today's default."""
  import dataclasses

  from tpm_jax.config import TPM_DISTINCT, ReductionConfig
  tpm = ReductionConfig.from_any('tpm')
  assert (tpm.similarity, tpm.weight, tpm.distinct) == ('tokens', 'size', 2.0) and TPM_DISTINCT == 2.0
  assert ReductionConfig.from_any('tome').distinct == ReductionConfig.from_any(dict(method='evit')).distinct == 0.0
  saved = {k: v for k, v in dataclasses.asdict(ReductionConfig.from_any('tpm')).items() if k != 'distinct'}
  assert set(saved) == set(ReductionConfig.FIELDS) - {'distinct'}
  assert ReductionConfig.from_any(saved).distinct == 0.0
  old = RunConfig.from_any(_smoke(**{'reduction.method': 'tpm'})).to_dict()
  del old['reduction']['distinct']  # a config.json of 2026-12-05
  assert RunConfig.from_any(old).reduction.distinct == 0.0
  assert ReductionConfig.from_any(dict(method='tpm', keep_rate=0.5)).distinct == 2.0  # a user's partial dict


def test_a_run_replaced_with_another_method_takes_that_method_s_distinct():
  """``RunConfig.replace(reduction=dict(method=...))`` (the distillation teacher: method none) kept tpm's resolved
  ``distinct`` 2, which the other methods refuse: the new method's default unless ``distinct`` is given too."""
  tpm = RunConfig.from_any(_smoke(**{'reduction.method': 'tpm'}))
  assert tpm.reduction.distinct == 2.0
  assert tpm.replace(reduction=dict(method='none'), multiscale=dict(method='none')).reduction.distinct == 0.0
  assert tpm.replace(reduction=dict(method='evit')).replace(reduction=dict(method='tpm')).reduction.distinct == 2.0
  assert tpm.replace(reduction=dict(keep_rate=0.5)).reduction.distinct == 2.0
  assert tpm.replace(reduction=dict(method='tpm', distinct=1.0)).reduction.distinct == 1.0
  with pytest.raises(ConfigError, match=r"reduction.distinct=1.0 is not accepted: expected 0 for method 'drop'"):
    tpm.replace(reduction=dict(method='drop', distinct=1.0))


def test_the_committed_backbone_is_the_model_its_own_recipe_describes():
  """Hostile pass 20's EC01: ``eval.py --checkpoint docs/results/fmnist_backbone --config
  configs/fmnist_backbone.py:stage=pretrain`` (the recipe that trained it; --config supplies the data settings)
  was refused as another model, over reduction fields a method-none model does not read. Fields that change the
  function still count."""
  from configs import fmnist_backbone
  from tpm_jax import evaluation, export
  saved = export.read_config(os.path.join(ROOT, 'docs', 'results', 'fmnist_backbone'))
  for arg in ('stage=pretrain', ''):
    given = RunConfig.from_any(fmnist_backbone.get_config(arg))
    if given.reduction.method == 'none':
      assert given.model_differences(saved) == [] and evaluation._check_same_model(saved, given) is None
  other = RunConfig.from_any(fmnist_backbone.get_config('stage=pretrain')).replace(model=dict(depth=10))
  assert [d.split('=')[0] for d in other.model_differences(saved)] == ['model.depth']
  tpm = RunConfig.from_any(fmnist_backbone.get_config('method=tpm'))
  assert 'reduction.method=' in ' '.join(tpm.model_differences(saved))

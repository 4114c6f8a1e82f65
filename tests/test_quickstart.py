"""The CPU configs (configs/fmnist.py, configs/quickstart.py) and the quickstart's report, run for
real on tiny data: the unpruned run, the export, the tpm fine-tune from it, the report."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tpm_jax
from configs import fmnist, quickstart
from tpm_jax.config import RunConfig
from tpm_jax.models.registry import model_from_config


def test_fmnist_config_has_deits_token_grid_and_schedule():
  c = fmnist.get_config('method=tpm,keep=0.7')
  assert (c.model.img_size // c.model.patch_size) ** 2 == 196 and c.model.in_chans == 1
  assert c.reduction.locations == '1,2,3' and c.dataset.name == 'fashion_mnist'
  # DeiT-S's schedule at keep 0.7 (3 of 12 blocks scaled to 3 of 4)
  assert tpm_jax.token_schedule(model_from_config(c)).stages == [197, 139, 98, 69]
  assert fmnist.get_config('depth=12').reduction.locations == '3,6,9'


def test_fmnist_stages_and_arg_keys():
  pre, ft = fmnist.get_config('stage=pretrain'), fmnist.get_config('method=evit,keep=0.5,seed=3')
  assert pre.reduction.method == 'none' and pre.num_epochs > ft.num_epochs and pre.optim.warmup_epochs > 0
  assert ft.reduction.method == 'evit' and ft.reduction.keep_rate == '0.5' and ft.seed == 3
  c = fmnist.get_config('method=tpm,similarity=tokens,weight=size,prop_attn=on,multiscale=cross')
  assert (c.reduction.similarity, c.reduction.weight, c.reduction.prop_attn, c.multiscale.method) == \
      ('tokens', 'size', True, 'cross')
  assert fmnist.get_config('method=tpm,prop_attn=off').reduction.prop_attn is False
  assert pre.model.pos_embed_init == 'trunc_normal'  # the reproduction's backbone, as it was run
  sincos = fmnist.get_config('stage=pretrain,pos_embed_init=sincos2d')
  assert model_from_config(sincos).cfg.pos_embed_init == 'sincos2d'
  with pytest.raises(ValueError, match="config arg 'keep_ratio' is not known: accepted are .*keep"):
    fmnist.get_config('keep_ratio=0.7')
  with pytest.raises(ValueError, match="stage='train'.*pretrain, finetune"):
    fmnist.get_config('stage=train')
  with pytest.raises(ValueError, match="prop_attn='yes'.*on, off"):
    fmnist.get_config('prop_attn=yes')


def test_tome_is_matched_to_the_keep_schedule():
  """ToMe on equal terms: r per location removes exactly the tokens keep_rate removes there."""
  for keep in (0.5, 0.7):
    tome = model_from_config(fmnist.get_config(f'method=tome,keep={keep}'))
    tpm = model_from_config(fmnist.get_config(f'method=tpm,keep={keep}'))
    assert tpm_jax.token_schedule(tome).per_block == tpm_jax.token_schedule(tpm).per_block
  m = 196
  matched = RunConfig.from_any(fmnist.get_config('method=tome,keep=0.7'))
  assert matched.reduction.r == 'keep'  # the config says what it is; the counts are resolved from the model
  for r in matched.reduction.tome_r(matched.vit.num_patches):
    assert r == m - math.ceil(0.7 * m)
    m -= r
  assert fmnist.get_config('method=tome,r=8').reduction.r == '8'


def test_tome_matched_to_keep_warms_up_with_the_keep_rate():
  """keep_warmup_epochs is no longer ignored by ToMe (hostile pass 14b's KW1): matched to the keep rate, its token
  counts warm up as tpm's do."""
  for method in ('tpm', 'tome'):
    run = RunConfig.from_any(fmnist.get_config(f'method={method},keep=0.5')).replace(keep_warmup_epochs=1.0, num_epochs=3,
                                                                                     keep_warmup_stages=4)
    stages = run.keep_stages(10)
    assert [k for _, k in stages] == pytest.approx([1.0, 5 / 6, 2 / 3, 0.5]), method
    # a warmup of 2 steps: the first two stages would start at step 1, and only the second trains; steps the run
    # does not reach train no stage (hostile pass 15's N_WARM_round0, related)
    rounded = lambda stages: [(first, round(k, 9)) for first, k in stages]
    assert rounded(run.keep_stages(2)) == rounded([(1, 5 / 6), (2, 2 / 3), (3, 0.5)])
    assert rounded(run.replace(total_steps=2).keep_stages(2)) == rounded([(1, 5 / 6), (2, 2 / 3)])
    assert run.replace(keep_warmup_epochs=0.01).keep_stages(10) == [(1, None)]  # rounds to no step: no warmup


def test_the_quickstart_refuses_a_workdir_whose_backbone_export_has_other_steps(tmp_path):
  """A second quickstart with more pretraining steps would train the backbone on and report it beside the fine-tune
  from its older export (hostile pass 14b's QS2): refused before anything runs."""
  from tpm_jax import quickstart as q
  from tpm_jax.config import ConfigError
  (tmp_path / 'pretrain_export').mkdir()
  (tmp_path / 'pretrain_export' / 'export.json').write_text(json.dumps(dict(step=10)))
  configs = {'pretrain': quickstart.get_config('stage=pretrain,pretrain_steps=30,smoke'),
             'tpm': quickstart.get_config('stage=finetune,smoke')}
  configs['pretrain'].total_steps = 30
  with pytest.raises(ConfigError, match='holds the backbone at step 10'):
    q.run(str(tmp_path), configs)
  assert sorted(os.listdir(tmp_path)) == ['pretrain_export']


def test_the_quickstart_s_refusal_of_another_run_names_its_own_way_on(tmp_path, capsys):
  """Hostile pass 20's QS07: a workdir holding another run was refused with train.py's way on,
  ``--config.overwrite=true``, a flag the quickstart does not have."""
  from tpm_jax import quickstart as q
  from tpm_jax.config import RunConfig
  (tmp_path / 'pretrain').mkdir()
  other = RunConfig.from_any(quickstart.get_config('stage=pretrain,smoke')).replace(seed=7)
  (tmp_path / 'pretrain' / 'config.json').write_text(json.dumps(other.to_dict()))
  with pytest.raises(SystemExit) as e:
    q.main(['--workdir', str(tmp_path), '--config_arg', 'smoke'])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count('\n') == 1 and 'seed=7 there' in err, err
  assert err.endswith(f'use another --workdir, or move {tmp_path} aside to start over\n') and 'overwrite' not in err
  assert sorted(os.listdir(tmp_path)) == ['pretrain'] and os.listdir(tmp_path / 'pretrain') == ['config.json']


def test_quickstart_configs():
  pre, ft = quickstart.get_config('stage=pretrain'), quickstart.get_config('')
  assert pre.reduction.method == 'none' and ft.reduction.method == 'tpm' and ft.reduction.keep_rate == '0.7'
  # a 7x7 token grid (patch 4), width 96: fast enough on 2 cores to reach 80% top-1 in minutes
  assert (pre.model.img_size // pre.model.patch_size) == 7 and pre.model.to_dict() == ft.model.to_dict()
  assert (pre.model.embed_dim, pre.model.num_heads, pre.dataset.eval_split) == (96, 3, 'test')
  assert pre.dataset.name == 'fashion_mnist' and pre.total_steps > ft.total_steps
  # the backbone is plain; the fine-tuned run is the library's recommended tpm (docs/RESULTS.md)
  assert (pre.multiscale.method, ft.multiscale.method, ft.reduction.prop_attn) == ('none', 'pool', True)
  assert pre.model.pos_embed_init == 'sincos2d'  # the short from-scratch run learns much faster with it
  assert quickstart.get_config('method=drop').reduction.prop_attn is False
  assert quickstart.get_config('prop_attn=off,multiscale=none').reduction.prop_attn is False


def test_fmnist_pins_the_reproductions_base():
  # docs/RESULTS.md's runs had prop_attn on for tome only and no multi-scale fusion; the library's
  # default changed after them, the reproduction config keeps them as they were run
  base = {m: fmnist.get_config(f'method={m}') for m in ('tpm', 'drop', 'evit', 'tome')}
  assert {m: c.reduction.prop_attn for m, c in base.items()} == dict(tpm=False, drop=False, evit=False, tome=True)
  assert {c.multiscale.method for c in base.values()} == {'none'}


def test_prop_attn_default_is_on_for_the_merging_methods():
  import jax
  from flax import nnx
  assert {m: tpm_jax.ReductionConfig(method=m).use_prop_attn for m in ('tpm', 'tome', 'evit', 'drop', 'none')} == \
      dict(tpm=True, tome=True, evit=False, drop=False, none=False)
  # and the model uses it: tpm's default gives prop_attn=True's logits, not False's
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  tiny = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=10)
  logits = {p: tpm_jax.jit_forward(tpm_jax.create_model(
      'vit_custom', reduction=dict(method='tpm', keep_rate=0.5, locations=(1, 2), prop_attn=p), rngs=nnx.Rngs(0),
      **tiny))(x) for p in (None, True, False)}
  np.testing.assert_array_equal(logits[None], logits[True])
  assert np.abs(logits[None] - logits[False]).max() > 1e-4


@pytest.fixture(scope='module')
def tiny_data(tiny_imagenet):  # the session's tiny imagenet2012: 4 classes, 16 validation images
  return tiny_imagenet


def _configs(data_dir):
  configs = {'pretrain': quickstart.get_config('stage=pretrain,smoke'),
             'tpm': quickstart.get_config('method=tpm,keep=0.7,smoke')}
  for c in configs.values():  # the real imagenet2012 builder on the tiny fixture, read as grayscale
    c.dataset.name, c.dataset.data_dir, c.dataset.eval_split = 'imagenet2012', data_dir, 'validation'
  return configs


def test_quickstart_report_on_tiny_runs(tiny_data, tmp_path, tensorflow_report):
  from tpm_jax import quickstart as qs_job
  workdir = str(tmp_path / 'qs')
  # the job in its own process, which must import no TensorFlow (the data is prepared beforehand, as
  # quickstart.sh does)
  env, read = tensorflow_report
  code = (f'import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_quickstart as t; '
          f'from tpm_jax import quickstart as q; json.dump(q.run({workdir!r}, t._configs({tiny_data!r})), '
          f'open({str(tmp_path / "result.json")!r}, "w"))')
  res = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert [imported for _, imported in read()] == [False], read()
  result = json.load(open(tmp_path / 'result.json'))
  for name in ('pretrain', 'tpm'):
    final = json.load(open(os.path.join(workdir, name, 'final.json')))
    row = result['runs'][name]
    assert row['top1'] == final['eval_top1'] and row['eval_examples'] == 16
    assert row['images_per_sec'] > 0
  # the fine-tune started from the export of the unpruned run
  assert json.load(open(os.path.join(workdir, 'tpm', 'final.json')))['config']['init']['checkpoint'] == \
      os.path.join(workdir, 'pretrain_export')
  # GMACs of each row are those of the model its config describes, and tpm's are lower
  cfgs = _configs(tiny_data)
  for name in ('pretrain', 'tpm'):
    assert result['runs'][name]['gmacs'] == pytest.approx(
        tpm_jax.count_flops(model_from_config(cfgs[name]), compile=False)['analytic_gmacs'])
  assert result['summary']['gmacs_ratio'] < 0.85
  assert result['runs']['tpm']['tokens'] == '65 -> 46 -> 33'
  # the picture: 6 test images over their token maps, at 224 px per 32 px image (scale 7)
  png = Image.open(os.path.join(workdir, 'tokens.png'))
  assert png.format == 'PNG' and png.size == (6 * 224 + 5 * 4, 2 * 224 + 4)
  tokens_row = np.asarray(png)[228:, :224].astype(int)
  assert len(np.unique(tokens_row.reshape(-1, 3), axis=0)) > 8  # tinted by destination, outlined
  md = open(os.path.join(workdir, 'report.md')).read()
  assert '| pretrain | none |' in md and '| tpm | tpm + multiscale pool + prop_attn | 0.7 |' in md and 'tokens.png' in md

  # Running it again repeats no training; only the report is rebuilt.
  mtimes = {n: os.path.getmtime(os.path.join(workdir, n, 'final.json')) for n in ('pretrain', 'tpm')}
  again = qs_job.run(workdir, _configs(tiny_data))
  assert {n: os.path.getmtime(os.path.join(workdir, n, 'final.json')) for n in mtimes} == mtimes
  assert again['runs']['tpm']['top1'] == result['runs']['tpm']['top1']

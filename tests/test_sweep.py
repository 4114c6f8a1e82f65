"""python -m tpm_jax.sweep: the product of arg-string values, names, commands, skipping finished runs,
up-front errors; collection with seed aggregation; and one real tiny sweep end to end."""
import csv
import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from test_checkpoint import SHALLOW

from configs import deit
from tpm_jax import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs/deit.py')


def _finish_by_hand(workdir, arg, top1, overrides=()):
  """The final.json a finished train.py run leaves (trainer.train_and_evaluate), written directly."""
  os.makedirs(workdir, exist_ok=True)
  config = sweep.load_run_config(f'{CONFIG}:{arg}', overrides).to_dict()
  with open(os.path.join(workdir, 'final.json'), 'w') as f:
    json.dump(dict(step=4, total_steps=4, eval_top1=top1, eval_top5=1.0, config=config), f)


def test_plan_is_the_product_in_sweep_order(tmp_path):
  runs = sweep.plan(CONFIG + ':smoke', ['method=tpm,drop', 'keep=0.5,0.7'], str(tmp_path))
  assert [r.name for r in runs] == ['method-tpm_keep-0.5', 'method-tpm_keep-0.7', 'method-drop_keep-0.5',
                                    'method-drop_keep-0.7']
  assert runs[1].values == {'method': 'tpm', 'keep': '0.7'}
  assert runs[1].config == CONFIG + ':smoke,method=tpm,keep=0.7'
  assert runs[1].workdir == os.path.join(str(tmp_path), 'runs', 'method-tpm_keep-0.7')
  # a mapping works as well; no base arg string; values are made filesystem safe in names only
  runs = sweep.plan(CONFIG, {'prop_attn': ['on', 'off'], 'seed': [3]}, str(tmp_path))
  assert [(r.name, r.config.split(':')[-1]) for r in runs] == [('prop_attn-on_seed-3', 'prop_attn=on,seed=3'),
                                                               ('prop_attn-off_seed-3', 'prop_attn=off,seed=3')]
  assert sweep.run_name({'model': 'a/b c'}) == 'model-a-b-c'


def test_print_commands_lists_the_unfinished_runs_and_runs_nothing(tmp_path, capsys):
  passthrough = ['--config.total_steps=4', '--config.dataset.data_dir=/data/some dir']
  _finish_by_hand(tmp_path / 'runs' / 'method-tpm_keep-0.7', 'smoke,method=tpm,keep=0.7', 0.5, passthrough)
  code = sweep.main(['--config', CONFIG + ':smoke', '--sweep', 'method=tpm,drop', '--sweep', 'keep=0.5,0.7',
                     '--workdir', str(tmp_path), '--print_commands', '--python', '/opt/py', *passthrough])
  assert code == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3
  commands = [shlex.split(l) for l in lines]
  for cmd, name, args in zip(commands, ['method-tpm_keep-0.5', 'method-drop_keep-0.5', 'method-drop_keep-0.7'],
                             ['method=tpm,keep=0.5', 'method=drop,keep=0.5', 'method=drop,keep=0.7']):
    assert cmd[:2] == ['/opt/py', os.path.join(ROOT, 'train.py')]
    assert cmd[cmd.index('--config') + 1] == f'{CONFIG}:smoke,{args}'
    assert cmd[cmd.index('--workdir') + 1] == str(tmp_path / 'runs' / name)
    assert cmd[-2:] == passthrough
  assert sorted(os.listdir(tmp_path / 'runs')) == ['method-tpm_keep-0.7']  # nothing ran, nothing was collected
  assert not (tmp_path / 'results.csv').exists()


@pytest.mark.parametrize('sweeps, named', [(['method=tpm', 'bogus=1,2'], 'bogus'),
                                           (['method=tpm,nope'], 'method=nope'),
                                           (['keep=0.5,abc'], 'keep=abc'),
                                           # a flag that sets what a key sweeps: both runs would train keep 0.9
                                           # labelled 0.5 and 0.7 (hostile pass 10's SW10, SW11)
                                           (['keep=0.5,0.7', '--config.reduction.keep_rate=0.9'],
                                            '--config.reduction.keep_rate sets reduction.keep_rate=0.9, which --sweep '
                                            'keep changes'),
                                           (['keep=0.7', '--config.reduction.keep_rate=0.9'],  # 0.7: the recipe's own
                                            'which --sweep keep changes'),  # (pass 11's N1)
                                           (['method=tpm,evit', '--config.reduction.method=drop'], "reduction.method='drop', which --sweep method"),
                                           # hostile pass 12: a flag on the field a declared key names (N1_sim, N1_wt,
                                           # N1_invalid_method), a label the config itself overrides (IGN_smoke_model:
                                           # smoke sets the model; IGN_none_ms: method none has no fusion), two labels
                                           # of one run (SEED_00; IGN_none_keep: method none reads no keep rate)
                                           (['similarity=keys', '--config.reduction.similarity=tokens'],
                                            "--config.reduction.similarity sets reduction.similarity='tokens'"),
                                           (['weight=importance', '--config.reduction.weight=size'], 'reduction.weight'),
                                           (['method=foo', '--config.reduction.method=evit'],
                                            "--sweep method=foo: the run would train reduction.method='evit', not foo"),
                                           (['keep=1.5,2', '--config.reduction.keep_rate=0.9'], 'would train reduction.keep_rate=0.9'),
                                           (['model=deit_tiny_patch16_224'],  # smoke sets the model (pass 17b's N6)
                                            'config arg model=deit_tiny_patch16_224 is not accepted with smoke'),
                                           (['method=none', 'multiscale=pool,cross'],
                                            "run method-none_multiscale-pool: multiscale.method='pool' is not accepted: "
                                            "expected 'none' when reduction.method='none'"),  # pass 19's A07: dropped
                                           (['multiscale=pool,cross', '--base', 'smoke,method=none'],
                                            "--sweep multiscale=pool: multiscale.method='pool' is not accepted: expected "
                                            "'none' when reduction.method='none'"),
                                           (['seed=0,00'], 'run seed-00 would train the same run as seed-0'),
                                           (['seed=0,0'], 'two runs get the same name seed-0 (a value given twice'),
                                           (['seed=0', '--throughput_batch=0'],  # pass 19's SW13: trained, then a
                                            '--throughput_batch=0 is not accepted: expected a positive int'),  # traceback
                                           (['keep=0.5,0.7', 'method=none,tpm'], 'run keep-0.5_method-none does not read '
                                            "reduction.keep_rate (reduction.method='none'): its label would name what was not "
                                            'trained'),
                                           # hostile pass 13a: ToMe with an integer r reads no keep rate (TOME_rflag); two keep
                                           # rates with one token count (KEEP_round); two model names of one shape
                                           # (DEIT_model_dimflag); a config's own value under the label (F_epochs0,
                                           # Q_smoke_steps, through configs/fmnist.py's and quickstart.py's ARG_FIELDS)
                                           (['keep=0.5', 'method=tpm,tome', '--config.reduction.r=8'],
                                            "run keep-0.5_method-tome does not read reduction.keep_rate (reduction.method="
                                            "'tome', reduction.r=8)"),
                                           (['keep=0.49,0.5'], 'run keep-0.5 would train the same run as keep-0.49'),
                                           (['model=deit_tiny_patch16_224,deit_small_patch16_224', '--base', 'method=tpm',
                                             '--config.model.embed_dim=192', '--config.model.num_heads=3'],
                                            'they differ only in model.name'),
                                           (['epochs=0,1', '--base', 'stage=pretrain', '--file', 'fmnist.py'],
                                            '--sweep epochs=0: total_steps=0 is not accepted: expected a positive number '
                                            'of steps, or num_epochs > 0'),  # pass 19's A18: 3 epochs without --sweep
                                           (['finetune_steps=100', 'method=tpm,evit', '--file', 'quickstart.py'],
                                            '--sweep finetune_steps=100: the run would train total_steps=3, not 100'),
                                           # hostile pass 14a: fields a run does not read (N_EP_smoke: epochs under
                                           # total_steps; N_POS_init: the position embedding's start under loaded
                                           # weights), equal token counts under a keep-rate warmup or where ToMe has
                                           # none (N_WARM_round, N_WARM_tome), a reduction that removes nothing is
                                           # the plain model (N_KEEP1_methods)
                                           (['epochs=1,2', '--file', 'fmnist.py'],
                                            'run epochs-1 does not read num_epochs (total_steps=6 is given)'),
                                           (['prop_attn=on,off', '--base', 'smoke,method=drop'],  # pass 18's K05: the
                                            "run prop_attn-on does not read reduction.prop_attn (reduction.method='drop')"),
                                           (['pos_embed_init=trunc_normal,sincos2d', '--file', 'fmnist.py', '--base',
                                             'smoke,method=tpm', f'--config.init.checkpoint={ROOT}/docs/results/fmnist_backbone'],
                                            'does not read model.pos_embed_init'),
                                           (['keep=0.49,0.5', '--config.keep_warmup_epochs=1'],
                                            'run keep-0.5 would train the same run as keep-0.49'),
                                           (['keep=0.49,0.5', 'method=tome', '--config.keep_warmup_epochs=1'],
                                            'run keep-0.5_method-tome would train the same run as keep-0.49_method-tome'),
                                           (['method=none,tpm,tome', '--file', 'fmnist.py', '--base', 'smoke,keep=1.0'],
                                            'run method-tpm would train the same run as method-none'),
                                           # hostile pass 15: epochs compared as the steps they give where the split's
                                           # size is known (N_EP_ceil: ceil(2.2) = ceil(2.8) = 3 steps; N_WARM_round0:
                                           # a keep-rate warmup of 0.0001 epoch is no step, and then 0.315 and 0.325
                                           # keep the same tokens)
                                           (['epochs=1.1,1.4', '--file', 'fmnist.py', '--config.total_steps=0',
                                             '--config.num_train_examples=256', '--config.batch_size=128'],
                                            'run epochs-1.4 would train the same run as epochs-1.1'),
                                           (['keep=0.315,0.325', '--file', 'fmnist.py', '--base', 'smoke,method=tpm',
                                             '--config.keep_warmup_epochs=0.0001', '--config.num_train_examples=256'],
                                            'run keep-0.325 would train the same run as keep-0.315'),
                                           # hostile pass 14a's N_MODEL_tag_pre: timm's default tag spelled out loads
                                           # the same pretrained weights
                                           (['model=deit_small_patch16_224,deit_small_patch16_224.fb_in1k', '--base',
                                             'method=tpm', '--config.init.pretrained=true'],
                                            'would train the same run as model-deit-small-patch16-224'),
                                           # hostile pass 16a's N25: data that is not there, before anything is written
                                           (['keep=0.5,0.7', '--file', 'fmnist.py', '--base', 'smoke,method=tpm',
                                             '--config.dataset.image_folder=/nonexistent'],
                                            "dataset.image_folder='/nonexistent' is not accepted"),
                                           (['keep=0.5,0.7', '--file', 'fmnist.py', '--base', 'smoke,method=tpm',
                                             '--config.init.checkpoint=/nonexistent'],  # pass 17's N25_init
                                            "init.checkpoint='/nonexistent' is not accepted")])
def test_a_bad_key_or_value_is_one_line_and_exit_code_2_before_anything_runs(tmp_path, capsys, sweeps, named):
  base = sweeps[sweeps.index('--base') + 1] if '--base' in sweeps else 'smoke'
  file = os.path.join(ROOT, 'configs', sweeps[sweeps.index('--file') + 1]) if '--file' in sweeps else CONFIG
  sweeps = [s for s in sweeps if s not in ('--base', base, '--file', os.path.basename(file))]
  argv = ['--config', f'{file}:{base}', '--workdir', str(tmp_path / 'sw')]
  assert sweep.main(argv + [a for s in sweeps for a in ((s,) if s.startswith('--') else ('--sweep', s))]) == 2
  out = capsys.readouterr()
  assert out.out == '' and len(out.err.strip().splitlines()) == 1
  assert out.err.startswith('error: ') and named in out.err, out.err
  assert not (tmp_path / 'sw').exists()


@pytest.mark.parametrize('sweeps', [
    # hostile pass 16a's N06, N07: a keep-rate warmup longer than the run trains keep 1 only, but each run is evaluated
    # at its own keep rate: two runs, not one
    ['keep=0.5,0.7', '--config.keep_warmup_epochs=100'], ['method=none,tpm', '--config.keep_warmup_epochs=100'],
    ['epochs=1,1.01', '--config.total_steps=0', '--config.num_train_examples=60000', '--config.batch_size=128']])
def test_runs_that_compute_differently_are_all_planned(tmp_path, capsys, sweeps):
  argv = ['--config', os.path.join(ROOT, 'configs/fmnist.py:smoke,method=tpm'), '--workdir', str(tmp_path / 'sw'),
          '--print_commands']
  assert sweep.main(argv + [a for s in sweeps for a in ((s,) if s.startswith('--') else ('--sweep', s))]) == 0
  assert len(capsys.readouterr().out.splitlines()) == 2


def test_a_run_found_to_be_another_once_its_data_is_prepared_is_not_trained(tmp_path, tiny_imagenet, capsys):
  """Planned before its data was prepared, a keep-rate warmup of 0.0001 epoch is compared as configured (keep 0.315
  and 0.325 differ at its stages); once an earlier run has prepared the data it rounds to no step, and the two are
  one run: the sweep asks again before each run, and does not train the second (hostile pass 16a's N12)."""
  data = tmp_path / 'data'
  data.mkdir()
  runs = sweep.plan(f'{CONFIG}:smoke,method=tpm', ['keep=0.315,0.325'], str(tmp_path / 'sw'),
                    overrides=['--config.keep_warmup_epochs=0.0001', f'--config.dataset.data_dir={data}'])
  sweep.check_one_run_per_label(runs)  # not known yet: accepted
  shutil.copytree(tiny_imagenet, data, dirs_exist_ok=True)  # what the first run's train.py would prepare
  failed = sweep.run(runs, python='true')  # a real process that trains nothing: the first run fails, exit 0
  assert [r.name for r in failed] == ['keep-0.315', 'keep-0.325']
  out = capsys.readouterr().out
  assert '[2/2] keep-0.325: not run: it would train the same run as keep-0.315' in out, out
  assert not os.path.exists(runs[1].workdir)
  # both finished in the folder all the same (by an older version, say): the table shows the run once, and says so
  overrides = ['--config.keep_warmup_epochs=0.0001', f'--config.dataset.data_dir={data}']
  sweep.save_plan(str(tmp_path / 'sw'), f'{CONFIG}:smoke,method=tpm', runs, overrides)
  for r, top1 in zip(runs, (0.5, 0.25)):
    _finish_by_hand(r.workdir, f'smoke,method=tpm,keep={r.values["keep"]}', top1, overrides)
  assert sweep.main(['--workdir', str(tmp_path / 'sw'), '--collect_only', '--throughput_batch', '4']) == 0
  err = capsys.readouterr().err
  assert 'warning: keep-0.325 trained the same run as keep-0.315: left out' in err, err
  assert [r['name'] for r in csv.DictReader(open(tmp_path / 'sw' / 'results.csv'))] == ['keep-0.315']


def test_a_users_config_file_gets_its_labels_checked_too(tmp_path, capsys):
  """A config file without ARG_FIELDS (or one naming no field) is still checked: a key that changes nothing is
  refused (hostile pass 13a's OWN_smoke_model, OWN_none_ms, OWN_typo); one that does passes."""
  source = open(CONFIG).read()
  own, typo = tmp_path / 'mycfg.py', tmp_path / 'typo.py'
  own.write_text(source.replace("__all__ = ['ARG_FIELDS', 'get_config']", "__all__ = ['get_config']").replace(
      'from configs.common import ARG_FIELDS, RECIPE_ARGS', 'from configs.common import RECIPE_ARGS'))
  typo.write_text(source.replace("__all__ = ['ARG_FIELDS', 'get_config']", "ARG_FIELDS = dict(model='model.nme')").replace(
      'from configs.common import ARG_FIELDS, RECIPE_ARGS', 'from configs.common import RECIPE_ARGS'))
  assert 'ARG_FIELDS =' not in own.read_text() and 'import ARG_FIELDS' not in own.read_text()
  assert "ARG_FIELDS = dict(model='model.nme')" in typo.read_text()

  def refused(config, *sweeps):
    code = sweep.main(['--config', config, '--workdir', str(tmp_path / 'sw'), '--print_commands',
                       *[a for s in sweeps for a in ('--sweep', s)]])
    out = capsys.readouterr()
    assert code == (2 if out.err else 0) and len(out.err.strip().splitlines()) <= 1
    return out.err
  assert 'config arg model=deit_tiny_patch16_224 is not accepted with smoke' in refused(
      f'{own}:smoke', 'model=deit_tiny_patch16_224', 'keep=0.5,0.7')  # smoke sets vit_custom (the recipe refuses)
  assert 'run keep-0.5_seed-0 does not read reduction.keep_rate' in refused(
      f'{own}:smoke,method=none', 'keep=0.5', 'seed=0,1')  # method none reads no keep rate
  assert "ARG_FIELDS names 'model.nme' for --sweep model, which is no field of a run config" in refused(
      f'{typo}:method=tpm', 'model=deit_tiny_patch16_224')
  assert refused(f'{own}:smoke', 'keep=0.5,0.7') == ''
  assert refused(f'{own}:smoke', 'seed=0') == ''
  assert refused(str(own), 'model=deit_small_patch16_224') == ''  # the config's own model: nothing to probe against


def test_over_seeds_pools_runs_of_one_config_only(tmp_path, capsys):
  """Rows are pooled over seeds by what their runs compute, not by the base's text: a config file edited between
  two sweeps into one folder is two groups, each named by its config's digest (hostile pass 14a's N_EDIT); a plan
  entry written before sweep.json recorded ``base`` pools with its seeds (N_OLD_collect); a --config.progress flag
  is no other base (N_OPFLAG_replan); a key the config turns into a pair (crop_min) is checked (N_CROP)."""
  own = tmp_path / 'mycfg.py'
  own.write_text(open(CONFIG).read())
  work = tmp_path / 'sw'

  def finish(seed, top1):
    workdir = work / 'runs' / f'seed-{seed}'
    os.makedirs(workdir)
    config = sweep.load_run_config(f'{own}:smoke,seed={seed}').to_dict()
    with open(workdir / 'final.json', 'w') as f:
      json.dump(dict(step=4, total_steps=4, eval_top1=top1, eval_top5=1.0, config=config), f)
  collect = ['--config', f'{own}:smoke', '--workdir', str(work), '--collect_only', '--throughput_batch', '4']
  finish(0, 0.5), finish(1, 0.7)
  assert sweep.main([*collect, '--sweep', 'seed=0,1', '--config.progress=off']) == 0
  plan = json.load(open(work / 'sweep.json'))
  assert {r['base'] for r in plan['runs']} == {str(own) + ':smoke'}  # the operational flag is no part of it
  own.write_text(open(CONFIG).read().replace('return apply_arg(c, a)', 'c.optim.weight_decay = 0.3\n  return apply_arg(c, a)'))
  assert 'weight_decay = 0.3' in own.read_text()
  finish(2, 0.9)
  assert sweep.main([*collect, '--sweep', 'seed=2']) == 0
  md = open(work / 'results.md').read()
  over = md.split('## Over seeds')[1]
  assert over.count(f'{own}:smoke (config ') == 2 and '| 2 | 60.00 |' in over and '| 1 | 90.00 |' in over, over
  # an old plan: no base, no run_config; its seeds pool again
  for r in plan['runs']:
    r.pop('base'), r.pop('run_config')
  json.dump(plan, open(work / 'sweep.json', 'w'))
  shutil.rmtree(work / 'runs' / 'seed-2')
  assert sweep.main(['--workdir', str(work), '--collect_only', '--throughput_batch', '4']) == 0
  over = open(work / 'results.md').read().split('## Over seeds')[1]
  assert '| 2 | 60.00 |' in over and 'config ' not in over, over
  own.write_text(open(CONFIG).read())  # and the same run under a new name is refused by its final.json (N_OLD_norc_dup)
  capsys.readouterr()
  assert sweep.main(['--config', f'{own}:smoke', '--sweep', 'seed=0', '--sweep', 'keep=0.7', '--workdir', str(work),
                     '--print_commands']) == 2
  assert 'run seed-0_keep-0.7 would train the same run as seed-0' in capsys.readouterr().err
  fm = os.path.join(ROOT, 'configs', 'fmnist.py')
  assert sweep.main(['--config', fm, '--sweep', 'crop_min=0.6', '--sweep', 'seed=0,1', '--workdir',
                     str(tmp_path / 'crop'), '--print_commands']) == 0, capsys.readouterr().err


def test_tome_matched_to_keep_follows_the_flags_and_r_0_merges_nothing(tmp_path):
  """``reduction.r='keep'`` is resolved from the final config, after the flags (hostile pass 13a's TOME_keepflag,
  TOME_methflag, TOME_locflag), and r=0 is ToMe merging nothing, no longer the matching sentinel (TOME_r0)."""
  def schedules(sweeps, overrides=()):
    return {r.name: [k for _, k, _ in r.run_config.reduction.schedule(r.run_config.vit.num_prefix_tokens,
                                                                       r.run_config.vit.num_patches)]
            for r in sweep.plan(CONFIG + ':smoke', sweeps, str(tmp_path), list(overrides))}
  got = schedules(['method=tpm,tome'], ['--config.reduction.keep_rate=0.5'])  # 64 patches at blocks 1, 2
  assert got == {'method-tpm': [32, 16], 'method-tome': [32, 16]}
  assert schedules(['keep=0.5'], ['--config.reduction.method=tome']) == {'keep-0.5': [32, 16]}
  got = schedules(['keep=0.5', 'method=tpm,tome'], ['--config.reduction.locations=1'])
  assert got == {'keep-0.5_method-tpm': [32], 'keep-0.5_method-tome': [32]}
  assert schedules(['r=0,8', 'method=tome']) == {'r-0_method-tome': [64, 64], 'r-8_method-tome': [56, 48]}


def test_collect_aggregates_over_seeds_and_lists_the_missing(tmp_path):
  top1 = {('tpm', '0'): 0.5, ('tpm', '1'): 0.75, ('tpm', '2'): 1.0, ('drop', '0'): 0.25, ('drop', '1'): 0.5}
  for (method, seed), t in top1.items():  # method-drop_seed-2 is not finished
    # method-drop_seed-1 retrained in its folder with overwrite=true and no progress bar: the same run (hostile
    # pass 11's OW_collect, OW_sweep; RunConfig.OPERATIONAL)
    how = ('--config.overwrite=true', '--config.progress=off') if (method, seed) == ('drop', '1') else ()
    _finish_by_hand(tmp_path / 'runs' / f'method-{method}_seed-{seed}', f'smoke,method={method},seed={seed}', t, how)
  code = sweep.main(['--config', CONFIG + ':smoke', '--sweep', 'method=tpm,drop', '--sweep', 'seed=0,1,2',
                     '--workdir', str(tmp_path), '--collect_only', '--throughput_batch', '4'])
  assert code == 0
  rows = list(csv.DictReader(open(tmp_path / 'results.csv')))
  assert [(r['method'], r['seed'], float(r['top1'])) for r in rows] == [(m, s, t) for (m, s), t in top1.items()]
  assert all(float(r['images_per_sec']) > 0 for r in rows)
  assert rows[0]['analytic_gmacs'] == rows[1]['analytic_gmacs'] != rows[3]['analytic_gmacs']  # seeds share a model
  md = open(tmp_path / 'results.md').read()
  assert '| tpm | 3 | 75.00 | 25.00 | 50.00–100.00 |' in md  # mean, sample std, min–max over the three seeds
  assert '| drop | 2 | 37.50 | 17.68 | 25.00–50.00 |' in md
  assert 'batch 4' in md and 'Missing (not finished): method-drop_seed-2' in md
  assert open(tmp_path / 'pareto.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  assert sweep.pareto_front([(1, 1), (2, 3), (3, 2), (4, 4)]) == [(1, 1), (2, 3), (4, 4)]
  assert sweep.pareto_front([(1, 1), (2, 3), (3, 2), (4, 4)], minimize_x=False) == [(4, 4)]


def test_sweeps_into_one_workdir_collect_into_one_table(tmp_path):
  """A baseline swept on its own and the methods swept over keep rates, into the same workdir: one
  table, '-' where a run's sweep did not set a key; a repeated sweep adds nothing twice."""
  _finish_by_hand(tmp_path / 'runs' / 'method-none', 'smoke,method=none', 0.5)
  _finish_by_hand(tmp_path / 'runs' / 'keep-0.5_method-tpm', 'smoke,method=tpm,keep=0.5', 0.25)
  base = ['--config', CONFIG + ':smoke', '--workdir', str(tmp_path), '--collect_only', '--throughput_batch', '4']
  assert sweep.main(base + ['--sweep', 'method=none']) == 0
  assert sweep.main(base + ['--sweep', 'keep=0.5', '--sweep', 'method=tpm,drop']) == 0
  assert sweep.main(base + ['--sweep', 'method=none']) == 0
  rows = list(csv.DictReader(open(tmp_path / 'results.csv')))
  assert [(r['name'], r['method'], r['keep'], float(r['top1'])) for r in rows] == \
      [('method-none', 'none', '-', 0.5), ('keep-0.5_method-tpm', 'tpm', '0.5', 0.25)]
  assert 'Missing (not finished): keep-0.5_method-drop' in open(tmp_path / 'results.md').read()
  assert len(json.load(open(tmp_path / 'sweep.json'))['runs']) == 3


def test_a_folder_counts_a_run_once_and_shows_what_each_row_was_swept_from(tmp_path, capsys):
  """Hostile pass 12: a seed sweep after a baseline into one folder would count the baseline's run twice
  over seeds (AGG): refused; a second sweep with another base config adds rows that say so (MIXBASE);
  a hand-damaged sweep.json is one line naming it (CO_f ... CO_i)."""
  _finish_by_hand(tmp_path / 'runs' / 'method-none', 'smoke,method=none', 0.5)
  _finish_by_hand(tmp_path / 'runs' / 'keep-0.6', 'smoke,method=evit,keep=0.6', 0.25)
  base = ['--workdir', str(tmp_path), '--collect_only', '--throughput_batch', '4']
  assert sweep.main(['--config', CONFIG + ':smoke', '--sweep', 'method=none', *base]) == 0
  err = capsys.readouterr().err  # a finished run the plan does not list is named, not silently left out (pass 14a)
  assert 'keep-0.6 under' in err and 'finished but sweep.json does not plan them: left out' in err, err
  assert sweep.main(['--config', CONFIG + ':smoke', '--sweep', 'seed=0,1', '--sweep', 'method=none', *base]) == 2
  err = capsys.readouterr().err
  assert "run seed-0_method-none would train the same run as method-none, which this folder's sweep.json already " \
      'plans' in err and len(err.strip().splitlines()) == 1, err
  assert sweep.main(['--config', CONFIG + ':smoke,method=evit', '--sweep', 'keep=0.6', *base]) == 0
  rows = list(csv.DictReader(open(tmp_path / 'results.csv')))
  assert [(r['name'], r['base']) for r in rows] == [('method-none', 'configs/deit.py:smoke'),
                                                   ('keep-0.6', 'configs/deit.py:smoke,method=evit')]
  assert '| keep-0.6 | - | 0.6 | 25.00 |' in open(tmp_path / 'results.md').read()
  plan = json.load(open(tmp_path / 'sweep.json'))
  for damage in (lambda p: p.pop('keys'), lambda p: p.update(runs=5), lambda p: p['runs'][0].pop('name'),
                 lambda p: p['runs'][0].update(values=None), lambda p: p['runs'][0].update(name='../x'),
                 # hostile pass 13a: a run listed twice, values edited (a result under another label), a base
                 # that is not a string, a run_config that is not one, an unknown kind
                 lambda p: p['runs'].append(p['runs'][0]), lambda p: p['runs'][1]['values'].update(keep='0.9'),
                 lambda p: p['runs'][0].update(base=['x']), lambda p: p['runs'][0]['run_config'].update(seed='x'),
                 lambda p: p.update(kind='other')):
    damaged = json.loads(json.dumps(plan))
    damage(damaged)
    (tmp_path / 'sweep.json').write_text(json.dumps(damaged))
    capsys.readouterr()
    assert sweep.main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {tmp_path}/sweep.json is not a sweep plan this version reads') and \
        len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope='module')
def data_dir(tiny_imagenet):
  return tiny_imagenet


def test_a_real_tiny_sweep_end_to_end_then_nothing_is_rerun(tmp_path, data_dir, tensorflow_report, capsys,
                                                            sigterm_once_written):
  """Also: the sweep and its train.py runs import no TensorFlow (Grain reads the TFDS data source,
  TensorBoard's own writer writes the events), checked in every process (a ``sitecustomize`` reports
  ``sys.modules`` at exit); TensorFlow is only for preparing a dataset (eval.py and the export:
  tests/test_export_eval.py).
  The sweep's later calls, which train nothing, run in this process (``sweep.main``). SIGTERM just after
  the sweep wrote its plot (while it ends) changes nothing: exit code 0."""
  from tpm_jax.flops import count_flops
  from tpm_jax.models.registry import model_from_config
  cmd = [sys.executable, '-m', 'tpm_jax.sweep', '--config', CONFIG + ':smoke', '--sweep', 'method=tpm,drop',
         '--workdir', str(tmp_path), '--throughput_batch', '8', f'--config.dataset.data_dir={data_dir}',
         '--config.total_steps=4', '--config.log_every_steps=4', *SHALLOW]
  env, read_tensorflow_report = tensorflow_report
  env = dict(env, JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='')
  p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  code, stdout, stderr = sigterm_once_written(p, tmp_path / 'pareto.png')
  assert code == 0 and 'Traceback' not in stderr, stdout[-3000:] + stderr[-3000:]
  workdir = tmp_path / 'runs' / 'method-tpm'
  processes = read_tensorflow_report()
  assert [p for p, _ in processes if 'train.py' in p], processes  # the sweep's training processes reported
  assert len(processes) >= 3 and not any(imported for _, imported in processes), processes
  # the run's TensorBoard events, written without TensorFlow, read back by TensorBoard
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(glob.glob(str(workdir / 'tensorboard' / 'events.out.tfevents.*'))[0])
  events.Reload()
  assert {'loss', 'eval_top1', 'learning_rate'} <= set(events.Tags()['scalars'])
  assert [e.step for e in events.Scalars('loss')] == [4]
  assert '[1/2] method-tpm: running ... finished, top-1' in stdout
  rows = list(csv.DictReader(open(tmp_path / 'results.csv')))
  assert [r['name'] for r in rows] == ['method-tpm', 'method-drop']
  for r in rows:
    final = json.load(open(tmp_path / 'runs' / r['name'] / 'final.json'))
    assert final['step'] == final['total_steps'] == 4 and int(r['steps']) == 4
    assert float(r['top1']) == final['eval_top1'] and float(r['top5']) == final['eval_top5']
    assert r['workdir'] == str(tmp_path / 'runs' / r['name'])
    c = deit.get_config(f'smoke,method={r["method"]}')
    c.model.depth, c.reduction.locations = 2, '1'  # SHALLOW
    model = model_from_config(c)
    assert float(r['analytic_gmacs']) == count_flops(model, compile=False)['analytic_gmacs']
    assert float(r['images_per_sec']) > 0
  assert float(rows[0]['analytic_gmacs']) > float(rows[1]['analytic_gmacs'])  # tpm's merge costs a little
  assert open(tmp_path / 'pareto.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'

  def listing():  # every file of the runs' workdirs with its content hash
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / 'runs').rglob('*')) if p.is_file()}
  before = listing()
  def sweep_main(*args):  # the sweep in this process: (exit code, stdout, stderr)
    code = sweep.main(list(args))
    return (code, *capsys.readouterr())
  code, _, err = sweep_main(*cmd[3:], '--collect_only')
  assert code == 0, err[-3000:]
  assert listing() == before  # the collection reads the runs and writes only the sweep's own tables

  logs = {r['name']: os.path.getmtime(tmp_path / 'runs' / r['name'] / 'train.log') for r in rows}
  os.remove(tmp_path / 'results.csv')
  code, out, err = sweep_main(*cmd[3:])
  assert code == 0, err[-3000:]
  assert out.count('skipped (finished)') == 2 and 'running' not in out
  assert logs == {n: os.path.getmtime(tmp_path / 'runs' / n / 'train.log') for n in logs}
  assert [r['top1'] for r in csv.DictReader(open(tmp_path / 'results.csv'))] == [r['top1'] for r in rows]

  # the same sweep asked with other settings: the finished runs are not reported under the new ones
  code, _, err = sweep_main(*cmd[3:], '--config.optim.lr=0.5')
  assert code == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
  assert '2 runs in this sweep' in err and 'optim.lr=' in err
  assert listing() == before
  # a run whose final.json records other settings than planned (train.py --config.overwrite=true in its
  # folder, say): --collect_only does not report it under the planned label (hostile pass 10's SW13)
  made = json.load(open(tmp_path / 'runs' / 'method-drop' / 'final.json'))
  made['config']['reduction']['keep_rate'] = 0.3
  (tmp_path / 'runs' / 'method-drop' / 'final.json').write_text(json.dumps(made))
  for args in (cmd[3:], ['--workdir', str(tmp_path), '--throughput_batch', '8']):  # with the config, or the plan's
    code, _, err = sweep_main(*args, '--collect_only')
    assert code == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
    assert 'method-drop' in err and 'keep_rate=0.3' in err and 'other settings' in err, err
  # a damaged final.json: collected without it, the file named, no traceback
  (tmp_path / 'runs' / 'method-drop' / 'final.json').write_text('{"step": 4, "eval_top1"')
  code, _, err = sweep_main(*cmd[3:], '--collect_only')
  assert code == 2 and len(err.strip().splitlines()) == 1, err[-3000:]
  assert str(tmp_path / 'runs' / 'method-drop' / 'final.json') in err
  # what sweep.json lists, without a config to check against: the damaged run left out, named
  code, _, err = sweep_main('--workdir', str(tmp_path), '--collect_only', '--throughput_batch', '8')
  assert code == 0, err[-3000:]
  assert str(tmp_path / 'runs' / 'method-drop' / 'final.json') in err
  assert [r['name'] for r in csv.DictReader(open(tmp_path / 'results.csv'))] == ['method-tpm']


def test_sigterm_to_a_sweep_stops_its_train_py_which_saves(tmp_path, data_dir, capsys):
  import signal
  import time
  cmd = [sys.executable, '-m', 'tpm_jax.sweep', '--config', CONFIG + ':smoke', '--sweep', 'method=tpm,drop',
         '--workdir', str(tmp_path), f'--config.dataset.data_dir={data_dir}', '--config.total_steps=400',
         '--config.checkpoint_every_steps=400', '--config.log_every_steps=1', *SHALLOW]
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES='')
  p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  run = tmp_path / 'runs' / 'method-tpm'
  deadline = time.time() + 300
  while time.time() < deadline and not (run / 'metrics.jsonl').exists():
    time.sleep(0.1)
  # a second sweep on the folder meanwhile: refused, naming the running one (as train.py's lock does)
  assert sweep.main(cmd[3:]) == 2
  busy = capsys.readouterr().err.strip()
  assert len(busy.splitlines()) == 1 and f'is in use by pid {p.pid} ' in busy and 'python -m tpm_jax.sweep --config' in busy, busy
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0 and 'stopped' in err and 'Traceback' not in err, err[-3000:]
  assert 'preempted: saved step' in (run / 'train.log').read_text()
  assert os.listdir(run / 'checkpoints') and not (tmp_path / 'runs' / 'method-drop').exists()
  # no train.py is left running in the run's workdir: its lock is free
  from tpm_jax.checkpoint import WorkdirLock
  WorkdirLock(str(run)).acquire().release()


def test_a_value_that_holds_beside_another_swept_key_s_is_planned(tmp_path, capsys):
  """Hostile pass 20's SW20, SW19f, SW19b: over a method-none base, ``--sweep method=tpm,evit --sweep
  multiscale=pool,cross`` and ``--sweep method=tpm --sweep distinct=0.5,2`` were refused, each value checked alone
  against the base (multi-scale fusion and distinct need a reduction). Each value is checked in the first combination
  where it holds; a combination that does not hold is named (SW19: the line blamed the base's method none)."""
  def sweep_of(*sweeps):
    code = sweep.main(['--config', os.path.join(ROOT, 'configs/fmnist.py:smoke'), '--workdir', str(tmp_path / 'sw'),
                       '--print_commands', *[a for s in sweeps for a in ('--sweep', s)]])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err
  code, commands, _ = sweep_of('method=tpm,evit', 'multiscale=pool,cross')
  assert code == 0 and [c.split(':smoke,')[1].split()[0] for c in commands] == [
      'method=tpm,multiscale=pool', 'method=tpm,multiscale=cross', 'method=evit,multiscale=pool',
      'method=evit,multiscale=cross']
  code, commands, _ = sweep_of('method=tpm', 'distinct=0.5,2')
  assert code == 0 and len(commands) == 2
  code, _, err = sweep_of('distinct=2', 'method=tpm,evit')
  assert code == 2 and err == ("error: run distinct-2_method-evit: reduction.distinct=2.0 is not accepted: expected 0 "
                               "for method 'evit' (it ranks tpm's crucial tokens only)\n")
  code, _, err = sweep_of('multiscale=pool')  # no combination holds it: the value's own line
  assert code == 2 and err.startswith("error: --sweep multiscale=pool: multiscale.method='pool' is not accepted")
  assert not (tmp_path / 'sw').exists()

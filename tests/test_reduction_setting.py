"""Reduction settings as one string (tpm_jax.reduction_setting): what eval.py --reduction, the sweep's
--reductions and the benchmarks' --settings read. Parsing only: nothing here builds a model."""
import pytest

from configs import fmnist
from tpm_jax.config import ConfigError, MultiscaleConfig, RunConfig, ViTConfig
from tpm_jax.flops import token_schedule
from tpm_jax.reduction_setting import matched_tome_r, parse_setting, parse_settings

FMNIST12 = RunConfig.from_any(fmnist.get_config('method=none,depth=12,patch=4,width=96'))  # 49 patches, (3, 6, 9)


@pytest.mark.parametrize('text, reduction, multiscale', [
    ('none', dict(method='none'), 'none'),
    ('tpm:0.7', dict(method='tpm', keep_rate=(0.7,) * 3, locations=(3, 6, 9), prop_attn=None), 'none'),
    ('tpm+pool:0.5@prop_attn=off', dict(method='tpm', keep_rate=(0.5,) * 3, prop_attn=False), 'pool'),
    ('tpm+cross:0.9@similarity=tokens@weight=size', dict(similarity='tokens', weight='size'), 'cross'),
    ('evit:0.6@locations=2/5/8', dict(method='evit', keep_rate=(0.6,) * 3, locations=(2, 5, 8)), 'none'),
    ('drop:0.8@assign=soft@tau=0.5', dict(method='drop', assign='soft', tau=0.5), 'none'),
    ('tome:4', dict(method='tome', r=(4,) * 12, locations=tuple(range(12))), 'none'),  # ToMe's way: every block
    ('tome:0.7', dict(method='tome', r=(14, 10, 7), locations=(3, 6, 9)), 'none'),  # 49 -> 35 -> 25 -> 18
])
def test_settings_on_a_12_block_fmnist_run(text, reduction, multiscale):
  run = parse_setting(text).apply(FMNIST12)
  for field, value in reduction.items():
    got = getattr(run.reduction, field)
    got = run.reduction.per_location(got) if field in ('keep_rate', 'r') else got
    assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, (field, got)
  assert run.multiscale.method == multiscale
  assert run.model == FMNIST12.model and run.dataset == FMNIST12.dataset  # only the reduction changes


def test_tome_matched_to_a_keep_rate_leaves_the_same_token_counts_as_tpm():
  for keep in (0.9, 0.8, 0.7, 0.6, 0.5):
    for run in (FMNIST12, RunConfig.from_any(dict(model=dict(name='deit_small_patch16_224')))):
      tome, tpm = (parse_setting(f'{m}:{keep}').apply(run) for m in ('tome', 'tpm'))
      assert token_schedule(tome).stages == token_schedule(tpm).stages, (keep, run.model.name)
  # DeiT-S at 0.7: 196 -> 138 -> 97 -> 68 patches (197 -> 139 -> 98 -> 69 with the class token)
  assert matched_tome_r(ViTConfig(), 0.7, (3, 6, 9)) == (58, 41, 29)
  # below 0.5 ToMe cannot merge that many (at most half per block): its schedule stays longer
  tome = parse_setting('tome:0.3').apply(FMNIST12)
  assert token_schedule(tome).stages[-1] > token_schedule(parse_setting('tpm:0.3').apply(FMNIST12)).stages[-1]


def test_the_trained_fusion_s_settings_are_kept_when_the_setting_names_the_same_fusion():
  run = FMNIST12.replace(reduction=dict(method='tpm'), multiscale=dict(method='pool', scales=(2,)))
  assert parse_setting('tpm+pool:0.7').apply(run).multiscale.scales == (2,)
  assert parse_setting('tpm+cross:0.7').apply(run).multiscale == MultiscaleConfig(method='cross')  # its own defaults
  assert parse_setting('tpm:0.7').apply(run).multiscale.method == 'none'


@pytest.mark.parametrize('text, says', [
    ('', 'it is empty'),
    ('prune:0.7', "method 'prune' is none of none, tpm, evit, drop, tome"),
    ('tpm+zoom:0.7', "multi-scale fusion 'zoom'"),
    ('tpm:0', 'keep rate 0 is not in (0, 1]'),
    ('tome:nan', "'nan' is not a finite number"),
    ('tome:inf', "'inf' is not a finite number"),
    ('tpm:0.7@locations=-1', '@locations=-1: blocks as 3/6/9'),
    ('tpm:1.2', 'keep rate 1.2 is not in (0, 1]'),
    ('tpm:seven', "'seven' is not a number"),
    ('tome:-2', "ToMe's r=-2 is negative"),
    ('none:0.5', 'none takes no fusion, value or keys'),
    ('tpm:0.7@speed=fast', '@speed=fast: accepted keys are'),
    ('tpm:0.7@prop_attn=yes', '@prop_attn=yes: on or off'),
    ('tpm:0.7@prop_attn=on@prop_attn=off', '@prop_attn is given twice'),
    ('tpm:0.7@locations=3,6', None),  # a comma separates settings: caught by parse_settings' first part
    ('tpm:0.7@similarity=cosine', "reduction.similarity='cosine'"),
    ('tpm:0.7@tau=-1', 'reduction.tau=-1.0'),
    ('tpm:0.7@assign=soft@tau=1e-30', 'reduction.tau=1e-30 is not accepted: expected a float in [0.001, 1e6]'),
    ('tpm:0.7@locations=', '@locations= has no value'),  # hostile pass 18's E15, E06
])
def test_malformed_settings_are_one_line_naming_the_setting_and_the_syntax(text, says):
  with pytest.raises(ConfigError) as e:
    parse_settings(text) if says is None else parse_setting(text)
  message = str(e.value)
  assert '\n' not in message and 'method[+multiscale][:value][@key=value...]' in message
  if says:
    assert says in message and repr(text) in message, message


def test_a_setting_that_does_not_fit_the_model_names_it_and_the_model():
  depth4 = RunConfig.from_any(fmnist.get_config('method=none,patch=4'))
  with pytest.raises(ConfigError, match=r"reduction setting 'tpm:0.7@locations=3/6/9' does not fit the model "
                                        r"\(vit_custom, depth 4, 49 patches\): reduction.locations"):
    parse_setting('tpm:0.7@locations=3/6/9').apply(depth4)
  # a block past DeiT-S's 12 is refused by the model it is applied to, naming that model's depth
  with pytest.raises(ConfigError, match=r'\[0, 4\) \(model depth 4\)'):
    parse_setting('tpm:0.7@locations=12').apply(depth4)
  with pytest.raises(ConfigError, match='is given twice'):
    parse_settings('tpm:0.7,evit:0.7,tpm:0.7')

"""benchmarks/profile_ops.py: the model's named scopes reach XLA's ops, and a real jax.profiler trace
of a real forward is read back and attributed to the parts of the model. No timing comparisons."""
import os
import sys

import tpm_jax
from tpm_jax import forward

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import profile_ops  # noqa: E402

TINY = dict(img_size=32, patch_size=4, embed_dim=48, depth=3, num_heads=3, num_classes=10)


def test_named_scopes_reach_the_compiled_ops_and_the_profile(tmp_path, monkeypatch, xla_own_codegen):
  own = forward.compiler_options
  monkeypatch.setattr(forward, 'compiler_options', lambda: {**(own() or {}), **xla_own_codegen})  # the ops users get
  models = {'none': tpm_jax.create_model('vit_custom', **TINY),
            'tpm': tpm_jax.create_model('vit_custom', reduction=dict(method='tpm', keep_rate=0.5, locations=(1,)), **TINY)}
  out = {name: profile_ops.profile_forward(m, 2, 2, str(tmp_path / name)) for name, m in models.items()}
  for name, r in out.items():
    assert r['ops'] and r['op_ms'] > 0, name
    assert all(o['op_name'] for o in r['ops']), [o['hlo_op'] for o in r['ops'] if not o['op_name']]
    assert r['by_part']['attn'] > 0 and r['by_part']['mlp'] > 0 and r['by_part']['embed'] > 0
    assert all(o['events'] == 1 for o in r['ops']), [o for o in r['ops'] if o['events'] != 1][:3]  # once per call
    assert r['wall_ms'] > 0 and abs(r['op_ms'] - sum(r['by_part'].values())) < 1e-2
  assert out['none']['by_part']['reduce'] == 0 and out['none']['by_part']['cls_attn'] == 0
  reduce_ops = [o for o in out['tpm']['ops'] if o['part'] == 'reduce']
  # the reduction (block 1 only) ranks by argsort and gathers by take_along_axis
  assert reduce_ops and all('/blocks.1/reduce/' in o['op_name'] for o in reduce_ops)
  assert any('argsort' in o['op_name'] for o in reduce_ops) and any('take_along_axis' in o['op_name'] for o in reduce_ops)
  assert any('/blocks.1/attn/cls_attn/' in o['op_name'] for o in out['tpm']['ops'])
  # every op of a block is named after that block: blocks 0..2 each own attention and MLP ops
  for i in range(TINY['depth']):
    assert any(f'/blocks.{i}/mlp/' in o['op_name'] for o in out['tpm']['ops']), i
  # proportional attention's log(size) belongs to the reduction that made the sizes
  assert any(o['op_name'].endswith('/blocks.1/reduce/log') for o in out['tpm']['ops'])
  assert out['tpm']['by_part']['other'] == 0
  machine = dict(date='d', device=None, cpu='cpu', backend='cpu', jax='j', flax='f')
  table = profile_ops.markdown(dict(command='c', machine=machine, model='m', dtype='float32', batch=2, steps=2, top=5,
                                    settings=out))
  assert '| reduce | 0.000 | ' in table and '## tpm: the costliest ops of reduce and cls_attn' in table


def test_hlo_op_names_fall_back_to_the_called_computation_and_operands():
  text = '''HloModule jit_f, entry_computation_layout={()->f32[]}

%fused (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %sin.0 = f32[4]{0} sine(%p), metadata={op_name="jit(f)/blocks.2/mlp/sin" stack_frame_id=2}
}

ENTRY %main.3 (x.1: f32[4]) -> f32[4] {
  %x.1 = f32[4]{0} parameter(0), metadata={op_name="x"}
  %sine_fusion = f32[4]{0} fusion(%x.1), kind=kLoop, calls=%fused
  ROOT %wrapped_reduce-window = f32[4]{0} fusion(%sine_fusion), kind=kLoop, calls=%other
}
'''
  names = profile_ops.hlo_op_names(text)
  assert profile_ops.module_name(text) == 'jit_f'
  assert names['sine_fusion'] == 'jit(f)/blocks.2/mlp/sin'  # from the computation it calls
  assert names['wrapped_reduce-window'] == 'jit(f)/blocks.2/mlp/sin'  # from its operand
  assert profile_ops.part_of('jit(f)/blocks.3/attn/cls_attn/exp') == 'cls_attn'
  assert profile_ops.part_of('jit(f)/blocks.3/reduce/jit(argsort)/sort') == 'reduce'
  assert profile_ops.part_of('jit(f)/log') == 'other'

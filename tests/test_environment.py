"""No module changes the process environment when imported: a GPU user's JAX must see their
devices (CUDA_VISIBLE_DEVICES, JAX_PLATFORMS) and their XLA flags, whatever they import."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import importlib, json, os, pkgutil, runpy, sys
start = dict(os.environ)
# Third-party imports set variables of their own (TensorFlow: TF2_BEHAVIOR, ...): not ours to judge,
# except the ones that decide which devices JAX and TensorFlow see (checked from the very start).
import tensorflow, tensorflow_datasets
before = dict(os.environ)
import tpm_jax
names = ['tpm_jax'] + [m.name for m in pkgutil.walk_packages(tpm_jax.__path__, 'tpm_jax.')]
for name in names:
  importlib.import_module(name)
if len(sys.argv) > 1:  # an entry point, as a module (its main does not run)
  runpy.run_path(sys.argv[1], run_name='entry_point')
after = dict(os.environ)
changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
devices = [k for k in ('CUDA_VISIBLE_DEVICES', 'JAX_PLATFORMS', 'XLA_FLAGS', 'TPU_VISIBLE_CHIPS')
           if start.get(k) != after.get(k)]
print(json.dumps(dict(modules=names, changed=changed, devices=devices)))
'''


def test_importing_every_module_and_entry_point_leaves_the_environment_alone():
  # A clean environment: none of the variables the test set-up (conftest) sets for itself.
  env = {k: v for k, v in os.environ.items()
         if k not in ('JAX_PLATFORMS', 'CUDA_VISIBLE_DEVICES', 'TF_CPP_MIN_LOG_LEVEL', 'XLA_FLAGS')}
  env['PYTHONPATH'] = ROOT
  for entry_point in ('train.py', 'eval.py'):  # each defines absl flags: one process each
    out = subprocess.run([sys.executable, '-c', SCRIPT, entry_point], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {'tpm_jax.trainer', 'tpm_jax.data.input_pipeline', 'tpm_jax.quickstart', 'tpm_jax.export',
            'tpm_jax.sweep', 'tpm_jax.models.vit'} <= set(result['modules'])
    assert result['changed'] == [], (entry_point, result['changed'])
    assert result['devices'] == [], (entry_point, result['devices'])

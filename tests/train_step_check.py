"""Run in a subprocess with 8 simulated CPU devices (tests/test_train.py): the same train steps on
1 device, data-parallel (8, 1) and FSDP (2, 4) meshes give the same loss trajectory, and the
data-parallel step's cross-device reductions do not grow with depth (no block communicates on its
own: the attention's recomputation once waited on one device's gradient element in every block)."""
import os
import re
import sys

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from flax import nnx

from configs import deit
from tpm_jax import sharding, trainer
from tpm_jax.config import MeshConfig, RunConfig


def run(mesh_shape, devices, depth=None, collectives=False):
  c = deit.get_config('smoke')
  c.model.depth, c.reduction.locations = depth or 2, '1'
  c.aug.mixup = c.aug.cutmix = 0.0
  c.model.num_classes = 10
  c.fsdp_min_size = 64
  run = RunConfig.from_any(c)
  mesh = sharding.make_mesh(MeshConfig(*mesh_shape), devices=devices)
  schedule = trainer.learning_rate_schedule(run.optim, run.batch_size, 10, 10)

  graphdef, state = nnx.split(trainer.create_train_state(run, schedule))
  state_sh = sharding.state_shardings(state, mesh, fsdp_min_size=run.fsdp_min_size)
  state = jax.device_put(state, state_sh)
  batch_sh = sharding.batch_sharding(mesh)
  step = trainer.jit_train_step(run, graphdef, mesh, state_sh)  # as the trainer compiles it
  if collectives:  # all-reduce instructions in the compiled step
    abstract = dict(image=jax.ShapeDtypeStruct((16, 32, 32, 3), np.uint8), label=jax.ShapeDtypeStruct((16,), np.int32))
    text = step.lower(state, abstract, jax.random.key(0)).compile().as_text()
    return sum(1 for line in text.splitlines() if re.search(r' all-reduce(-start)?\(', line))
  losses = []
  rs = np.random.RandomState(0)
  batch = dict(image=rs.randint(0, 256, (16, 32, 32, 3)).astype(np.uint8), label=rs.randint(0, 10, 16).astype(np.int32))
  for i in range(4):  # the same batch: the loss must fall
    batch = {k: jax.device_put(v, batch_sh) for k, v in batch.items()}
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics['loss']))
  sharded = [l for l in jax.tree.leaves(state) if hasattr(l, 'sharding') and not l.sharding.is_fully_replicated]
  return losses, len(sharded)


one, _ = run((1, 1), jax.devices()[:1])
dp, _ = run((8, 1), jax.devices())
fsdp, n_sharded = run((2, 4), jax.devices())
print(one, dp, fsdp, n_sharded, file=sys.stderr)
assert n_sharded > 0
np.testing.assert_allclose(dp, one, rtol=2e-5, atol=2e-5)
np.testing.assert_allclose(fsdp, one, rtol=2e-5, atol=2e-5)
assert one[-1] < one[0]
shallow, deep = (run((8, 1), jax.devices(), depth=d, collectives=True) for d in (2, 4))
print('all-reduce instructions at depth 2 and 4:', shallow, deep, file=sys.stderr)
assert 0 < shallow == deep, (shallow, deep)
print('TRAIN_SHARDED_OK')

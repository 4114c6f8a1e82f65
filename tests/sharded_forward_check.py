"""Run in a subprocess with 8 simulated CPU devices (tests/test_sharding.py): every method's
logits with the batch sharded over a ('data', 'fsdp') mesh equal the single-device logits."""
import os
import sys

os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
os.environ['JAX_PLATFORMS'] = 'cpu'

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import tpm_jax
from tpm_jax.sharding import make_mesh

assert jax.device_count() == 8, jax.devices()
mesh = make_mesh(dict(data=4, fsdp=2))  # the trainer's mesh: Auto axes (jax.make_mesh's default
# became Explicit axes after JAX 0.10, which the model does not support yet: README "Sharding")
replicated = NamedSharding(mesh, P())
batch_sharded = NamedSharding(mesh, P(('data', 'fsdp')))
x = np.random.RandomState(0).randn(16, 32, 32, 3).astype(np.float32)
for red in ['tpm', 'evit', 'drop', dict(method='tome', r=4), dict(method='tpm', assign='soft', similarity='tokens')]:
  model = tpm_jax.create_model('vit_custom', img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=3,
                               num_classes=10, reduction=red, multiscale='pool')
  graphdef, state = nnx.split(model)
  fwd = lambda s, x: nnx.merge(graphdef, s)(x)
  single = np.asarray(jax.jit(fwd)(state, jnp.asarray(x)))
  sharded_fn = jax.jit(fwd, in_shardings=(replicated, batch_sharded), out_shardings=batch_sharded)
  out = sharded_fn(jax.device_put(state, replicated), jax.device_put(x, batch_sharded))
  assert len(out.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(out), single, atol=1e-5, rtol=1e-5)
  print('ok', red, file=sys.stderr)
print('SHARDED_OK')

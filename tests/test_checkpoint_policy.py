"""Which checkpoints are kept: the last `keep` plus the best by eval top-1 (real Orbax, tiny state)."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from tpm_jax import checkpoint
from tpm_jax.checkpoint import Checkpointer


def test_keeps_the_last_n_and_the_best(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2)
  top1 = {2: 0.9, 4: 0.5, 6: 0.6, 8: 0.7, 10: 0.8}
  for step in range(1, 11):
    metrics = {'eval_top1': top1[step]} if step in top1 else None
    ckpt.save(step, {'params': {'w': jnp.full((3,), float(step))}}, {'step': step, 'data_position': step}, metrics=metrics)
  ckpt.wait()
  assert ckpt.all_steps() == [2, 9, 10]
  ckpt.close()
  step_dir = os.path.join(ckpt.directory, '2')
  assert checkpoint.verify_checksums(step_dir, 2)  # every kept step got its checksums
  items = checkpoint.restore_items(step_dir, 2, {'params': {'w': jax.ShapeDtypeStruct((3,), jnp.float32)}}, ['params'])
  np.testing.assert_array_equal(np.asarray(items['params']['w']), [2.0, 2.0, 2.0])
  assert checkpoint.read_meta(step_dir) == {'step': 2, 'data_position': 2}

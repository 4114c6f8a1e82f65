"""Which checkpoints are kept: the last `keep` plus the best by eval top-1 (real Orbax, tiny state)."""
import jax.numpy as jnp
import numpy as np

from tpm_jax.checkpoint import Checkpointer


def test_keeps_the_last_n_and_the_best(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2)
  top1 = {2: 0.9, 4: 0.5, 6: 0.6, 8: 0.7, 10: 0.8}
  for step in range(1, 11):
    metrics = {'eval_top1': top1[step]} if step in top1 else None
    ckpt.save(step, {'w': jnp.full((3,), float(step))}, {'step': step, 'data_position': step}, metrics=metrics)
  ckpt.wait()
  assert ckpt.all_steps() == [2, 9, 10]
  state, meta = ckpt.restore(2, {'w': jnp.zeros((3,))})
  np.testing.assert_array_equal(np.asarray(state['w']), [2.0, 2.0, 2.0])
  assert meta == {'step': 2, 'data_position': 2}
  ckpt.close()

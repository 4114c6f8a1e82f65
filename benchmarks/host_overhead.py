"""How much of a training step is the host's (Python, input pipeline, dispatch) and how much is
compute, for a tiny model where host overhead would show most. Not a test: a measurement.

  .venv/bin/python benchmarks/host_overhead.py [--batch 64] [--steps 40]

Measures, in one process: (a) the jitted train step alone on a batch already on the device
(median of blocked calls); (b) a full iteration of the training loop as trainer.py runs it
(next batch from the real TFDS fashion_mnist pipeline, global array, step, blocked).
Reports the fraction of the loop iteration that is compute. Writes benchmarks/results/host_overhead.json.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from configs import deit
from tpm_jax import sharding, trainer
from tpm_jax.data import input_pipeline


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--steps', type=int, default=40)
  p.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results', 'host_overhead.json'))
  args = p.parse_args()

  c = deit.get_config('smoke')
  c.dataset.name, c.dataset.eval_split, c.model.num_classes = 'fashion_mnist', 'test', 10
  c.batch_size = args.batch
  dataset = input_pipeline.get_dataset(c.dataset)
  setup = trainer.setup_training(c, total_steps=1000, steps_per_epoch=100, params=None)  # as the trainer builds it
  state, step = setup.state, setup.train_step()
  batch_sh = sharding.batch_sharding(setup.mesh)
  it = trainer.train_batches(c, dataset, local_batch=args.batch)
  rng = jax.random.key(0)

  fixed = sharding.global_batch(next(it), batch_sh)
  for i in range(5):  # compile and warm up
    state, m = step(state, fixed, jax.random.fold_in(rng, i))
  jax.block_until_ready(m)

  compute, loop = [], []
  for i in range(args.steps):
    t = time.perf_counter()
    state, m = step(state, fixed, jax.random.fold_in(rng, i))
    jax.block_until_ready(m)
    compute.append(time.perf_counter() - t)
    t = time.perf_counter()
    batch = sharding.global_batch(next(it), batch_sh)
    state, m = step(state, batch, jax.random.fold_in(rng, i))
    jax.block_until_ready(m)
    loop.append(time.perf_counter() - t)
  a, b = statistics.median(compute), statistics.median(loop)
  result = dict(model='smoke ViT (32 px, 64 tokens, width 48, depth 4), tpm keep 0.7', batch=args.batch,
                steps=args.steps, devices=jax.device_count(), step_ms=round(a * 1e3, 2), loop_iteration_ms=round(b * 1e3, 2),
                compute_fraction=round(a / b, 3), host_overhead_ms=round((b - a) * 1e3, 2))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()

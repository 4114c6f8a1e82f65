"""Train a Fashion-MNIST config from in-memory arrays, without TensorFlow: the trainer's own jitted
sharded init, train step and eval step, fed from the raw idx files. For a machine without
TensorFlow (the lent GPU machine), until the input pipeline needs none (issue 15); train.py remains
the way to train.

  python scripts/train_arrays.py --config configs/quickstart.py:stage=pretrain --data DIR [--epochs E] \\
      [--config.<field>=<value> ...]

DIR holds Fashion-MNIST's four idx .gz files (Debian's dataset-fashion-mnist installs them in
/usr/share/datasets/fashion-mnist). Host augmentation: random horizontal flips only (train.py's
pipeline also crops); the device side (normalisation, label smoothing, mixup/cutmix if the config
asks) is the trainer's. Prints one JSON line per epoch and a final one with the test top-1 on all
10,000 test images.
"""
import argparse
import gzip
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tpm_jax import sharding, trainer  # noqa: E402
from tpm_jax.sweep import load_run_config  # noqa: E402


def read_idx(path):
  with gzip.open(path) as f:
    data = f.read()
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(data_dir, split):
  prefix = 'train' if split == 'train' else 't10k'
  images = read_idx(os.path.join(data_dir, f'{prefix}-images-idx3-ubyte.gz'))[..., None]
  labels = read_idx(os.path.join(data_dir, f'{prefix}-labels-idx1-ubyte.gz')).astype(np.int32)
  return images, labels


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', required=True, help='configs/<file>.py[:arg string]')
  p.add_argument('--data', default='/usr/share/datasets/fashion-mnist')
  p.add_argument('--epochs', type=float, default=None, help='default: the config\'s steps')
  p.add_argument('--batch_size', type=int, default=None)
  p.add_argument('--dtype', default=None, help='float32 | bfloat16 (default: the config\'s)')
  args, overrides = p.parse_known_args()  # overrides: --config.<field>=<value>, as for train.py
  c = load_run_config(args.config, overrides)
  c = c.replace(batch_size=args.batch_size or c.batch_size, model=dict(dtype=args.dtype or c.model.dtype))
  x_train, y_train = load(args.data, 'train')
  x_test, y_test = load(args.data, 'test')
  steps_per_epoch = len(x_train) // c.batch_size
  total = (c.replace(total_steps=0, num_epochs=args.epochs) if args.epochs else c).steps(steps_per_epoch)
  setup = trainer.setup_training(c, total_steps=total, steps_per_epoch=steps_per_epoch)  # as the trainer builds it
  batch_sh = sharding.batch_sharding(setup.mesh)
  state = setup.state
  step_fn = setup.train_step()
  eval_fn = setup.eval_step()

  def evaluate(state, eval_batch=1000):
    tot = None
    for i in range(0, len(x_test), eval_batch):
      batch = dict(image=x_test[i:i + eval_batch], label=y_test[i:i + eval_batch],
                   mask=np.ones(len(y_test[i:i + eval_batch]), np.int32))
      out = jax.device_get(eval_fn(state, sharding.global_batch(batch, batch_sh)))
      tot = out if tot is None else {k: tot[k] + out[k] for k in out}
    return float(tot['correct1'] / tot['count'])

  rs = np.random.RandomState(c.seed)
  rng = jax.random.key(c.seed)
  t0 = time.time()
  step, epoch = 0, 0
  print(json.dumps(dict(device=str(jax.devices()[0]), backend=jax.default_backend(), dtype=c.model.dtype,
                        model=dict(width=c.vit.embed_dim, depth=c.vit.depth, patch=c.vit.patch_size),
                        reduction=c.reduction.method, batch_size=c.batch_size, total_steps=total)), flush=True)
  while step < total:
    order = rs.permutation(len(x_train))
    for b in range(steps_per_epoch):
      if step >= total:
        break
      idx = order[b * c.batch_size:(b + 1) * c.batch_size]
      images = x_train[idx]
      flip = rs.rand(len(idx)) < 0.5
      images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
      step += 1
      state, metrics = step_fn(state, sharding.global_batch(dict(image=images, label=y_train[idx]), batch_sh),
                               jax.random.fold_in(rng, step))
    epoch += 1
    loss = float(metrics['loss'])
    print(json.dumps(dict(epoch=epoch, step=step, loss=round(loss, 4), test_top1=round(evaluate(state), 4),
                          seconds=round(time.time() - t0, 1))), flush=True)
  top1 = evaluate(state)
  print(json.dumps(dict(final=True, steps=step, epochs=round(step / steps_per_epoch, 2), test_top1=top1,
                        test_examples=len(y_test), seconds=round(time.time() - t0, 1),
                        train_images_per_sec=round(step * c.batch_size / (time.time() - t0), 1))), flush=True)
  return 0 if math.isfinite(loss) else 1


if __name__ == '__main__':
  sys.exit(main())

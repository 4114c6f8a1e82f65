"""The quickstart job: a small ViT on real Fashion-MNIST (TFDS), trained briefly, with a report.

Run by ``bash quickstart.sh`` (which sets up ``.venv/`` first), or directly:
``python -m tpm_jax.quickstart --workdir workdirs/quickstart``.

The 28x28 images with patch 2 give a 14x14 token grid, like DeiT's at 224 px. This version
trains the unpruned backbone; token-reduced fine-tuning and the full report are added on top.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # TF must not take a GPU from JAX
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import tpm_jax
from tpm_jax.data.local_sources import prepare_fashion_mnist

MODEL = dict(img_size=28, patch_size=2, in_chans=1, embed_dim=64, depth=4, num_heads=2, num_classes=10)
MEAN, STD = 0.286, 0.353  # Fashion-MNIST pixel statistics


def load_split(data_dir, split):
  import tensorflow_datasets as tfds
  d = tfds.as_numpy(tfds.load('fashion_mnist', split=split, data_dir=data_dir, batch_size=-1, download=False))
  return d['image'], d['label']


def normalise(images_u8):
  return (images_u8.astype(np.float32) / 255.0 - MEAN) / STD


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--workdir', default='workdirs/quickstart')
  p.add_argument('--data_dir', default=None, help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)')
  p.add_argument('--steps', type=int, default=150)
  p.add_argument('--batch_size', type=int, default=128)
  p.add_argument('--lr', type=float, default=1e-3)
  args = p.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)

  data_dir = prepare_fashion_mnist(args.data_dir)
  x_train, y_train = load_split(data_dir, 'train')
  x_test, y_test = load_split(data_dir, 'test')

  model = tpm_jax.create_model('vit_custom', **MODEL, rngs=nnx.Rngs(params=0, dropout=1))
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, args.lr, min(30, args.steps // 5), args.steps), weight_decay=0.05)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))

  @jax.jit
  def train_step(state, images, labels):
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model):
      logits = model(images, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  @jax.jit
  def predict(state, images):
    model, _ = nnx.merge(graphdef, state)
    return jnp.argmax(model(images), -1)

  rng = np.random.default_rng(0)
  t0 = time.time()
  for step in range(1, args.steps + 1):
    idx = rng.integers(0, len(x_train), args.batch_size)
    state, loss = train_step(state, normalise(x_train[idx]), y_train[idx])
    if step % 25 == 0 or step == args.steps:
      print(f'step {step:5d}  loss {float(loss):.4f}  {step * args.batch_size / (time.time() - t0):.0f} img/s', flush=True)
  train_seconds = time.time() - t0

  correct = 0
  for i in range(0, len(x_test), 1000):
    correct += int((np.asarray(predict(state, normalise(x_test[i:i + 1000]))) == y_test[i:i + 1000]).sum())
  report = dict(model=MODEL, steps=args.steps, batch_size=args.batch_size, train_seconds=round(train_seconds, 1),
                top1=correct / len(x_test))
  with open(os.path.join(args.workdir, 'report.json'), 'w') as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))
  return report


if __name__ == '__main__':
  main()

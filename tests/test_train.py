"""The training loop: end to end through train.py's code path on TFDS mock data, sharded steps,
gradient accumulation."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
from flax import nnx

from configs import deit
from tpm_jax import sharding, trainer
from tpm_jax.config import RunConfig
from tpm_jax.throughput import peak_memory_bytes

HERE = os.path.dirname(__file__)


def _smoke_config():
  c = deit.get_config('smoke')
  c.model.num_classes = 1000
  c.model.depth, c.reduction.locations = 2, '1'  # tracing a shallower model: the suite's time budget
  return c


def test_train_end_to_end_on_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  c = _smoke_config()
  c.dataset.name, c.dataset.eval_split = 'cifar10', 'test'
  with tfds.testing.mock_data(num_examples=48):
    final = trainer.train_and_evaluate(c, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [2, 4, 6]
  for key in ('step', 'epoch', 'loss', 'learning_rate', 'images_per_sec'):
    assert all(key in r for r in rows)
  assert rows[-1]['eval_examples'] == 48 and 0 <= rows[-1]['eval_top1'] <= 1
  assert json.load(open(tmp_path / 'config.json'))['reduction']['method'] == 'tpm'
  assert final['step'] == 6 and np.isfinite(final['loss'])


def test_sharded_train_steps_match_one_device():
  env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
  res = subprocess.run([sys.executable, os.path.join(HERE, 'train_step_check.py')], env=env,
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0 and 'TRAIN_SHARDED_OK' in res.stdout, res.stderr[-3000:]


def _one_step(grad_accum_steps, batch, **overrides):
  c = _smoke_config()
  c.model.num_classes = 10
  c.aug.mixup = c.aug.cutmix = 0.0
  c.grad_accum_steps = grad_accum_steps
  for key, value in overrides.items():
    c.update_from_flattened_dict({key.replace('__', '.'): value})
  run = RunConfig.from_any(c)
  schedule = trainer.learning_rate_schedule(run.optim, run.batch_size, 10, 10)
  graphdef, state = nnx.split(trainer.create_train_state(run, schedule))
  state, metrics = jax.jit(trainer.make_train_step(run, graphdef))(state, batch, jax.random.key(0))
  return state, metrics, nnx.split(trainer.create_train_state(run, schedule))[1]


def test_gradient_accumulation_matches_the_big_batch():
  rs = np.random.RandomState(0)
  batch = dict(image=rs.randint(0, 256, (16, 32, 32, 3)).astype(np.uint8), label=rs.randint(0, 10, 16).astype(np.int32))
  big, m1, init = _one_step(1, batch)
  acc, m4, _ = _one_step(4, batch)
  np.testing.assert_allclose(float(m4['loss']), float(m1['loss']), rtol=1e-5)
  np.testing.assert_allclose(float(m4['grad_norm']), float(m1['grad_norm']), rtol=1e-4)  # the averaged gradient
  params = lambda s: [np.asarray(p) for p in jax.tree.leaves(nnx.filter_state(s, nnx.Param))]
  assert len(params(big['model'])) > 20 and len(params(init)) == len(params(big['model']))
  # The model after one AdamW step. Adam divides by sqrt(v) + eps, so float32 rounding in a
  # near-zero gradient can move an element's update by a fraction of the step; a wrong
  # accumulation moves many by the whole step. The tolerance is 10% of the largest step.
  step = max(np.abs(a - b).max() for a, b in zip(params(big['model']), params(init)))
  for a, b in zip(params(big['model']), params(acc['model'])):
    np.testing.assert_allclose(a, b, rtol=0, atol=0.1 * step)
  # and the tolerance tells accumulation from using a quarter of the batch
  quarter, _, _ = _one_step(1, {k: v[:4] for k, v in batch.items()})
  assert sum((np.abs(a - b) > 0.1 * step).sum() for a, b in zip(params(big['model']), params(quarter['model']))) > 1000


def test_gradient_accumulation_graph_does_not_grow_with_the_count():
  """A scan over micro-batches: the lowered train step has the same size for 2 and 8 micro-batches
  (an unrolled loop would repeat the forward and backward 8 times)."""
  rs = np.random.RandomState(0)
  batch = dict(image=rs.randint(0, 256, (16, 32, 32, 3)).astype(np.uint8), label=rs.randint(0, 10, 16).astype(np.int32))

  def hlo_ops(k):
    c = _smoke_config()
    c.model.num_classes, c.grad_accum_steps = 10, k
    run = RunConfig.from_any(c)
    schedule = trainer.learning_rate_schedule(run.optim, run.batch_size, 10, 10)
    graphdef, state = nnx.split(trainer.create_train_state(run, schedule))
    text = jax.jit(trainer.make_train_step(run, graphdef)).lower(state, batch, jax.random.key(0)).as_text()
    return sum(' = ' in line for line in text.splitlines())

  ops2, ops8, ops1 = hlo_ops(2), hlo_ops(8), hlo_ops(1)
  assert ops2 == ops8, (ops2, ops8)
  assert ops8 < 1.5 * ops1, (ops8, ops1)


def test_train_on_a_real_tiny_imagenet2012(tmp_path):
  """train.py's code path builds imagenet2012 with the real TFDS builder from a hand-made manual
  dir of real photos (tests/imagenet_fixture.py), trains, and the loss falls."""
  from imagenet_fixture import make_imagenet_manual_dir
  make_imagenet_manual_dir(str(tmp_path / 'manual'), num_classes=4, train_per_class=12, num_val=16)
  c = _smoke_config()
  c.dataset.manual_dir = str(tmp_path / 'manual')
  c.dataset.data_dir = str(tmp_path / 'tfds')
  c.aug.mixup = c.aug.cutmix = 0.0
  c.optim.lr = 3e-3 * 512 / 16  # 3e-3 at batch 16
  c.total_steps, c.log_every_steps, c.eval_every_steps = 40, 5, 40
  final = trainer.train_and_evaluate(c, str(tmp_path / 'run'))
  rows = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert rows[-1]['loss'] < 0.6 * rows[0]['loss'], [r['loss'] for r in rows]
  assert final['eval_examples'] == 16


def test_keep_rate_warmup_compiles_one_step_per_stage(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  traces = []  # one entry each time jax traces a train step (the Python body runs once per trace)
  make = trainer.make_train_step

  def counting(*args, **kwargs):
    step = make(*args, **kwargs)
    return lambda *a: (traces.append(1), step(*a))[1]
  monkeypatch.setattr(trainer, 'make_train_step', counting)
  c = _smoke_config()
  c.model.depth, c.reduction.locations = 2, '1'  # what is counted does not depend on the depth
  c.reduction.keep_rate = '0.5'
  c.keep_warmup_epochs, c.keep_warmup_stages = 2.0, 3  # 48 examples / 16 = 3 steps per epoch
  c.dataset.name, c.dataset.eval_split = 'cifar10', 'test'
  c.total_steps, c.log_every_steps, c.eval_every_steps = 8, 4, 0
  run = RunConfig.from_any(c)
  assert run.keep_stages(3.0) == [(1, 1.0), (4, 0.75), (7, 0.5)]
  with tfds.testing.mock_data(num_examples=48):
    trainer.train_and_evaluate(c, str(tmp_path))
  assert len(traces) == 3


def _batch():
  rs = np.random.RandomState(0)
  return dict(image=rs.randint(0, 256, (16, 32, 32, 3)).astype(np.uint8), label=rs.randint(0, 10, 16).astype(np.int32))


def test_ema_follows_the_parameters():
  after, _, before = _one_step(1, _batch(), optim__ema_decay=0.75)
  params = lambda s, i: jax.tree.leaves(nnx.filter_state(s[i], nnx.Param))
  moved = 0
  for e, p, p0 in zip(params(after, 'ema'), params(after, 'model'), params(before, 'model')):
    np.testing.assert_allclose(np.asarray(e), 0.75 * np.asarray(p0) + 0.25 * np.asarray(p), rtol=1e-5, atol=1e-6)
    moved += int(not np.allclose(np.asarray(p), np.asarray(p0)))
  assert moved > 10


def test_self_distillation_from_the_unpruned_backbone():
  """alpha=1: the loss is KL(teacher || student). At keep 1.0 the student is the backbone itself
  (same initial weights), so the KL is 0; pruning makes it positive. The teacher stays frozen."""
  deeper = dict(model__depth=4, reduction__locations='1,2')  # pruned early enough to move a fresh model's logits
  _, same, _ = _one_step(1, _batch(), distill__alpha=1.0, reduction__keep_rate='1.0', **deeper)
  after, pruned, before = _one_step(1, _batch(), distill__alpha=1.0, reduction__keep_rate='0.5', **deeper)
  assert abs(float(same['loss'])) < 1e-7
  assert float(pruned['loss']) > 1e-5  # (a fresh model's logits are nearly uniform: small but clear)
  teacher = lambda s: jax.tree.leaves(nnx.filter_state(s['teacher'], nnx.Param))
  assert len(teacher(after)) > 20
  for a, b in zip(teacher(after), teacher(before)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_deit_s_train_step_keeps_what_pytorch_keeps():
  """The DeiT-S train step (batch 32, float32, compiled as the trainer compiles it) needs at most
  1.1x of what PyTorch's keeps: parameters, gradients and AdamW's two moments, and per block the
  activations its backward reads (block input, both norms' outputs, q/k/v, attention output,
  residual stream, fc1 output and GELU output: 16 token-widths of 384). XLA's peak from
  memory_analysis (no run). It was 2.3x before GELU stopped sharing Phi(x) with the forward,
  LayerNorm got its own gradient, q/k/v a split, the attention its recomputation and the step its
  CPU compile option; each of those alone adds 0.3-1.3 GB."""
  c = deit.get_config('model=deit_small_patch16_224,method=none,multiscale=none')  # as benchmarks/throughput.py
  c.model.dtype, c.batch_size = 'float32', 32
  run = RunConfig.from_any(c)
  graph = trainer.create_train_state(run, trainer.learning_rate_schedule(run.optim, run.batch_size, 1000, 100))
  params = sum(x.size for x in jax.tree.leaves(nnx.state(graph.model, nnx.Param)))
  graphdef, state = nnx.split(graph)
  batch = dict(image=jax.ShapeDtypeStruct((32, 224, 224, 3), np.uint8), label=jax.ShapeDtypeStruct((32,), np.int32))
  mesh = sharding.make_mesh(run.mesh)  # one CPU device in this process
  step = trainer.jit_train_step(run, graphdef, mesh, sharding.state_shardings(state, mesh))
  peak = peak_memory_bytes(step.lower(state, batch, jax.random.key(0)).compile())
  B, N, D, depth = 32, 197, 384, 12
  kept = 4 * (4 * params + depth * 16 * B * N * D)
  assert peak <= 1.1 * kept, (peak / 2 ** 20, kept / 2 ** 20)

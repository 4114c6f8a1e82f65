"""The training loop: one ``jax.jit`` train step over a ('data', 'fsdp') mesh, explicit shardings,
donated state; NNX modules cross the jit boundary as split state (``nnx.split`` outside,
``nnx.merge`` inside). Writes ``config.json`` and ``metrics.jsonl`` (process 0 only)."""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from tpm_jax import augment, checkpoint, sharding
from tpm_jax.checkpoint import Checkpointer
from tpm_jax.compile_options import compiler_options
from tpm_jax.config import ReductionConfig
from tpm_jax.data import input_pipeline
from tpm_jax.data.checks import check_splits
from tpm_jax.models.registry import model_from_config
from tpm_jax.timm_weights import load_timm_weights
from tpm_jax.train_checks import validate_train_config
from tpm_jax.version import __version__

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Model and optimizer
# ------------------------------------------------------------------------------------------------
def decay_mask(params):
  """Weight decay on matmul/conv kernels only: not on norms, biases, position embeddings, tokens."""
  return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def learning_rate_schedule(config, total_steps: int, steps_per_epoch: float):
  o = config.optim
  peak = o.lr * config.batch_size / 512
  min_lr = o.min_lr * config.batch_size / 512 if o.min_lr else 0.0
  warmup = int(round(o.warmup_epochs * steps_per_epoch))
  return optax.warmup_cosine_decay_schedule(0.0 if warmup else peak, peak, max(warmup, 0),
                                            max(total_steps, warmup + 1), end_value=min_lr)


def make_optimizer(config, schedule):
  o = config.optim
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask))
  return optax.chain(*parts)


def keep_rate_stages(config, steps_per_epoch: float) -> list[tuple[int, object]]:
  """EViT's keep-rate warmup (1 -> target over ``keep_warmup_epochs``), quantised into at most
  ``keep_warmup_stages`` rates, each a separately compiled train step: [(first_step, keep_rate)].
  Without warmup: [(1, None)] (the configured rate). Token counts are shapes, so a smooth schedule
  would recompile every time a count changes; a few stages bound the compilations (and the memory
  of cached executables) at the cost of a coarser schedule."""
  warm_steps = int(round(config.get('keep_warmup_epochs', 0.0) * steps_per_epoch))
  n = int(config.get('keep_warmup_stages', 4))
  if warm_steps <= 0 or n <= 1 or config.reduction.method in ('none', 'tome'):
    return [(1, None)]
  target = ReductionConfig.from_any(config.reduction).keep_rate  # a float, or a tuple of one per location

  def rate(i):
    f = i / (n - 1)
    return tuple(1 - (1 - t) * f for t in target) if isinstance(target, tuple) else 1 - (1 - target) * f
  return [(1 + (i * warm_steps) // (n - 1), rate(i)) for i in range(n)]


def initial_params(config):
  """The model parameters ``config.init`` asks for (timm weights, then an export of this project),
  as an ``nnx.State`` of the model's parameters; None when the run starts from random weights."""
  if not (config.init.get('timm_checkpoint') or config.init.get('checkpoint')):
    return None
  model = model_from_config(config)
  if config.init.get('timm_checkpoint'):
    load_timm_weights(model, config.init.timm_checkpoint)
  if config.init.get('checkpoint'):  # an export of this project (python -m tpm_jax.export)
    checkpoint.load_params_into(model, config.init.checkpoint)
  return nnx.state(model, nnx.Param)


def build_train_graph(config, schedule, *, params=None, keep_rate=None):
  """(model, optimizer, teacher, ema), the model's parameters set to ``params`` when given (see
  ``initial_params``): the teacher is the unpruned backbone with the same initial weights, frozen
  (``config.distill.alpha`` > 0); ema a copy of the model whose parameters follow an exponential
  moving average (``config.optim.ema_decay`` > 0). Either is None when off. Pure given ``params``,
  so it runs inside ``jax.jit`` (``init_state``) and under ``nnx.eval_shape``."""
  model = model_from_config(config, keep_rate=keep_rate)
  if params is not None:
    nnx.update(model, params)
  optimizer = nnx.Optimizer(model, make_optimizer(config, schedule), wrt=nnx.Param)
  teacher = ema = None
  if config.distill.alpha > 0:
    plain = config.copy_and_resolve_references()
    with plain.unlocked():
      plain.reduction.method, plain.multiscale.method, plain.model.drop_path_rate = 'none', 'none', 0.0
    teacher = model_from_config(plain)
    backbone = {p: v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if p[0] != 'multiscale'}
    nnx.update(teacher, nnx.from_flat_state(backbone))
  if config.optim.ema_decay > 0:
    ema = nnx.clone(model)
  return model, optimizer, teacher, ema


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------
def make_train_step(config, graphdef, num_classes):
  """state: nnx state of (model, optimizer, teacher | None, ema | None); see ``build_train_graph``."""
  aug = config.aug
  k = int(config.grad_accum_steps)
  alpha = float(config.distill.alpha)
  ema_decay = float(config.optim.ema_decay)

  def loss_fn(model, images, targets, teacher_logits):
    logits = model(images, train=True)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    if teacher_logits is not None:  # self-distillation: KL(teacher || student) on the logits
      kl = optax.kl_divergence(jax.nn.log_softmax(logits), jax.nn.softmax(teacher_logits)).mean()
      loss = (1 - alpha) * loss + alpha * kl
    return loss, logits

  def train_step(state, batch, rng):
    model, optimizer, teacher, ema = nnx.merge(graphdef, state)
    images = augment.normalize(batch['image'], aug.mean, aug.std)
    if aug.random_erasing > 0 and 'erase' in batch:  # boxes from the host pipeline; their noise is drawn here
      images = augment.random_erasing(jax.random.fold_in(rng, 1), images, batch['erase'])
    targets = augment.smooth_targets(batch['label'], num_classes, aug.label_smoothing)
    images, targets = augment.mixup_cutmix(rng, images, targets, mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix)
    teacher_logits = None if teacher is None else jax.lax.stop_gradient(teacher(images, train=False))
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    if k == 1:
      (loss, logits), grads = grad_fn(model, images, targets, teacher_logits)
      correct = (jnp.argmax(logits, -1) == batch['label']).mean()
    else:  # gradient accumulation: a scan over k micro-batches (the graph does not grow with k), averaged
      micro = lambda a: None if a is None else a.reshape(k, a.shape[0] // k, *a.shape[1:])
      model_def, model_state = nnx.split(model)  # the model's rng counts advance inside the scan

      def accumulate(carry, xs):
        model_state, grads, loss, correct = carry
        images, targets, teacher_logits, labels = xs
        m = nnx.merge(model_def, model_state)
        (l, logits), g = grad_fn(m, images, targets, teacher_logits)
        grads = jax.tree.map(jnp.add, grads, g)
        correct = correct + (jnp.argmax(logits, -1) == labels).mean()
        return (nnx.state(m), grads, loss + l, correct), None

      zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
      (model_state, grads, loss, correct), _ = jax.lax.scan(
          accumulate, (model_state, zeros, jnp.zeros(()), jnp.zeros(())),
          (micro(images), micro(targets), micro(teacher_logits), micro(batch['label'])))
      nnx.update(model, model_state)
      grads, loss, correct = jax.tree.map(lambda g: g / k, grads), loss / k, correct / k
    optimizer.update(model, grads)
    if ema is not None:
      nnx.update(ema, jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                                   nnx.state(ema, nnx.Param), nnx.state(model, nnx.Param)))
    metrics = dict(loss=loss, train_accuracy=correct, grad_norm=optax.tree.norm(grads))
    return nnx.state((model, optimizer, teacher, ema)), metrics

  return train_step


def make_eval_step(config, graphdef):
  aug = config.aug

  def eval_step(state, batch):
    model, _, _, ema = nnx.merge(graphdef, state)
    model = model if ema is None else ema  # evaluate the EMA parameters when they are kept
    logits = model(augment.normalize(batch['image'], aug.mean, aug.std), train=False)
    mask = batch['mask'].astype(jnp.float32)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return dict(
        correct1=jnp.sum(mask * (jnp.argmax(logits, -1) == batch['label'])),
        correct5=jnp.sum(mask * jnp.any(top5 == batch['label'][:, None], axis=-1)),
        loss_sum=jnp.sum(mask * optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])),
        count=jnp.sum(mask))

  return eval_step


def jit_train_step(config, graphdef, num_classes, mesh, state_shardings):
  """``make_train_step`` as the trainer compiles it: ``jax.jit`` with the state's shardings in and
  out, the batch sharded over the mesh's devices, the rng and metrics replicated, the state donated,
  and the backend's compile options (``compiler_options()``)."""
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  return jax.jit(make_train_step(config, graphdef, num_classes), in_shardings=(state_shardings, batch_sh, repl),
                 out_shardings=(state_shardings, repl), donate_argnums=0, compiler_options=compiler_options())


def jit_eval_step(config, graphdef, mesh, state_shardings):
  """``make_eval_step`` as the trainer compiles it (the state's shardings, the batch sharded, the
  sums replicated, the backend's compile options)."""
  return jax.jit(make_eval_step(config, graphdef), in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh), compiler_options=compiler_options())


# ------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------
class MetricWriter:
  """metrics.jsonl (one JSON object per logged step) + TensorBoard event files, on process 0 only.
  The events are written with TensorBoard's own record writer and protos (no TensorFlow)."""

  def __init__(self, workdir, active: bool):
    self.active = active
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.tb = None
    if active:
      try:
        self.tb = _EventWriter(os.path.join(workdir, 'tensorboard'))
      except Exception as e:  # noqa: BLE001 (TensorBoard is a convenience; never fail a run for it)
        log.warning('no TensorBoard events: %s', e)

  def write(self, step, metrics):
    if not self.active:
      return
    row = {'step': int(step), **{k: (float(v) if not isinstance(v, str) else v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self.tb is not None:
      try:
        self.tb.scalars(int(step), {k: v for k, v in row.items() if k != 'step' and isinstance(v, float)})
      except Exception as e:  # noqa: BLE001 (e.g. a full disk: keep training, drop the events)
        log.warning('TensorBoard events disabled: %s', e)
        self.tb = None


class _EventWriter:
  """A TensorBoard event file (events.out.tfevents.*) of scalar summaries."""

  def __init__(self, logdir):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self.event_pb2, self.summary_pb2 = event_pb2, summary_pb2
    os.makedirs(logdir, exist_ok=True)
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
    self.writer = RecordWriter(open(os.path.join(logdir, name), 'ab'))
    self._write(self.event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event):
    self.writer.write(event.SerializeToString())
    self.writer.flush()

  def scalars(self, step, values):
    summary = self.summary_pb2.Summary(value=[self.summary_pb2.Summary.Value(tag=k, simple_value=v)
                                              for k, v in values.items()])
    self._write(self.event_pb2.Event(wall_time=time.time(), step=step, summary=summary))


class Progress:
  """A tqdm bar on a terminal; plain log lines otherwise."""

  def __init__(self, mode, total, start, active):
    self.bar = None
    self.active = active
    interactive = sys.stderr.isatty()
    if active and (mode == 'bar' or (mode == 'auto' and interactive)):
      self.bar = tqdm(total=total, initial=start, unit='step', dynamic_ncols=True)
    self.lines = active and mode != 'off' and self.bar is None
    self.t0, self.s0, self.total = time.time(), start, total

  def update(self, step, loss, images_per_sec):
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix(loss=f'{loss:.4f}', img_s=f'{images_per_sec:.0f}')
    elif self.lines:
      done = step - self.s0
      eta = (time.time() - self.t0) / max(done, 1) * (self.total - step)
      print(f'step {step}/{self.total}  loss {loss:.4f}  {images_per_sec:.1f} img/s  eta {eta:.0f}s', flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def _global_batch(batch, batch_sharding):
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v)) for k, v in batch.items()}


def train_and_evaluate(config, workdir: str):
  """Train ``config`` into ``workdir``; returns the final metrics (including the last eval).
  Bad settings raise ``ConfigError`` before anything is written or compiled."""
  validate_train_config(config, num_devices=jax.device_count(), process_count=jax.process_count(), workdir=workdir)
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  dataset = input_pipeline.get_dataset(config.dataset)
  # A TFDS dataset prepared just now had no split sizes for the start-up checks: its splits are checked here,
  # still before the workdir is written.
  check_splits(dataset, config.dataset, dataset.where)
  split_examples = dataset.num_examples(config.dataset.train_split)
  n_train = config.num_train_examples or split_examples
  steps_per_epoch = n_train / config.batch_size
  total_steps = int(config.total_steps or math.ceil(config.num_epochs * steps_per_epoch))
  schedule = learning_rate_schedule(config, total_steps, steps_per_epoch)
  num_classes = config.model.num_classes
  channels = config.model.get('in_chans') or 3

  # Build abstractly, shard, then materialise straight into the shardings (a jitted init).
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: build_train_graph(config, schedule)))
  state_sh = sharding.state_shardings(abstract_state, mesh, fsdp_min_size=config.fsdp_min_size)
  state = init_state(config, schedule, mesh, state_sh)

  # Resume is all or nothing: checkpoints that do not fit this config are refused here (ResumeMismatch,
  # exit 2), before the workdir is written; a step failing its integrity check is set aside.
  start, restored = 0, None
  if not config.get('overwrite'):
    restored = checkpoint.restore_for_resume(workdir, checkpoint.with_shardings(abstract_state, state_sh), config)
  if restored is not None:
    start, items, restored_meta = restored
    saved_n = restored_meta.get('train_examples')
    if saved_n is not None and int(saved_n) != split_examples:  # the input position indexes the same examples
      raise checkpoint.ResumeMismatch(
          f'dataset.train_split={config.dataset.train_split!r} has {split_examples} examples now and had {saved_n} when '
          f'checkpoint step {start} was saved ({dataset.where}): the saved input position would point into '
          f'another sequence; restore the data, or --config.overwrite=true to start over')
    state = checkpoint.items_into_state(state, items)

  # Only now, with everything checked and built, does the workdir get written.
  if is_main and config.get('overwrite') and os.path.exists(os.path.join(workdir, 'config.json')):
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for name in ('checkpoints', 'metrics.jsonl', 'tensorboard', 'config.json', 'final.json'):
      if os.path.exists(os.path.join(workdir, name)):
        os.rename(os.path.join(workdir, name), os.path.join(workdir, f'{name}.replaced-{stamp}'))
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  if jax.process_count() > 1:  # the others wait until process 0 has set the workdir up
    multihost_utils.sync_global_devices('workdir ready')

  batch_sh = sharding.batch_sharding(mesh)
  stages = keep_rate_stages(config, steps_per_epoch)
  compiled_steps = {}

  def train_step_for(step):
    i = max(j for j, (first, _) in enumerate(stages) if first <= step)
    if i not in compiled_steps:
      keep = stages[i][1]
      g = graphdef if keep is None else nnx.graphdef(nnx.eval_shape(lambda: build_train_graph(config, schedule, keep_rate=keep)))
      compiled_steps[i] = jit_train_step(config, g, num_classes, mesh, state_sh)
    return compiled_steps[i]
  eval_step = jit_eval_step(config, graphdef, mesh, state_sh)

  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  if restored is not None and is_main:
    print(f'resuming from step {start} ({ckpt.directory})', flush=True)

  local_batch = config.batch_size // jax.process_count()
  # The stream starts ``data_offset`` batches in: 0, unless the run resumed once from a step saved without
  # the pipeline's state (an earlier version), where it continued at the same batch count; Grain's state
  # is relative to that start, so the offset is saved with it.
  saved_position = restored is not None and checkpoint.has_data_position(workdir, start)
  data_offset = int(restored_meta.get('data_offset', 0)) if saved_position else (0 if restored is None else start)
  train_iter = input_pipeline.train_iterator(config, dataset, local_batch=local_batch,
                                             process_index=jax.process_index(), process_count=jax.process_count(),
                                             channels=channels, start_batch=data_offset)
  if saved_position:
    checkpoint.restore_data(workdir, start, train_iter)
  writer = MetricWriter(workdir, is_main)
  progress = Progress(config.progress, total_steps, start, is_main)
  rng = jax.random.key(config.seed)
  final = dict(step=start)
  t_last, s_last = time.time(), start
  with PreemptionNotice(config.get('preemption_check_every_steps', 10)) as preemption:
    for step in range(start + 1, total_steps + 1):
      batch = _global_batch(next(train_iter), batch_sh)
      ckpt.poll()
      state, metrics = train_step_for(step)(state, batch, jax.random.fold_in(rng, step))
      log_now = step % config.log_every_steps == 0 or step == total_steps
      save_now = step % config.checkpoint_every_steps == 0 or step == total_steps
      stop_now = preemption.requested(step)
      if log_now or save_now or stop_now:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(metrics['loss']):  # the last good checkpoint stays as it is
          ckpt.close()
          input_pipeline.close(train_iter)
          raise FloatingPointError(f'loss is {metrics["loss"]} at step {step}; stopping. The last good checkpoint '
                                   f'is step {ckpt.latest_step()} in {ckpt.directory}')
        row = dict(epoch=step / steps_per_epoch, learning_rate=float(schedule(step - 1)), **metrics)
        if log_now:
          now = time.time()
          row['images_per_sec'] = (step - s_last) * config.batch_size / max(now - t_last, 1e-9)
          t_last, s_last = now, step
          progress.update(step, row['loss'], row['images_per_sec'])
          if config.eval_every_steps and (step % config.eval_every_steps == 0 or step == total_steps):
            row.update(evaluate(config, dataset, state, eval_step, batch_sh, channels))
          writer.write(step, row)
        final = dict(step=step, **row)
        if save_now or stop_now:
          meta = dict(step=step, config=json.loads(config.to_json_best_effort()),
                      version=__version__, data_offset=data_offset, train_examples=split_examples)
          ckpt.save(step, checkpoint.state_items(state), meta, data=train_iter,
                    metrics={'eval_top1': row['eval_top1']} if 'eval_top1' in row else None)
        if stop_now:
          ckpt.wait()
          if is_main:
            print(f'preempted: saved step {step} to {ckpt.directory}; run the same command to resume', flush=True)
          final['preempted'] = True
          break
  ckpt.close()
  input_pipeline.close(train_iter)
  progress.close()
  if is_main and not final.get('preempted') and final['step'] == total_steps:
    # A finished run's summary: sweeps skip runs that have it and collect their results from it.
    final_record = dict(final, total_steps=total_steps, config=json.loads(config.to_json_best_effort()))
    with open(os.path.join(workdir, 'final.json'), 'w') as f:
      json.dump(final_record, f, indent=2)
  return final


class PreemptionNotice:
  """SIGTERM (a scheduler's preemption) sets a flag the loop checks after a step. One process reads
  it after every step. Several processes must agree on the step they save, which takes a collective:
  they compare flags every ``every_steps`` steps only (the same steps on all), so a preempted
  multi-host run saves at most ``every_steps - 1`` steps after the signal, and the other steps run
  no collective for it."""

  def __init__(self, every_steps: int = 10):
    self.every_steps = int(every_steps)
    self._flag = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def requested(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self._flag
    if step % self.every_steps:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(self._flag))))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def init_state(config, schedule, mesh, state_sh):
  """The train state (``build_train_graph``) materialised straight into ``state_sh`` by a jitted
  init: no array of the optimizer, EMA or teacher passes through one device or the host. Weights
  from ``config.init`` enter as the jitted function's argument, sharded like the parameters."""
  params = initial_params(config)
  init = lambda p: nnx.state(build_train_graph(config, schedule, params=p))
  if params is None:
    return jax.jit(lambda: init(None), out_shardings=state_sh)()
  params_sh = sharding.state_shardings(params, mesh, fsdp_min_size=config.fsdp_min_size)
  return jax.jit(init, in_shardings=(params_sh,), out_shardings=state_sh)(sharding.to_global(params, params_sh))


def evaluate(config, dataset, state, eval_step, batch_sh, channels=3, split=None):
  eval_batch = config.eval_batch_size or config.batch_size
  totals = None
  for batch in input_pipeline.eval_batches(config, dataset, split or config.dataset.eval_split,
                                           local_batch=eval_batch // jax.process_count(),
                                           process_index=jax.process_index(), process_count=jax.process_count(),
                                           channels=channels):
    out = jax.device_get(eval_step(state, _global_batch(batch, batch_sh)))
    totals = out if totals is None else {k: totals[k] + out[k] for k in out}
  n = max(float(totals['count']), 1.0)
  return dict(eval_top1=float(totals['correct1']) / n, eval_top5=float(totals['correct5']) / n,
              eval_loss=float(totals['loss_sum']) / n, eval_examples=float(totals['count']))

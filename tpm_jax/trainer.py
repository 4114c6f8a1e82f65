"""The training loop: one ``jax.jit`` train step over a ('data', 'fsdp') mesh, explicit shardings,
donated state; NNX modules cross the jit boundary as split state (``nnx.split`` outside,
``nnx.merge`` inside). Everything is set up from a typed ``RunConfig``; functions receive the
section they use. Writes ``config.json``, ``metrics.jsonl`` and ``final.json`` (process 0 only).

Public pieces, used by train.py, scripts, benchmarks and tests alike: ``TrainState`` (the named
state), ``setup_training`` (state, shardings and schedule of a run, built as the trainer builds
them), ``jit_train_step`` / ``jit_eval_step`` (the steps as the trainer compiles them),
``evaluate`` and ``train_and_evaluate``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from tpm_jax import augment, checkpoint, preflight, sharding
from tpm_jax.checkpoint import Checkpointer
from tpm_jax.cli import muted
from tpm_jax.compile_options import compiler_options
from tpm_jax.config import AugConfig, ConfigError, OptimConfig, RunConfig
from tpm_jax.data import input_pipeline
from tpm_jax.files import read_json_object, write_json, written_whole
from tpm_jax.models.registry import model_from_config
from tpm_jax.pretrained import weights_file
from tpm_jax.timm_weights import load_timm_weights
from tpm_jax.version import __version__

log = logging.getLogger(__name__)


class Stopped(Exception):
  """A stop signal (SIGTERM, SIGINT) arrived before training began: nothing to save (exit 0)."""


# ------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ------------------------------------------------------------------------------------------------
def decay_mask(params):
  """Weight decay on matmul/conv kernels only: not on norms, biases, position embeddings, tokens."""
  return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)


def learning_rate_schedule(optim: OptimConfig, batch_size: int, total_steps: int, steps_per_epoch: float):
  """Linear warmup over ``optim.warmup_epochs``, then cosine to ``optim.min_lr``; both scaled by
  ``batch_size / 512``."""
  peak = optim.lr * batch_size / 512
  min_lr = optim.min_lr * batch_size / 512 if optim.min_lr else 0.0
  warmup = optim.warmup_steps(steps_per_epoch)
  return optax.warmup_cosine_decay_schedule(0.0 if warmup else peak, peak, max(warmup, 0),
                                            max(total_steps, warmup + 1), end_value=min_lr)


def make_optimizer(optim: OptimConfig, schedule):
  parts = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip else []
  parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay, mask=decay_mask))
  return optax.chain(*parts)


# ------------------------------------------------------------------------------------------------
# The train state
# ------------------------------------------------------------------------------------------------
class TrainState(nnx.Module):
  """What a run trains and saves, by name: ``model``, ``optimizer`` (its ``step`` and ``opt_state``),
  ``teacher`` (the frozen unpruned backbone of self-distillation, or None; rebuilt, not saved) and
  ``ema`` (a copy of the model whose parameters follow an exponential moving average, or None).
  Checkpoint items map to these names (``tpm_jax.checkpoint.items``)."""

  def __init__(self, model, optimizer, teacher=None, ema=None):
    self.model, self.optimizer, self.teacher, self.ema = model, optimizer, teacher, ema


def initial_params(run: RunConfig):
  """The model parameters ``run.init`` asks for (timm weights: a file or pretrained; then an export of this project), as
  an ``nnx.State`` of the model's parameters; None when the run starts from random weights."""
  if not (run.init.timm_checkpoint or run.init.pretrained or run.init.checkpoint):
    return None
  model = model_from_config(run)
  if run.init.timm_checkpoint:
    load_timm_weights(model, os.path.expanduser(run.init.timm_checkpoint))
  if run.init.pretrained:
    load_timm_weights(model, weights_file(run.model.name))
  if run.init.checkpoint:
    preflight.load_export_into('init.checkpoint', model, run.init.checkpoint)
  return nnx.state(model, nnx.Param)


def create_train_state(run: RunConfig, schedule, *, params=None, keep_rate=None) -> TrainState:
  """The run's ``TrainState``, the model's parameters set to ``params`` when given (see
  ``initial_params``). Pure given ``params``, so it runs inside ``jax.jit`` and ``nnx.eval_shape``."""
  model = model_from_config(run, keep_rate=keep_rate)
  if params is not None:
    nnx.update(model, params)
  optimizer = nnx.Optimizer(model, make_optimizer(run.optim, schedule), wrt=nnx.Param)
  teacher = ema = None
  if run.distill.alpha > 0:
    plain = run.replace(reduction=dict(method='none'), multiscale=dict(method='none'), model=dict(drop_path_rate=0.0))
    teacher = model_from_config(plain)
    backbone = {p: v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if p[0] != 'multiscale'}
    nnx.update(teacher, nnx.from_flat_state(backbone))
  if run.optim.ema_decay > 0:
    ema = nnx.clone(model)
  return TrainState(model, optimizer, teacher, ema)


@dataclasses.dataclass
class TrainSetup:
  """A run's state as the trainer builds it: ``graphdef`` and ``state`` (``nnx.split`` of its
  ``TrainState``, materialised straight into ``shardings`` on ``mesh``) and the lr ``schedule``."""
  run: RunConfig
  graphdef: Any
  state: Any
  shardings: Any
  mesh: Any
  schedule: Any
  abstract_state: Any

  def materialise(self, params='init') -> None:
    """``state``: the train state built by a jitted init straight into ``shardings``. ``params``:
    'init' loads ``run.init``'s weights (as the trainer does), None random ones, or an ``nnx.State``."""
    run, schedule = self.run, self.schedule
    params = initial_params(run) if isinstance(params, str) and params == 'init' else params
    init = lambda p: nnx.state(create_train_state(run, schedule, params=p))
    if params is None:
      self.state = jax.jit(lambda: init(None), out_shardings=self.shardings)()
    else:
      params_sh = sharding.state_shardings(params, self.mesh, fsdp_min_size=run.fsdp_min_size)
      self.state = jax.jit(init, in_shardings=(params_sh,), out_shardings=self.shardings)(
          sharding.to_global(params, params_sh))

  def train_step(self, keep_rate=None):
    """The jitted train step (``jit_train_step``); ``keep_rate`` (warmup): another compiled step."""
    g = self.graphdef
    if keep_rate is not None:
      g = nnx.graphdef(nnx.eval_shape(lambda: create_train_state(self.run, self.schedule, keep_rate=keep_rate)))
    return jit_train_step(self.run, g, self.mesh, self.shardings)

  def eval_step(self):
    return jit_eval_step(self.run.aug, self.graphdef, self.mesh, self.shardings)


def setup_training(run, *, total_steps: int, steps_per_epoch: float, mesh=None, params='init',
                   materialise: bool = True) -> TrainSetup:
  """Build a run's train state as the trainer does: abstractly first, sharded over ``mesh`` (default:
  ``run.mesh`` over all devices), then materialised straight into its shardings by a jitted init (no
  array of the optimizer, EMA or teacher passes through one device or the host). ``params``: 'init'
  loads ``run.init``'s weights; None starts from random ones; or an ``nnx.State`` of parameters."""
  run = RunConfig.from_any(run)
  mesh = mesh if mesh is not None else sharding.make_mesh(run.mesh)
  schedule = learning_rate_schedule(run.optim, run.batch_size, total_steps, steps_per_epoch)
  graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: create_train_state(run, schedule)))
  state_sh = sharding.state_shardings(abstract_state, mesh, fsdp_min_size=run.fsdp_min_size)
  setup = TrainSetup(run, graphdef, None, state_sh, mesh, schedule, abstract_state)
  if materialise:
    setup.materialise(params)
  return setup


# ------------------------------------------------------------------------------------------------
# Steps
# ------------------------------------------------------------------------------------------------
def make_train_step(run: RunConfig, graphdef):
  """``train_step(state, batch, rng) -> (state, metrics)`` of a ``TrainState`` split as ``graphdef``."""
  aug, num_classes = run.aug, run.model.num_classes
  k = int(run.grad_accum_steps)
  alpha = float(run.distill.alpha)
  ema_decay = float(run.optim.ema_decay)

  def loss_fn(model, images, targets, teacher_logits):
    logits = model(images, train=True)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    if teacher_logits is not None:  # self-distillation: KL(teacher || student) on the logits
      kl = optax.kl_divergence(jax.nn.log_softmax(logits), jax.nn.softmax(teacher_logits)).mean()
      loss = (1 - alpha) * loss + alpha * kl
    return loss, logits

  def train_step(state, batch, rng):
    ts = nnx.merge(graphdef, state)
    model, optimizer, teacher, ema = ts.model, ts.optimizer, ts.teacher, ts.ema
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
    return nnx.state(ts), metrics

  return train_step


def make_eval_step(aug: AugConfig, graphdef):
  """``eval_step(state, batch) -> sums`` of a ``TrainState`` (its EMA parameters when kept)."""
  def eval_step(state, batch):
    ts = nnx.merge(graphdef, state)
    model = ts.model if ts.ema is None else ts.ema
    logits = model(augment.normalize(batch['image'], aug.mean, aug.std), train=False)
    mask = batch['mask'].astype(jnp.float32)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return dict(
        correct1=jnp.sum(mask * (jnp.argmax(logits, -1) == batch['label'])),
        correct5=jnp.sum(mask * jnp.any(top5 == batch['label'][:, None], axis=-1)),
        loss_sum=jnp.sum(mask * optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])),
        count=jnp.sum(mask))

  return eval_step


def jit_train_step(run: RunConfig, graphdef, mesh, state_shardings):
  """``make_train_step`` as the trainer compiles it: ``jax.jit`` with the state's shardings in and
  out, the batch sharded over the mesh's devices, the rng and metrics replicated, the state donated,
  and the backend's compile options (``compiler_options()``)."""
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  return jax.jit(make_train_step(run, graphdef), in_shardings=(state_shardings, batch_sh, repl),
                 out_shardings=(state_shardings, repl), donate_argnums=0, compiler_options=compiler_options())


def jit_eval_step(aug: AugConfig, graphdef, mesh, state_shardings):
  """``make_eval_step`` as the trainer compiles it (the state's shardings, the batch sharded, the
  sums replicated, the backend's compile options)."""
  return jax.jit(make_eval_step(aug, graphdef), in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
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
      log.info('step %d/%d  loss %.4f  %.1f img/s  eta %.0fs', step, self.total, loss, images_per_sec, eta)

  def close(self):
    if self.bar is not None:
      self.bar.close()


# ------------------------------------------------------------------------------------------------
# Stopping: SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) alike
# ------------------------------------------------------------------------------------------------
class StopSignals:
  """SIGTERM and SIGINT set a flag instead of killing the run; the loop checks it after each step
  and stops there, saving the step. Before the loop, ``check`` raises ``Stopped`` (nothing to save).
  One process reads its flag after every step; several processes must agree on the step they save,
  which takes a collective: they compare flags every ``every_steps`` steps only (the same steps on
  all). The previous handlers come back on exit."""
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, every_steps: int = 10):
    self.every_steps = int(every_steps)
    self.received = None
    self.written = ''  # what start-up has written so far, for the stop line (an overwrite's earlier run moved aside)
    self._first = 0.0
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  GIVE_UP_AFTER_S = 30.0

  def _handle(self, signum, frame):
    del frame
    if self.received and time.monotonic() - self._first > self.GIVE_UP_AFTER_S:
      # a second signal long after the first: the run is stuck outside a step (a blocked file, a hung
      # collective) and would never save; stop now rather than hang
      print(f'error: {signal.Signals(signum).name} again {time.monotonic() - self._first:.0f} s after '
            f'{self.received}, and no step boundary was reached to save at: stopping without saving; the last '
            f'complete checkpoint is kept', file=sys.stderr, flush=True)
      os._exit(1)
    if not self.received:
      self.received, self._first = signal.Signals(signum).name, time.monotonic()

  def check(self, phase: str) -> None:
    if self.received and jax.process_count() == 1:
      raise Stopped(f'{self.received} during {phase}: nothing was trained'
                    + (f'; {self.written}' if self.written else ' or written'))  # train.py: 'stopped by ...'

  def requested(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.received is not None
    if step % self.every_steps:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(self.received is not None))))

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)
    return False


PreemptionNotice = StopSignals  # the earlier name


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def _keep_metrics_until(path: str, step: int) -> None:
  """metrics.jsonl without the rows of steps after ``step`` (steps a resumed run will log again)."""
  if not os.path.isfile(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if int(json.loads(line)['step']) <= step:
        kept.append(line if line.endswith('\n') else line + '\n')
    except (ValueError, KeyError, TypeError):
      continue  # a line cut by a kill
  if len(kept) != len(lines):
    with written_whole(path) as tmp, open(tmp, 'w') as f:
      f.writelines(kept)


def read_final(workdir: str) -> dict | None:
  """A finished run's final.json, None when there is none or it is unreadable."""
  try:
    return read_json_object(os.path.join(workdir, 'final.json'))
  except (OSError, ValueError):
    return None


def _check_final_is_this_run_s(workdir: str, finished: dict, run: RunConfig) -> None:
  """ResumeMismatch (exit 2) for a final.json that records another run (copied in from elsewhere):
  its results would be reported as this run's."""
  try:
    diffs = run.identity_differences(RunConfig.from_any(finished.get('config')))
  except ConfigError:
    diffs = ['no readable config']
  if diffs:
    raise checkpoint.ResumeMismatch(f'workdir {workdir}: final.json records another run ({"; ".join(diffs[:3])}): '
                                    f'move it away, or use --config.overwrite=true to start again')


def train_and_evaluate(config, workdir: str):
  """Train the run ``config`` describes (a ``RunConfig``, or anything ``RunConfig.from_any`` reads)
  into ``workdir``; returns the final metrics (including the last eval). Bad settings raise
  ``ConfigError`` and a workdir that cannot continue as asked ``ResumeMismatch`` (exit 2), before
  anything is written or compiled; a second process on the workdir ``WorkdirBusy``; a stop signal
  before the first step ``Stopped``."""
  run = RunConfig.from_any(config)
  preflight.check_path_given('workdir', workdir)  # abspath('') would be the current directory
  workdir = os.path.abspath(os.path.expanduser(workdir))
  with StopSignals(run.preemption_check_every_steps) as stop:
    return _train(run, workdir, stop)


def _finished_as_asked(workdir: str, run: RunConfig) -> dict | None:
  """A finished run's final.json when it records exactly the run asked for (every field of its config)
  and its last step is still there: the same command again does nothing, so nothing around it is
  checked first (its init weights may have moved away, its workdir may be read-only now) and nothing
  is locked or written. Anything else (another run's final.json, its checkpoints gone) goes through
  the resume policy, which says what it found."""
  final = None if run.overwrite else read_final(workdir)
  steps = checkpoint.list_steps(checkpoint.checkpoint_dir(workdir))
  if final is None or not steps or final.get('step') != steps[-1]:  # a newer step: the run went on (pass 12b's F1)
    return None
  try:
    return final if RunConfig.from_any(final.get('config')).whole() == run.whole() else None
  except ConfigError:
    return None


def _nothing_to_do(workdir: str, finished: dict, step: int) -> dict:
  log.info('%s: finished at step %d (final.json); nothing to do (a larger total_steps continues it)', workdir, step)
  return {k: v for k, v in finished.items() if k != 'config'}


def _train(run: RunConfig, workdir: str, stop: StopSignals) -> dict:
  pidx, nproc = jax.process_index(), jax.process_count()
  is_main = pidx == 0
  as_asked = _finished_as_asked(workdir, run)  # read again under the lock below: the resume policy's own
  if as_asked is not None:
    return _nothing_to_do(workdir, as_asked, as_asked['step'])
  preflight.check_run(run, num_devices=jax.device_count(), process_count=nproc, workdir=workdir)
  dataset = input_pipeline.get_dataset(run.dataset)
  # A TFDS dataset prepared just now had no split sizes for the start-up checks: its splits are checked here,
  # still before the workdir is written.
  preflight.check_prepared_splits(dataset, run.dataset)
  split_examples = dataset.num_examples(run.dataset.train_split)
  init_print = preflight.init_fingerprint(run)  # what the run started from (a distillation teacher is rebuilt from it)
  preflight.check_batch_fits(run, split_examples, nproc)
  fingerprint = dataset.fingerprint(run.dataset.train_split)  # the class names and the files or shards
  steps_per_epoch = (run.num_train_examples or split_examples) / run.batch_size
  total_steps = run.steps(steps_per_epoch)
  run.optim.warmup_steps(steps_per_epoch), run.keep_stages(steps_per_epoch)  # in steps too: refused here, if at all
  stop.check('start-up')

  lock = checkpoint.WorkdirLock(workdir).acquire() if is_main else None
  try:
    if run.overwrite and is_main:
      moved = checkpoint.move_run_aside(workdir, time.strftime('%Y%m%d-%H%M%S'))
      if moved:
        log.info('overwrite: the earlier run (%s) was moved aside as *.replaced-<time>', ', '.join(moved))
        stop.written = f'the earlier run was moved aside ({", ".join(moved)} as *.replaced-<time>)'
    if nproc > 1:
      multihost_utils.sync_global_devices('workdir cleared')
    setup = plan_training(run, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    finished = read_final(workdir)  # a finished run's summary, if there is one (now that no one else writes it)
    if finished is not None and not run.overwrite:
      _check_final_is_this_run_s(workdir, finished, run)
    resume = None if run.overwrite else checkpoint.plan_resume(
        workdir, run, checkpoint.with_shardings(setup.abstract_state, setup.shardings), total_steps=total_steps,
        train_examples=split_examples, train_fingerprint=fingerprint, init_fingerprint=init_print,
        process_index=pidx, process_count=nproc,
        final_step=None if finished is None else finished.get('step', -1))
    if resume is not None and resume.finished:
      return _nothing_to_do(workdir, finished, resume.step)
    stop.check('start-up')
    # the init weights build the teacher on a resume too; what they lack (a head) the checkpoint restores, unsaid
    with muted(load_timm_weights.__module__) if resume is not None else contextlib.nullcontext():
      setup.materialise()
    start = 0
    if resume is not None:
      start = resume.step
      setup.state = checkpoint.items_into_state(setup.state, resume.items)
    stop.check('start-up')
    # Only now, with everything checked and built, is the workdir written.
    if is_main:
      lock.record_holder()
      write_json(os.path.join(workdir, 'config.json'), run.to_dict())
      _keep_metrics_until(os.path.join(workdir, 'metrics.jsonl'), start)
    if nproc > 1:  # the others wait until process 0 has set the workdir up
      multihost_utils.sync_global_devices('workdir ready')
    return _loop(run, workdir, setup, dataset, resume, start=start, total_steps=total_steps,
                 steps_per_epoch=steps_per_epoch, split_examples=split_examples, fingerprint=fingerprint,
                 init_print=init_print, stop=stop)
  finally:
    if lock is not None:
      lock.release()


def plan_training(run, *, total_steps: int, steps_per_epoch: float, mesh=None) -> TrainSetup:
  """``setup_training`` without materialising the state (``setup.materialise(params)`` does)."""
  return setup_training(run, total_steps=total_steps, steps_per_epoch=steps_per_epoch, mesh=mesh, params=None,
                        materialise=False)


def _loop(run, workdir, setup, dataset, resume, *, start, total_steps, steps_per_epoch, split_examples, fingerprint,
          init_print, stop):
  pidx, nproc = jax.process_index(), jax.process_count()
  is_main = pidx == 0
  mesh = setup.mesh
  batch_sh = sharding.batch_sharding(mesh)
  stages = run.keep_stages(steps_per_epoch)
  compiled_steps = {}

  def train_step_for(step):
    i = max(j for j, (first, _) in enumerate(stages) if first <= step)
    if i not in compiled_steps:
      compiled_steps[i] = setup.train_step(stages[i][1])
    return compiled_steps[i]
  eval_step = setup.eval_step()

  ckpt = Checkpointer(workdir, keep=run.keep_checkpoints)
  if resume is not None:
    log.info('resuming from step %d (%s)', start, ckpt.directory)
  train_iter = train_batches(run, dataset, local_batch=run.batch_size // nproc, process_index=pidx,
                             process_count=nproc)
  try:
    if resume is not None:
      checkpoint.restore_data(resume.step_dir, start, train_iter)
    writer = MetricWriter(workdir, is_main)
    progress = Progress(run.progress, total_steps, start, is_main)
    rng = jax.random.key(run.seed)
    state = setup.state
    final = dict(step=start)
    t_last, s_last = time.time(), start
    # the weights the run started from, as its first start found them: carried on by every resume (pass 13b's RT2)
    saved_print = resume.meta.get('init_fingerprint') if resume is not None else None
    started_from = saved_print if str(saved_print).startswith(preflight.FINGERPRINT) else init_print
    meta = lambda step: dict(step=step, config=run.to_dict(), version=__version__, train_examples=split_examples,
                             train_fingerprint=fingerprint, init_fingerprint=started_from, process_count=nproc,
                             label_names=[str(n) for n in dataset.label_names])
    for step in range(start + 1, total_steps + 1):
      batch = sharding.global_batch(input_pipeline.next_batch(train_iter), batch_sh)
      ckpt.poll()
      state, metrics = train_step_for(step)(state, batch, jax.random.fold_in(rng, step))
      log_now = step % run.log_every_steps == 0 or step == total_steps
      save_now = step % run.checkpoint_every_steps == 0 or step == total_steps
      stop_now = stop.requested(step)
      if log_now or save_now or stop_now:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(metrics['loss']):  # the last good checkpoint stays as it is
          ckpt.close()
          last = ckpt.latest_step()
          raise FloatingPointError(f'loss is {metrics["loss"]} at step {step}; stopping. ' + (
              f'The last good checkpoint is step {last} in {ckpt.directory}' if last is not None else
              'No checkpoint was saved before it'))
        row = dict(epoch=step / steps_per_epoch, learning_rate=float(setup.schedule(step - 1)), **metrics)
        if log_now:
          now = time.time()
          row['images_per_sec'] = (step - s_last) * run.batch_size / max(now - t_last, 1e-9)
          t_last, s_last = now, step
          progress.update(step, row['loss'], row['images_per_sec'])
          if run.eval_every_steps and (step % run.eval_every_steps == 0 or step == total_steps):
            row.update(evaluate(run, dataset, state, eval_step, batch_sh))
          writer.write(step, row)
        final = dict(step=step, **row)
        if save_now or stop_now:
          ckpt.save(step, checkpoint.state_items(state), meta(step), data=train_iter,
                    metrics={'eval_top1': row['eval_top1']} if 'eval_top1' in row else None)
        if stop_now:
          ckpt.wait()
          log.info('preempted: saved step %d to %s (%s); run the same command to resume', step, ckpt.directory,
                   stop.received)
          final['preempted'] = True
          break
    if start == total_steps:  # resumed at the last step without final.json: its evaluation is all that is left
      final = dict(step=start, **(evaluate(run, dataset, state, eval_step, batch_sh) if run.eval_every_steps else {}))
    ckpt.close()
    progress.close()
  finally:
    input_pipeline.close(train_iter)
  if is_main and not final.get('preempted') and final['step'] == total_steps:
    # A finished run's summary: sweeps and the resume policy know finished runs by it.
    write_json(os.path.join(workdir, 'final.json'), dict(final, total_steps=total_steps, config=run.to_dict()))
  return final


def train_batches(run, dataset, *, local_batch: int, process_index: int = 0, process_count: int = 1,
                  channels: int | None = None):
  """The run's train stream (``input_pipeline.train_iterator`` with the run's data, augmentation,
  image size, channels, classes and seed): batches of this process, endless, checkpointable."""
  run = RunConfig.from_any(run)
  return input_pipeline.train_iterator(run.dataset, run.aug, dataset, img_size=run.vit.img_size,
                                       channels=channels or run.vit.in_chans, num_classes=run.model.num_classes,
                                       seed=run.seed, local_batch=local_batch, process_index=process_index,
                                       process_count=process_count)


def eval_batches(run, dataset, split: str, *, local_batch: int, process_index: int = 0, process_count: int = 1,
                 channels: int | None = None):
  """The run's eval batches of ``split`` (``input_pipeline.eval_batches``), padded and masked."""
  run = RunConfig.from_any(run)
  return input_pipeline.eval_batches(run.dataset, run.aug, dataset, split, img_size=run.vit.img_size,
                                     channels=channels or run.vit.in_chans, num_classes=run.model.num_classes,
                                     local_batch=local_batch, process_index=process_index, process_count=process_count)


def evaluate(run: RunConfig, dataset, state, eval_step, batch_sh, split: str | None = None,
             eval_batch: int | None = None) -> dict:
  """top-1, top-5, loss and the example count over a split (default ``run.dataset.eval_split``),
  every example exactly once (the last batch padded and masked)."""
  eval_batch = eval_batch or run.eval_batch
  totals = None  # summed on the device: one transfer at the end, no wait for each batch
  for batch in eval_batches(run, dataset, split or run.dataset.eval_split, local_batch=eval_batch // jax.process_count(),
                            process_index=jax.process_index(), process_count=jax.process_count()):
    out = eval_step(state, sharding.global_batch(batch, batch_sh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  n = max(float(totals['count']), 1.0)
  return dict(eval_top1=float(totals['correct1']) / n, eval_top5=float(totals['correct5']) / n,
              eval_loss=float(totals['loss_sum']) / n, eval_examples=float(totals['count']))

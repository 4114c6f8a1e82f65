"""Evaluating a trained model: what eval.py and the sweep over one checkpoint (``--reductions``) share.

  model, run, source = load_trained(path)          # an export or a training workdir, read-only
  dataset = eval_dataset(run, split)               # checked before anything compiles
  metrics = evaluate_model(model, run, dataset, split)
"""
from __future__ import annotations

import os

import jax
from flax import nnx

from tpm_jax import checkpoint, export, preflight, sharding, trainer
from tpm_jax.config import ConfigError, RunConfig
from tpm_jax.data import input_pipeline
from tpm_jax.files import read_json_object
from tpm_jax.flops import token_schedule
from tpm_jax.models.registry import model_from_config


def load_trained(path: str, flag: str = '--checkpoint'):
  """(model, run, source) from an export or a training workdir (its newest verified step; the EMA
  parameters when the run kept them), read-only. ConfigError for a path that is neither,
  CheckpointError for one that fails its checks."""
  if not os.path.exists(path):
    raise ConfigError(f'{flag}={path} is not accepted: no such directory')
  if not os.path.isdir(path):  # a file, a device, a FIFO: bad input, never opened
    raise ConfigError(f'{flag}={path} is not accepted: not a directory (a training workdir or an export)')
  if checkpoint.is_export(path) or not os.path.isdir(checkpoint.checkpoint_dir(path)):
    path = checkpoint.check_export(path)
    saved = export.read_config(path)
    return checkpoint.load_params_into(model_from_config(saved), path), saved, 'export'
  model, saved, step = export.restore_from_workdir(path)
  return model, saved, f'workdir step {step}'


def trained_label_names(path: str) -> list | None:
  """The class names a trained model's labels meant (``label_names`` of the newest step's meta, or of
  an export's export.json); None where they were not recorded (runs of earlier versions)."""
  if not checkpoint.is_export(path) and os.path.isdir(checkpoint.checkpoint_dir(path)):
    steps = checkpoint.list_steps(checkpoint.checkpoint_dir(path))
    return checkpoint.saved_label_names(os.path.join(checkpoint.checkpoint_dir(path), str(steps[-1]))) if steps else None
  try:
    names = read_json_object(os.path.join(path, checkpoint.EXPORT_INFO)).get('label_names')
  except (OSError, ValueError):
    return None
  return list(names) if isinstance(names, list) else None


def eval_dataset(run: RunConfig, split: str, split_flag: str | None = None, label_names: list | None = None):
  """The run's dataset, its ``split`` checked as prepared and non-empty (ConfigError naming
  ``split_flag`` when the split came from a flag), and its classes those the model was trained on
  (``label_names``, when known): label i must mean the same class, or every result is mislabelled."""
  dataset = input_pipeline.get_dataset(run.dataset)
  try:
    preflight.check_prepared_splits(dataset, run.dataset.replace_split(split), fields=('eval_split',))
  except ConfigError as e:
    raise ConfigError(str(e).replace('dataset.eval_split=', f'{split_flag}=') if split_flag else str(e)) from None
  now = [str(n) for n in dataset.label_names]
  if label_names is not None and now and now != [str(n) for n in label_names]:
    differ = [f'{i}: {a!r} then, {b!r} now' for i, (a, b) in enumerate(zip(label_names, now)) if a != b]
    differ += [f'{len(label_names)} classes then, {len(now)} now'] if len(now) != len(label_names) else []
    raise ConfigError(f'{dataset.where}: its classes are not those the model was trained on (label '
                      f'{"; ".join(differ[:3])}): the labels would mean other classes')
  return dataset


def evaluate_model(model, run: RunConfig, dataset, split: str, mesh=None) -> dict:
  """top-1, top-5, loss and the example count of ``model`` over ``split``, with ``run``'s
  preprocessing and eval batch, every example once, data parallel over this host's devices (the
  parameters replicated; ``mesh`` default ``sharding.make_mesh()``), with the trainer's eval step."""
  mesh = mesh or sharding.make_mesh(None)
  devices = jax.device_count()
  eval_batch = -(-run.eval_batch // devices) * devices  # padding is masked: the metrics do not change
  graphdef, state = nnx.split(trainer.TrainState(model, None))
  state_sh = sharding.state_shardings(state, mesh, fsdp_min_size=run.fsdp_min_size)
  state = sharding.to_global(state, state_sh)
  eval_step = trainer.jit_eval_step(run.aug, graphdef, mesh, state_sh)
  return trainer.evaluate(run, dataset, state, eval_step, sharding.batch_sharding(mesh), split=split,
                          eval_batch=eval_batch)


def describe_reduction(model, run: RunConfig) -> dict:
  """The reduction a model runs, as eval.py's output and the sweep's tables name it."""
  red = run.reduction
  tokens = token_schedule(model)
  merged = [a - b for a, b in zip(tokens.stages, tokens.stages[1:])]  # r as applied: ToMe caps it at half
  return dict(method=red.method, keep_rate=str(red.keep_rate) if red.method not in ('tome', 'none') else '-',
              r=','.join(map(str, merged)) if red.method == 'tome' else '-',
              locations=','.join(map(str, red.locations or ())) if red.enabled else '-',
              multiscale=run.multiscale.method, prop_attn=red.use_prop_attn if red.enabled else '-',
              tokens=str(tokens))


def parameter_notes(fresh, left_out) -> dict:
  """What ``models.registry.with_weights_of`` reported, as output fields (none when nothing to say)."""
  notes = {}
  if fresh:
    notes['fresh_parameters'] = (f'{", ".join(sorted({p.split(".")[0] for p in fresh}))}: not in the checkpoint, '
                                 f'initialised as in a new model ({len(fresh)} arrays; a multi-scale fusion starts '
                                 f'with zero output, leaving the function unchanged)')
  if left_out:
    notes['unused_parameters'] = (f'{", ".join(sorted({p.split(".")[0] for p in left_out}))}: in the checkpoint, '
                                  f'not used under this reduction ({len(left_out)} arrays)')
  return notes

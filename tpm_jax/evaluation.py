"""Evaluating a trained model: what eval.py and the sweep over one checkpoint (``--reductions``) share.

  model, run, source = load_trained(path)          # an export or a training workdir, read-only
  dataset = eval_dataset(run, split)               # checked before anything compiles
  metrics = evaluate_model(model, run, dataset, split)

``prepare`` is eval.py's whole check of its inputs: every refusal, before anything compiles or is written.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
from flax import nnx

from tpm_jax import checkpoint, export, preflight, sharding, trainer
from tpm_jax.checkpoint.exports import moved_aside_note
from tpm_jax.config import ConfigError, RunConfig
from tpm_jax.data import input_pipeline
from tpm_jax.files import read_json_object
from tpm_jax.flops import token_schedule
from tpm_jax.models.registry import model_from_config, with_weights_of
from tpm_jax.timm_weights import load_timm_weights, not_in_timm_layout


def load_trained(path: str, flag: str = '--checkpoint'):
  """(model, run, source) from an export or a training workdir (its newest verified step; the EMA
  parameters when the run kept them), read-only. ConfigError for a path that is neither,
  CheckpointError for one that fails its checks."""
  if not os.path.exists(path):
    raise ConfigError(f'{flag}={path} is not accepted: no such directory{moved_aside_note(path)}')
  if not os.path.isdir(path):  # a file, a device, a FIFO: bad input, never opened
    raise ConfigError(f'{flag}={path} is not accepted: not a directory (a training workdir or an export)')
  if not os.path.isdir(checkpoint.checkpoint_dir(path)) and not any(
      os.path.lexists(os.path.join(path, name)) for name in (checkpoint.EXPORT_INFO, 'params', checkpoint.CHECKSUMS)):
    raise ConfigError(f'{flag}={path} is not accepted: neither a training workdir (it has no checkpoints/) nor an '
                      f'export (no params/, {checkpoint.EXPORT_INFO} or {checkpoint.CHECKSUMS})')
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
    for s in reversed(steps):  # the newest step that can be read (a live run's keep policy removes old ones)
      names = checkpoint.saved_label_names(os.path.join(checkpoint.checkpoint_dir(path), str(s)))
      if names is not None:
        return names
    return None
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


# -- eval.py's inputs, checked ----------------------------------------------------------------------------

RESULT_KEYS = ('source', 'checkpoint', 'split', 'top1', 'top5', 'examples')  # what every eval.py result holds


def check_output(output: str) -> str:
  """eval.py's ``--output``, checked (``preflight.check_output_file``; a file it wrote may be replaced): at the start,
  and again just before it is written (an export or a run may have come to hold its folder since: hostile pass 18's
  C05). The absolute path."""
  return preflight.check_output_file('--output', output, ours=an_eval_result)


def an_eval_result(path: str) -> bool:
  """Whether ``path`` holds an earlier result of eval.py (which its --output may replace)."""
  try:
    return set(RESULT_KEYS) <= set(read_json_object(path))
  except (OSError, ValueError):
    return False


class Prepared(NamedTuple):
  """What eval.py evaluates, every input checked."""
  model: Any
  config: RunConfig
  dataset: Any
  split: str
  mesh: Any
  source: str          # 'export', 'workdir step N' or 'timm'
  fresh: list          # parameters the weights lacked (they start as in a new model)
  left_out: list       # parameters of the weights the evaluated model has no place for
  output: str | None   # the checked --output path


def _check_same_model(saved: RunConfig, given: RunConfig) -> None:
  """--config may not describe another model than the checkpoint holds (the result would be mislabelled)."""
  diff = [d.replace('(the other:', "(the checkpoint's:") for d in given.model_differences(saved)]
  if diff:
    raise ConfigError(f'--config describes another model than the checkpoint: {", ".join(diff)}; a checkpoint is '
                      f'evaluated as trained (or under --reduction), --config supplies only its dataset and '
                      f'preprocessing settings')


def _with(setting, config: RunConfig) -> RunConfig:
  try:
    return setting.apply(config)
  except ConfigError as e:
    raise ConfigError(f'--reduction: {e}') from None


def prepare(*, checkpoint_path: str | None = None, timm_checkpoint: str | None = None, given: RunConfig | None = None,
            setting=None, split: str | None = None, output: str | None = None) -> Prepared:
  """eval.py's flags (``--checkpoint``, ``--timm_checkpoint``, ``--config`` as ``given``, ``--reduction``
  as a parsed ``setting``, ``--split``, ``--output``) -> the model, its config and its checked dataset.
  ConfigError (or FileNotFoundError) naming the flag for bad input, CheckpointError for a checkpoint
  that fails its checks: before anything compiles, nothing written."""
  if checkpoint_path and timm_checkpoint:
    raise ConfigError('--checkpoint and --timm_checkpoint are both given: expected one source of weights')
  if output is not None:
    output = check_output(output)
  fresh = left_out = []
  if checkpoint_path:
    model, saved, source = load_trained(checkpoint_path)
    if given is not None:  # --config brings the data and preprocessing; the model is the checkpoint's
      _check_same_model(*((_with(setting, saved), _with(setting, given)) if setting else (saved, given)))
    config = given or saved
    if setting is not None:  # the trained weights in the model of the other reduction
      config = _with(setting, config)
      model, fresh, left_out = with_weights_of(model, config)
  elif timm_checkpoint and given is not None:
    path = preflight.check_regular_file('--timm_checkpoint', timm_checkpoint,
                                        'timm weights as a .safetensors, .pth or .pt file, or big_vision weights as .npz')
    config = _with(setting, given) if setting else given
    model = model_from_config(config)
    try:
      load_timm_weights(model, path)
    except (ValueError, OSError, RuntimeError, KeyError, ImportError) as e:
      raise ConfigError(f'--timm_checkpoint={timm_checkpoint!r} is not accepted: '
                        f'{str(e).splitlines()[0] if str(e) else type(e).__name__} (accepted: timm weights of '
                        f'model {config.model.name} as .safetensors, or a .pth state dict, or big_vision .npz)') from e
    source = 'timm'
    fresh = not_in_timm_layout(model)  # a timm file does not hold them: they start as in a new model
  else:
    raise ConfigError('--checkpoint (a workdir or an export), or --timm_checkpoint with --config, is required')
  split_name = split or config.dataset.eval_split
  # This host's devices, not the training run's: data parallel with the parameters replicated (the
  # saved mesh may not fit here), or --config's mesh when given
  mesh = sharding.make_mesh(given.mesh if given is not None else None)
  labels = trained_label_names(checkpoint_path) if checkpoint_path else None
  dataset = eval_dataset(config, split_name, '--split' if split else None, label_names=labels)
  return Prepared(model, config, dataset, split_name, mesh, source, list(fresh), list(left_out), output)

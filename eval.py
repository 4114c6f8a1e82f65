"""Evaluate a model: top-1/top-5 on a TFDS split, compute (analytic GMACs, XLA GFLOPs) and measured
throughput, printed as a table and written as JSON.

  python eval.py --checkpoint WORKDIR_OR_EXPORT [--config configs/deit.py:...] [--split validation] \
      [--batch_size 64] [--output results.json]
  python eval.py --config configs/deit.py:model=deit_small_patch16_224,method=tpm \
      --timm_checkpoint deit_small_patch16_224.safetensors --config.dataset.manual_dir=...

The checkpoint's own config is used unless --config is given (then its dataset and preprocessing
settings apply). Throughput: images/s at --batch_size after warm-up, median of --timed_runs runs.
"""
import json
import os
import sys

import jax
from absl import flags
from flax import nnx
from ml_collections import ConfigDict, config_flags

import tpm_jax
from tpm_jax import export, sharding, trainer
from tpm_jax.checkpoint import CheckpointError
from tpm_jax.cli import quiet_library_logs, run
from tpm_jax.config import ConfigError, flat_dict
from tpm_jax.data import input_pipeline
from tpm_jax.data.checks import check_splits
from tpm_jax.throughput import images_per_sec

config_flags.DEFINE_config_file('config', None, 'A configs/*.py file, optionally with :<arg string>.', lock_config=True)
flags.DEFINE_string('checkpoint', None, 'A training workdir (latest checkpoint) or an export directory.')
flags.DEFINE_string('timm_checkpoint', None, 'Evaluate timm weights (.safetensors/.pth) with --config\'s model.')
flags.DEFINE_string('split', None, 'TFDS split (default: the config\'s dataset.eval_split).')
flags.DEFINE_integer('batch_size', 64, 'Batch size for the throughput measurement.')
flags.DEFINE_integer('timed_runs', 5, 'Timed runs for the throughput median.')
flags.DEFINE_string('output', None, 'Write the results as JSON here.')


MODEL_FIELDS = ('model.', 'reduction.', 'multiscale.')


def _check_same_model(saved, config):
  """--config may not describe another model than the checkpoint holds (eval would label it wrongly)."""
  # as JSON values: the saved config came back from JSON, so its tuples are lists
  as_json = lambda c: {k: json.loads(json.dumps(v)) for k, v in flat_dict(c.to_dict()).items()}
  old, new = as_json(saved), as_json(config)
  diff = [f'{k}={new[k]!r} (the checkpoint\'s: {old[k]!r})' for k in sorted(set(old) & set(new))
          if k.startswith(MODEL_FIELDS) and old[k] != new[k] and k not in ('model.dtype', 'model.drop_path_rate')]
  if diff:
    raise ConfigError(f'--config describes another model than the checkpoint: {", ".join(diff)}; a checkpoint is '
                      f'evaluated as trained, --config supplies only its dataset and preprocessing settings')


def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ log level (when it prepares a dataset)
  quiet_library_logs()
  F = flags.FLAGS
  try:
    if F.checkpoint:
      if os.path.isdir(os.path.join(F.checkpoint, 'params')):
        model, source = export.load_model(F.checkpoint), 'export'
        saved = export.read_config(os.path.join(F.checkpoint, export.EXPORT_CONFIG))
      else:
        model, saved, step = export.restore_from_workdir(F.checkpoint)
        source = f'workdir step {step}'
      config = F.config or saved
      if F.config:  # --config brings the data and preprocessing; the model is the checkpoint's
        _check_same_model(saved, F.config)
    elif F.timm_checkpoint and F.config:
      config = F.config
      model = tpm_jax.models.model_from_config(config)
      try:
        tpm_jax.load_timm_weights(model, F.timm_checkpoint)
      except (ValueError, OSError, RuntimeError, KeyError) as e:
        raise ConfigError(f'--timm_checkpoint={F.timm_checkpoint!r} is not accepted: '
                          f'{str(e).splitlines()[0] if str(e) else type(e).__name__} (accepted: timm weights of '
                          f'model {config.model.name} as .safetensors, or a .pth state dict)') from e
      source = 'timm'
    else:
      raise ConfigError('--checkpoint (a workdir or an export), or --timm_checkpoint with --config, is required')
  except (ConfigError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)

  split = F.split or config.dataset.eval_split
  try:
    # This host's devices, not the training run's: data parallel with the parameters replicated (the
    # saved mesh may not fit here), or --config's mesh when given; the eval batch rounded up to a
    # multiple of the devices (the padding is masked out, so the metrics do not change).
    mesh = sharding.make_mesh(F.config.mesh if F.config else ConfigDict(dict(data=-1, fsdp=1)))
    devices = jax.device_count()
    with config.unlocked():
      config.eval_batch_size = -(-(config.eval_batch_size or config.batch_size) // devices) * devices
    dataset = input_pipeline.get_dataset(config.dataset)
    where = config.dataset.get('image_folder') or config.dataset.name
    check_splits(dataset, {'eval_split': split}, where, fields=('eval_split',))
  except ConfigError as e:
    print(f'error: {str(e).replace("dataset.eval_split=", "--split=") if F.split else e}', file=sys.stderr)
    sys.exit(2)
  graphdef, state = nnx.split((model, None, None, None))
  # the state on the mesh the batches are sharded over (restored or loaded onto one device), and the
  # eval step as the trainer compiles it: on a machine with several devices they must match
  state_sh = sharding.state_shardings(state, mesh, fsdp_min_size=config.get('fsdp_min_size', 2 ** 14))
  state = sharding.to_global(state, state_sh)
  eval_step = trainer.jit_eval_step(config, graphdef, mesh, state_sh)
  try:
    metrics = trainer.evaluate(config, dataset, state, eval_step, sharding.batch_sharding(mesh),
                               model.cfg.in_chans, split=split)
  except input_pipeline.DataError as e:  # an image that cannot be decoded: one line naming its file
    print(f'error: {e}', file=sys.stderr, flush=True)
    os._exit(1)
  flops = tpm_jax.count_flops(model)
  result = dict(source=source, checkpoint=F.checkpoint or F.timm_checkpoint, split=split,
                model=config.model.name, method=config.reduction.method, keep_rate=str(config.reduction.keep_rate),
                top1=metrics['eval_top1'], top5=metrics['eval_top5'], examples=int(metrics['eval_examples']),
                analytic_gmacs=flops['analytic_gmacs'], xla_gflops=flops['xla_gflops'],
                images_per_sec=images_per_sec({'model': model}, F.batch_size, rounds=F.timed_runs)['model'],
                throughput_batch=F.batch_size)
  width = max(len(k) for k in result)
  for k, v in result.items():
    print(f'{k:<{width}}  {v:.4f}' if isinstance(v, float) else f'{k:<{width}}  {v}')
  if F.output:
    with open(F.output, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  run(main)

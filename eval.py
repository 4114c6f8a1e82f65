"""Evaluate a model: top-1/top-5 on a TFDS split, compute (analytic GMACs, XLA GFLOPs) and measured
throughput, printed as a table and written as JSON.

  python eval.py --checkpoint WORKDIR_OR_EXPORT [--config configs/deit.py:...] [--split validation] \
      [--reduction tpm:0.7] [--batch_size 64] [--output results.json]
  python eval.py --config configs/deit.py:model=deit_small_patch16_224,method=tpm \
      --timm_checkpoint deit_small_patch16_224.safetensors --config.dataset.manual_dir=...

The checkpoint's own config is used unless --config is given (then its dataset and preprocessing
settings apply). --reduction evaluates the trained model under another token reduction, without
training ("off-the-shelf"): ``none``, ``tpm:0.7``, ``tpm+pool:0.7@prop_attn=off``, ``evit:0.5``,
``drop:0.7``, ``tome:8`` (r) or ``tome:0.7`` (ToMe matched to keep 0.7's token counts); the syntax is
tpm_jax.reduction_setting's. Parameters the checkpoint lacks (a multi-scale fusion the backbone never
had) start as in a new model, whose zero-initialised output leaves the function unchanged; the output
names them. Throughput: images/s at --batch_size after warm-up, median of --timed_runs runs.
"""
import os

from tpm_jax.cli import stop_during_start_up

if __name__ == '__main__':  # not in the input pipeline's worker processes, which import this file again
  stop_during_start_up('error: stopped by {signal}; nothing was written', 1)  # while importing


import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import tpm_jax  # noqa: E402
from tpm_jax import evaluation  # noqa: E402
from tpm_jax.checkpoint import CheckpointError  # noqa: E402
from tpm_jax.checkpoint.errors import first_line  # noqa: E402
from tpm_jax.cli import Interrupted, fail, finished, quiet_library_logs, raise_if_stopped, run, stop_on_signals  # noqa: E402
from tpm_jax.config import ConfigError, RunConfig  # noqa: E402
from tpm_jax.data import input_pipeline  # noqa: E402
from tpm_jax.files import write_json  # noqa: E402
from tpm_jax.reduction_setting import parse_setting  # noqa: E402
from tpm_jax.throughput import images_per_sec  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'A configs/*.py file, optionally with :<arg string>.', lock_config=True)
flags.DEFINE_string('checkpoint', None, 'A training workdir (latest checkpoint) or an export directory.')
flags.DEFINE_string('timm_checkpoint', None, 'Evaluate timm weights (.safetensors/.pth) with --config\'s model.')
flags.DEFINE_string('split', None, 'TFDS split (default: the config\'s dataset.eval_split).')
flags.DEFINE_integer('batch_size', 64, 'Batch size for the throughput measurement.')
flags.DEFINE_integer('timed_runs', 5, 'Timed runs for the throughput median.')
flags.DEFINE_string('output', None, 'Write the results as JSON here.')
flags.DEFINE_string('reduction', None, 'Evaluate under this token reduction instead of the trained one, without '
                    'training: none, tpm:0.7, tpm+pool:0.7@prop_attn=off, evit:0.5, drop:0.7, tome:8, tome:0.7.')

def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ log level (when it prepares a dataset)
  quiet_library_logs()
  stop_on_signals()
  try:
    _evaluate(flags.FLAGS)
  except Interrupted as e:
    fail(str(e), 1, hard=True)


def _evaluate(F):
  try:
    for flag in ('batch_size', 'timed_runs'):
      if F[flag].value < 1:
        raise ConfigError(f'--{flag}={F[flag].value} is not accepted: expected a positive int')
    setting = None
    if F.reduction is not None:
      try:
        setting = parse_setting(F.reduction)
      except ConfigError as e:
        raise ConfigError(f'--reduction: {e}') from None
    job = evaluation.prepare(checkpoint_path=F.checkpoint, timm_checkpoint=F.timm_checkpoint,
                             given=RunConfig.from_any(F.config) if F.config else None, setting=setting,
                             split=F.split, output=F.output)
  except (ConfigError, FileNotFoundError) as e:
    fail(str(e), 2, hard=True)
  except CheckpointError as e:
    raise_if_stopped()
    fail(str(e), 1, hard=True)
  model, config, split = job.model, job.config, job.split
  try:
    metrics = evaluation.evaluate_model(model, config, job.dataset, split, job.mesh)
  except input_pipeline.DataError as e:  # an example that cannot be used: one line naming its file
    raise_if_stopped()
    fail(str(e), 1, hard=True)
  flops = tpm_jax.count_flops(model, compile=False)  # the lowered program's count, as the sweep's
  try:
    speed = images_per_sec({'model': model}, F.batch_size, rounds=F.timed_runs)['model']
  except (MemoryError, ValueError, jax.errors.JaxRuntimeError) as e:  # a --batch_size too large for this host
    fail(f'--batch_size={F.batch_size}: the throughput measurement failed ({first_line(e)}); top-1 was '
         f'{metrics["eval_top1"]:.4f}, nothing written: a smaller --batch_size measures it', 1, hard=True)
  result = dict(source=job.source, checkpoint=F.checkpoint or F.timm_checkpoint, split=split,
                model=config.model.name, reduction=setting.name if setting else 'as trained',
                **evaluation.describe_reduction(model, config),
                top1=metrics['eval_top1'], top5=metrics['eval_top5'], examples=int(metrics['eval_examples']),
                analytic_gmacs=flops['analytic_gmacs'], xla_gflops=flops['xla_gflops'],
                images_per_sec=speed, throughput_batch=F.batch_size)
  result.update(evaluation.parameter_notes(job.fresh, job.left_out))
  width = max(len(k) for k in result)
  for k, v in result.items():
    print(f'{k:<{width}}  {v:.4f}' if isinstance(v, float) else f'{k:<{width}}  {v}')
  finished()  # the result is out: a signal from now on changes nothing (the JSON below is written whole or not at all)
  if job.output:
    try:
      evaluation.check_output(job.output)  # again: an export or a run may hold its folder by now (pass 18's C05)
    except ConfigError as e:
      fail(f'{e}; the results above were not saved', 1, hard=True)
    try:
      write_json(job.output, result)
    except OSError as e:  # the disk full, the folder gone or read-only since the check
      fail(f'--output={job.output}: cannot be written ({e.strerror or e}); the results above were not saved', 1,
           hard=True)


if __name__ == '__main__':
  run(main)

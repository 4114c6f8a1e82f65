"""Train a ViT/DeiT with token reduction.

  python train.py --config configs/deit.py:model=deit_small_patch16_224,method=tpm,keep=0.7 \
      --workdir /tmp/run [--config.batch_size=256 ...]

Writes WORKDIR/config.json, WORKDIR/metrics.jsonl and TensorBoard events.
"""
import json
import os
import sys

import jax
from absl import flags
from ml_collections import config_flags

from tpm_jax import distributed, trainer
from tpm_jax.checkpoint import CheckpointError
from tpm_jax.cli import quiet_library_logs, run
from tpm_jax.config import ConfigError
from tpm_jax.data.input_pipeline import DataError

config_flags.DEFINE_config_file('config', None, 'A configs/*.py file, optionally with :<arg string>.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where config.json, metrics.jsonl and checkpoints go.')
flags.DEFINE_bool('distributed', False, 'Multi-host: bare jax.distributed.initialize() (TPU pods, SLURM).')
flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0 (or JAX_COORDINATOR_ADDRESS).')
flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes (or JAX_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', None, 'Multi-process: this process (or JAX_PROCESS_ID).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's C++ log level (when it prepares a dataset)
  F = flags.FLAGS
  quiet_library_logs()
  default_hook = sys.unraisablehook

  def quiet_closed_loop(u):  # TensorStore's callbacks into Orbax's event loop after a failed save has closed it
    if not (isinstance(u.exc_value, RuntimeError) and 'Event loop is closed' in str(u.exc_value)):
      default_hook(u)
  sys.unraisablehook = quiet_closed_loop
  distributed.initialize(F.coordinator_address, F.num_processes, F.process_id, auto=F.distributed)
  try:
    final = trainer.train_and_evaluate(F.config, F.workdir)
  except ConfigError as e:  # bad input: one line, nothing written, exit code 2
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  except (FloatingPointError, CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  except DataError as e:  # an image that cannot be decoded at run time: one line naming its file; no waiting
    # on the pipeline's or the checkpointer's threads
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
  except OSError as e:  # the file system at run time (read-only, disk full): one line, and no waiting on
    # the checkpointer's background threads, which would hang the interpreter's shutdown
    where = getattr(e, 'filename', None) or F.workdir
    print(f'error: {where}: {e.strerror or e}; the last complete checkpoint is kept', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
  print(json.dumps({'process_index': jax.process_index(), 'final': final}), flush=True)


if __name__ == '__main__':
  run(main)

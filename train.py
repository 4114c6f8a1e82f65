"""Train a ViT/DeiT with token reduction.

  python train.py --config configs/deit.py:model=deit_small_patch16_224,method=tpm,keep=0.7 \
      --workdir /tmp/run [--config.batch_size=256 ...]

Writes WORKDIR/config.json, WORKDIR/metrics.jsonl, checkpoints and TensorBoard events. Exit codes:
0 finished, preempted and saved, or stopped before training (a message says which); 1 a run-time
fault (one line); 2 bad input or a workdir that cannot continue as asked (one line, nothing written).
"""
import os
import sys

from tpm_jax.cli import stop_during_start_up

if __name__ == '__main__':  # not in the input pipeline's worker processes, which import this file again
  # until the trainer takes the signals over
  stop_during_start_up('stopped by {signal} during start-up: nothing was trained or written', 0)

import json  # noqa: E402

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tpm_jax import distributed, trainer  # noqa: E402
from tpm_jax.checkpoint import CheckpointError, checkpoint_dir, list_steps  # noqa: E402
from tpm_jax.cli import fail, quiet_closed_event_loop, quiet_library_logs, run  # noqa: E402
from tpm_jax.config import ConfigError, RunConfig  # noqa: E402
from tpm_jax.data.input_pipeline import DataError  # noqa: E402

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
  quiet_closed_event_loop()
  try:
    config = RunConfig.from_any(F.config)  # the one reading of the ConfigDict
    distributed.initialize(F.coordinator_address, F.num_processes, F.process_id, auto=F.distributed)
  except ConfigError as e:
    fail(str(e), 2)
  except distributed.JoinTimeout as e:  # nothing was written; JAX's waiting thread cannot be stopped: at once
    fail(str(e), 1, hard=True)
  try:
    final = trainer.train_and_evaluate(config, F.workdir)
  except trainer.Stopped as e:  # the same line as the start-up's, a moment later
    print(f'stopped by {e}', file=sys.stderr, flush=True)
    sys.exit(0)
  except ConfigError as e:  # bad input, another run in the workdir, a busy workdir: one line, nothing written
    fail(str(e), 2)
  except (FloatingPointError, CheckpointError) as e:
    fail(str(e), 1, hard=True)
  except DataError as e:  # an example that cannot be used at run time: one line naming its file
    fail(str(e), 1, hard=True)
  except OSError as e:  # the file system at run time (read-only, disk full)
    where = getattr(e, 'filename', None) or F.workdir
    steps = list_steps(checkpoint_dir(F.workdir))
    kept = f'; the last complete checkpoint, step {steps[-1]}, is kept' if steps else ''
    fail(f'{where}: {e.strerror or e}{kept}', 1, hard=True)
  except jax.errors.JaxRuntimeError as e:  # a collective failed: in a multi-process run, a peer was lost
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    peer = ' (another process of the run stopped or was lost)' if jax.process_count() > 1 else ''
    fail(f'the runtime failed{peer}: {text}', 1, hard=True)
  print(json.dumps({'process_index': jax.process_index(), 'final': final}), flush=True)


if __name__ == '__main__':
  run(main)

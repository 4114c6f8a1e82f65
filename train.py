"""Train a ViT/DeiT with token reduction.

  python train.py --config configs/deit.py:model=deit_small_patch16_224,method=tpm,keep=0.7 \
      --workdir /tmp/run [--config.batch_size=256 ...]

Writes WORKDIR/config.json, WORKDIR/metrics.jsonl and TensorBoard events.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'A configs/*.py file, optionally with :<arg string>.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where config.json, metrics.jsonl and checkpoints go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  from tpm_jax import trainer
  trainer.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)

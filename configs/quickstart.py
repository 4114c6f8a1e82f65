"""The quickstart's two runs: configs/fmnist.py shortened to fit the quickstart on 2 CPU cores.

The model: width 96, depth 4, 3 heads, patch 4 on the 28x28 images, so a 7x7 token grid (50 tokens
with CLS; 50 -> 36 -> 26 -> 19 at keep 0.7): small enough to see 1.5 epochs in about 2.5 minutes.
Random resized crop keeps at least 90% of the area (short runs learn faster with light cropping).

  stage=pretrain   the unpruned backbone from scratch, 1,400 steps of 64 images (about 2.5 minutes
                   here), lr 3e-3 with 50 warmup steps, the position embedding started from a 2-D
                   sin-cos table (``model.pos_embed_init='sincos2d'``)
  stage=finetune   (default) ``method`` at ``keep`` fine-tuned from it, 150 steps of 64 images; set
                   ``--config.init.checkpoint=<export of the pretrain run>``

Both evaluate on all 10,000 test images. Arg string (all optional): stage=pretrain|finetune,
method=<tpm|evit|drop|tome|none>, keep=<float>, multiscale=none|pool|cross (default pool with a
reduction, none without), prop_attn=on|off,
seed=<int>, pretrain_steps=<int>, finetune_steps=<int>, smoke (a run of seconds, for tests).
The fine-tuning run is the library's recommended tpm: multi-scale ``pool`` fusion and proportional
attention (``prop_attn`` on for tpm and tome, off otherwise), the settings docs/RESULTS.md found best.
``python -m tpm_jax.quickstart`` runs both and writes the report; the equivalent commands are

  python train.py --config configs/quickstart.py:stage=pretrain --workdir workdirs/quickstart/pretrain
  python -m tpm_jax.export --workdir workdirs/quickstart/pretrain --output workdirs/quickstart/backbone
  python train.py --config configs/quickstart.py:method=tpm,keep=0.7 \\
      --config.init.checkpoint=workdirs/quickstart/backbone --workdir workdirs/quickstart/tpm
"""
from configs import fmnist
from configs.common import ARG_FIELDS as _COMMON_FIELDS
from configs.common import parse_arg
from tpm_jax.config import PROP_ATTN_METHODS

ARGS = dict(stage='finetune', method='tpm', keep=0.7, multiscale='', prop_attn='', seed=0, pretrain_steps=1400,
            finetune_steps=150, smoke=False)
ARG_FIELDS = dict({k: f for k, f in _COMMON_FIELDS.items() if k in ARGS}, pretrain_steps='total_steps',
                  finetune_steps='total_steps')  # the sweep reads it (configs/common.py)


def get_config(arg=None):
  a = parse_arg(arg, **ARGS)
  pretrain = a.stage == 'pretrain'
  method = 'none' if pretrain else a.method
  multiscale = a.multiscale or ('none' if method == 'none' else 'pool')  # as configs/common.apply_arg's default
  prop_attn = a.prop_attn or ('on' if method in PROP_ATTN_METHODS else 'off')  # the library's default
  c = fmnist.config(f'stage={a.stage},method={method},keep={a.keep},multiscale={multiscale},'
                    f'prop_attn={prop_attn},seed={a.seed},pos_embed_init=sincos2d,crop_min=0.9'
                    + (',smoke' if a.smoke else ',width=96,patch=4'), pinned=False)  # smoke sets the model
  c.batch_size = 64
  if a.stage == 'pretrain':
    c.total_steps = a.pretrain_steps
    c.optim.lr, c.optim.warmup_epochs = 2.4e-2, 50 * 64 / 60_000  # 3e-3 at batch 64, 50 warmup steps
  else:
    c.total_steps = a.finetune_steps
    c.optim.lr = 2e-3                                            # 2.5e-4 at batch 64
  c.dataset.eval_split = 'test'  # all 10,000 test images
  c.log_every_steps = 20
  c.checkpoint_every_steps = c.total_steps
  if a.smoke:
    c.batch_size, c.total_steps, c.log_every_steps, c.checkpoint_every_steps = 8, 3, 3, 3
  return c

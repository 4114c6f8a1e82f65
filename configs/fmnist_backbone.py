"""A converged, DeiT-shaped backbone on this CPU: 12 blocks on Fashion-MNIST, and fine-tunes from it.

The backbone of docs/RESULTS.md's first section (issue 23): ``vit_custom`` at 28 px, patch 4 (a 7x7
token grid, 49 patches and the class token), width 64, 2 heads, 12 blocks, so that the reductions sit
at DeiT's blocks (3, 6, 9). Trained from scratch in under 100 minutes on 2 CPU cores:

  python train.py --config configs/fmnist_backbone.py:stage=pretrain --workdir workdirs/fmnist_backbone
  python -m tpm_jax.export --workdir workdirs/fmnist_backbone --output docs/results/fmnist_backbone

stage=pretrain  AdamW, lr 2e-3 at batch 128 (8e-3 per 512 images), 1 epoch warmup, cosine to 1e-5,
                weight decay 0.05, gradient clipping 1.0, label smoothing 0.1, random resized crop
                (area 0.8-1) and horizontal flip, EMA of the parameters (decay 0.999; the export and
                the evaluation use it), sin-cos start of the learned position embedding, ``epochs``
                epochs (default 24).
stage=finetune  (default) a token reduction fine-tuned from the backbone (``init.checkpoint`` is
                docs/results/fmnist_backbone): lr 1e-3 per 512 images, cosine to 0, no warmup, no
                EMA, ``epochs`` epochs (default 1).

Arg string (all optional): stage, method, keep, r, multiscale, similarity, weight, prop_attn, distinct, epochs,
seed, smoke: as configs/fmnist.py reads them (method none by default; ToMe's r matched to ``keep``).
"""
import os

from configs import fmnist
from configs.common import SMOKE_SETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKBONE = os.path.join(ROOT, 'docs', 'results', 'fmnist_backbone')
SHAPE = 'depth=12,width=64,patch=4,pos_embed_init=sincos2d,crop_min=0.8'
FIXED = ('depth', 'width', 'patch', 'pos_embed_init', 'crop_min')  # SHAPE's keys
ARG_FIELDS = {k: f for k, f in fmnist.ARG_FIELDS.items() if k not in FIXED}  # the sweep reads it (configs/common.py)


def get_config(arg=None):
  arg = arg or ''
  given = dict(kv.split('=', 1) if '=' in kv else (kv, '') for kv in arg.split(',') if kv)
  for key in FIXED:
    if key in given:
      raise ValueError(f'config arg {key}: fixed by this config ({SHAPE}); use configs/fmnist.py for other shapes')
  stage = given.get('stage', 'finetune')
  if stage == 'pretrain' and 'epochs' not in given:
    arg = f'{arg},epochs=24' if arg else 'epochs=24'
  if stage == 'finetune' and 'epochs' not in given:
    arg = f'{arg},epochs=1' if arg else 'epochs=1'
  shape = ','.join(kv for kv in SHAPE.split(',') if 'smoke' not in given or kv.split('=')[0] not in SMOKE_SETS)
  c = fmnist.config(f'{shape},{arg}' if arg else shape, pinned=False)  # smoke sets the model; the library's tpm
  if stage == 'pretrain':
    c.optim.lr, c.optim.min_lr, c.optim.warmup_epochs = 8e-3, 4e-5, 1.0  # per 512 images: 2e-3, 1e-5 at batch 128
    c.optim.ema_decay = 0.999
    c.checkpoint_every_steps = 1000
  else:
    c.init.checkpoint = BACKBONE
  c.eval_every_steps = 10 ** 9  # the last step only: all 10,000 test images
  return c

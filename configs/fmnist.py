"""CPU-scale config: a small ViT on Fashion-MNIST with DeiT's 14x14 token grid.

The 28x28 images with patch 2 give 196 patch tokens, like DeiT at 224 px with patch 16, so the
token schedules, merges and pictures are those of the ImageNet configs. This is the config of the
CPU reproduction in docs/RESULTS.md and of the quickstart (configs/quickstart.py):

  stage=pretrain   the unpruned backbone from scratch (AdamW, lr 4e-3 per 512 images, i.e. 1e-3 at
                   batch 128, 0.25 epoch warmup, cosine to 4e-5, weight decay 0.05), ``epochs``
                   epochs (default 3): 73.19% top-1. For a new backbone, prefer
                   ``pos_embed_init=sincos2d`` with ``--config.optim.lr=8e-3``: 78.25% for the same
                   3 epochs (docs/RESULTS.md, section 4).
  stage=finetune   (default) token reduction fine-tuned from a pretrained backbone: set
                   ``--config.init.checkpoint=<export or workdir export>``; lr 1e-3 per 512 images
                   (2.5e-4 at batch 128), cosine to 0, no warmup, ``epochs`` epochs (default 0.2).

Arg string (all optional): stage=pretrain|finetune, method=none|tpm|evit|drop|tome, keep=<float>,
r=<int> (ToMe; default: as many tokens per location as ``keep`` removes), multiscale=none|pool|cross
(default none), similarity=keys|tokens, weight=importance|size|uniform, prop_attn=on|off (default
on for tome, off otherwise), distinct=<float> (tpm: rank by distinctness too; default 0), epochs=<float>,
width=<int>, depth=<int>, patch=<int> (default 2: a 14x14
grid), crop_min=<float> (random resized crop's smallest area, default 0.6), seed=<int>,
pos_embed_init=trunc_normal|sincos2d (how the learned position embedding starts), smoke.
The defaults are the reproduction's base as it was run, pinned here so that its runs stay what
docs/RESULTS.md reports; the library's defaults, set from those results, are multiscale pool (in
the training configs) and prop_attn on for tpm too.

  python train.py --config configs/fmnist.py:stage=pretrain --workdir workdirs/fmnist/pretrain
  python -m tpm_jax.export --workdir workdirs/fmnist/pretrain --output workdirs/fmnist/backbone
  python train.py --config configs/fmnist.py:method=tpm,keep=0.7 \\
      --config.init.checkpoint=workdirs/fmnist/backbone --workdir workdirs/fmnist/tpm07

Model: ``vit_custom`` at 28 px, patch 2, 1 channel, width 64, depth 4, 2 heads (0.0587 GMACs
unpruned; ``width``/``depth`` args change it, heads = width // 32); reductions at blocks (1, 2, 3) of
4 (DeiT's (3, 6, 9) of 12, i * depth // 4), which gives 197 -> 139 -> 98 -> 69 tokens at keep 0.7 as
DeiT-S has. Batch 128.
Augmentation: random resized crop (area 0.6-1), horizontal flip, label smoothing 0.1; no
RandAugment (grayscale), no random erasing, no mixup/cutmix (short runs).
"""
from configs.common import ARG_FIELDS as _COMMON_FIELDS
from configs.common import RECIPE_ARGS, apply_arg, base_config, parse_arg

# the shape is width, depth, patch (vit_custom): no ``model`` key
ARGS = dict({k: v for k, v in RECIPE_ARGS.items() if k != 'model'}, method='none', multiscale='none', stage='finetune',
            epochs='', width=64, depth=4, patch=2, crop_min=0.6, pos_embed_init='trunc_normal')
ARG_FIELDS = dict({k: f for k, f in _COMMON_FIELDS.items() if k in ARGS}, width='model.embed_dim', depth='model.depth',
                  patch='model.patch_size', pos_embed_init='model.pos_embed_init',
                  epochs='num_epochs')  # the field each key names (python -m tpm_jax.sweep)


def get_config(arg=None):
  return config(arg, pinned=True)


def config(arg=None, *, pinned: bool):
  """``get_config``; with ``pinned`` false the reduction's unset fields keep the library's defaults (the recipes
  built on this one: configs/fmnist_backbone.py, configs/quickstart.py)."""
  a = parse_arg(arg, **ARGS)
  c = base_config()
  m = c.model
  m.name, m.num_classes, m.img_size, m.patch_size, m.in_chans = 'vit_custom', 10, 28, a.patch, 1
  m.embed_dim, m.depth, m.num_heads = a.width, a.depth, max(1, a.width // 32)
  m.drop_path_rate = 0.0
  m.pos_embed_init = a.pos_embed_init  # only the start of a run from scratch; an init checkpoint replaces it
  c.reduction.locations = ','.join(str(b) for b in _locations(a.depth))

  c.dataset.name = 'fashion_mnist'
  c.dataset.eval_split = 'test'
  c.aug.crop_scale = (a.crop_min, 1.0)
  c.aug.randaugment = ''
  c.aug.mixup = c.aug.cutmix = 0.0
  c.aug.eval_crop_pct = 1.0
  c.aug.mean, c.aug.std = (0.286,), (0.353,)  # Fashion-MNIST pixel statistics

  c.aug.random_erasing = 0.0
  c.batch_size = 128
  if a.stage == 'pretrain':
    c.num_epochs = _epochs(a.epochs, 3.0)
    c.optim.lr, c.optim.min_lr, c.optim.warmup_epochs, c.optim.weight_decay = 4e-3, 4e-5, 0.25, 0.05
  elif a.stage == 'finetune':
    c.num_epochs = _epochs(a.epochs, 0.2)
    c.optim.lr, c.optim.min_lr, c.optim.warmup_epochs, c.optim.weight_decay = 1e-3, 0.0, 0.0, 0.05
  else:
    raise ValueError(f'config arg stage={a.stage!r}: accepted are pretrain, finetune')
  c.optim.grad_clip = 1.0
  c.log_every_steps = 50
  c.eval_every_steps = 10 ** 9     # evaluate at the last step only
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 1
  c = apply_arg(c, a)
  if pinned:  # the reproduction's base as it was run (see above), not the library's defaults
    if not a.prop_attn:
      c.reduction.prop_attn = c.reduction.method == 'tome'
    if c.reduction.method == 'tpm':  # keys, importance, attention alone (the library's tpm: tokens, size, distinct 2)
      c.reduction.similarity, c.reduction.weight = a.similarity or 'keys', a.weight or 'importance'
      c.reduction.distinct = 0.0 if a.distinct in (None, '') else c.reduction.distinct
  return c


def _epochs(value: str, default: float) -> float:
  """The ``epochs`` arg: the stage's default when not given; ``epochs=0`` is 0 epochs, refused as
  ``num_epochs=0`` is (hostile pass 19's A18: read as "the default", it trained 3 epochs)."""
  try:
    return float(value) if value != '' else default
  except ValueError:
    raise ValueError(f'config arg epochs={value!r} is not accepted: expected a number') from None


def _locations(depth):
  """DeiT's reduction blocks (3, 6, 9) of 12, scaled to ``depth``: (1, 3, 4) for 6, (1, 2, 3) for 4, (0,) for 1
  (hostile pass 19's A12: (1,), past the one block, so ``depth=1`` with a reduction could never run)."""
  return sorted({min(depth - 1, max(1, i * depth // 4)) for i in (1, 2, 3)})

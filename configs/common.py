"""Shared pieces of the ml_collections configs: the base config and big_vision-style arg strings.

``python train.py --config configs/deit.py:model=deit_small_patch16_224,method=tpm,keep=0.7``
passes ``model=...,method=tpm,keep=0.7`` to ``get_config(arg)``; ``smoke`` shrinks any config to a
run of seconds. Every field can also be set with ``--config.<field>=<value>``.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'a=1,b=x,flag' -> ConfigDict(a=1, b='x', flag=True), typed by ``defaults`` (which also lists
  the accepted keys; an unknown key is an error naming the accepted ones)."""
  out = ml_collections.ConfigDict(defaults)
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    key, _, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'config arg {key!r} is not known: accepted are {", ".join(sorted(defaults))}')
    default = defaults[key]
    if not _:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ('1', 'true', 'yes', 'on')
    elif isinstance(default, int):
      value = int(value)
    elif isinstance(default, float):
      value = float(value)
    with out.unlocked():
      out[key] = value
  return out


def base_config() -> ml_collections.ConfigDict:
  """Every field train.py and eval.py read, with defaults. Recipes override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name='deit_small_patch16_224',
      num_classes=1000,
      img_size=224,
      drop_path_rate=0.1,
      dtype='float32',  # compute dtype: float32 | bfloat16 (parameters stay float32)
      pos_embed_init='trunc_normal',  # trunc_normal (timm) | sincos2d (2-D sin-cos start; from scratch)
      # Size overrides for vit_custom and small models (None: the named model's value).
      patch_size=config_dict.placeholder(int),
      embed_dim=config_dict.placeholder(int),
      depth=config_dict.placeholder(int),
      num_heads=config_dict.placeholder(int),
      in_chans=config_dict.placeholder(int),
  ))
  c.reduction = ml_collections.ConfigDict(dict(
      # keep_rate, locations, r: strings so one value or one per location ('0.7' or '0.9,0.7,0.5')
      # can be given on the command line; tpm_jax.ReductionConfig parses and validates them.
      method='none', keep_rate='0.7', locations=config_dict.placeholder(str), r='8',
      similarity='keys', assign='hard', tau=0.1, weight='importance', prop_attn=config_dict.placeholder(bool)))
  c.multiscale = ml_collections.ConfigDict(dict(method='none', source='pool', scales=(2, 4)))

  c.dataset = ml_collections.ConfigDict(dict(
      name='imagenet2012',         # any TFDS image-classification dataset
      data_dir=config_dict.placeholder(str),
      manual_dir=config_dict.placeholder(str),   # imagenet2012: where the ILSVRC2012 tars are
      image_folder=config_dict.placeholder(str),  # a local root/split/class/*.jpg tree instead of a TFDS name
      train_split='train',
      eval_split='validation',
      workers=2,                   # Grain worker processes that decode and augment (0: threads of the trainer)
      threads=8,                   # reading and prefetching threads per process
  ))
  c.aug = ml_collections.ConfigDict(dict(
      crop_scale=(0.08, 1.0),      # random resized crop area range
      hflip=True,
      randaugment='rand-m9-mstd0.5-inc1',  # timm string (DeiT's: m9, 2 ops); '' disables
      random_erasing=0.25,
      mixup=0.8,                   # mixup alpha (0 disables)
      cutmix=1.0,                  # cutmix alpha (0 disables)
      label_smoothing=0.1,
      eval_crop_pct=224 / 256,     # eval: resize to img_size / pct, centre crop img_size
      mean=(0.485, 0.456, 0.406),
      std=(0.229, 0.224, 0.225),
  ))

  c.batch_size = 1024              # global
  c.eval_batch_size = 0            # 0: batch_size
  c.total_steps = 0                # 0: from num_epochs
  c.num_epochs = 30.0
  c.num_train_examples = 0         # 0: read from the dataset info
  c.grad_accum_steps = 1
  c.keep_warmup_epochs = 0.0       # EViT keep-rate warmup: keep rate 1 -> target over these epochs
  c.keep_warmup_stages = 4         # ... quantised into at most this many compiled train steps

  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-5,                     # per 512 images: scaled by batch_size / 512
      min_lr=2e-6,
      warmup_epochs=0.0,
      weight_decay=1e-6,           # not applied to norms, biases, position embeddings, special tokens
      b1=0.9, b2=0.999,
      grad_clip=0.0,               # global-norm clip (0 disables)
      ema_decay=0.0,               # EMA of parameters (0 disables)
  ))
  c.distill = ml_collections.ConfigDict(dict(alpha=0.0))  # self-distillation from the unpruned backbone
  c.init = ml_collections.ConfigDict(dict(
      timm_checkpoint=config_dict.placeholder(str),
      checkpoint=config_dict.placeholder(str)))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1 fills with the remaining devices
  c.fsdp_min_size = 2 ** 14  # parameters smaller than this stay replicated under FSDP

  c.log_every_steps = 50
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.preemption_check_every_steps = 10  # several processes: agree on a SIGTERM every N steps (a collective)
  c.progress = 'auto'              # auto | bar | lines | off
  c.overwrite = False              # start over in a workdir that holds a run with another config
  return c


# The arg-string keys every recipe accepts, with their defaults.
RECIPE_ARGS = dict(model='deit_small_patch16_224', method='tpm', keep=0.7, r=8, multiscale='pool', seed=0, smoke=False,
                   similarity='', weight='', prop_attn='')  # '': the reduction config's default


def apply_arg(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The common arg-string keys: model, method, keep, r, multiscale, similarity, weight, prop_attn
  (on|off), seed, smoke."""
  if 'model' in a and a.model:
    c.model.name = a.model
  if 'method' in a and a.method:
    c.reduction.method = a.method
  if 'keep' in a and a.keep:
    c.reduction.keep_rate = str(a.keep)
  if 'r' in a and a.r:
    c.reduction.r = str(a.r)
  if 'multiscale' in a and a.multiscale:
    c.multiscale.method = a.multiscale
  if c.reduction.method == 'none':  # the plain backbone: multi-scale fusion comes only with a reduction
    c.multiscale.method = 'none'
  if a.get('similarity'):
    c.reduction.similarity = a.similarity
  if a.get('weight'):
    c.reduction.weight = a.weight
  if a.get('prop_attn'):
    if a.prop_attn not in ('on', 'off'):
      raise ValueError(f'config arg prop_attn={a.prop_attn!r}: accepted are on, off')
    c.reduction.prop_attn = a.prop_attn == 'on'
  if 'seed' in a:
    c.seed = a.seed
  if a.get('smoke'):
    smoke(c)
  return c


def smoke(c: ml_collections.ConfigDict) -> None:
  """Shrink to a run of seconds on one CPU: a tiny ViT at 32 px, a few steps, small batches."""
  c.model.name = 'vit_custom'
  c.model.img_size, c.model.patch_size, c.model.embed_dim, c.model.depth, c.model.num_heads = 32, 4, 48, 4, 3
  c.model.drop_path_rate = 0.0
  c.model.dtype = 'float32'  # a CPU run
  c.reduction.locations = '1,2'
  c.dataset.workers = 0  # 16-image batches: threads suffice, no worker processes to start
  c.batch_size = 16
  c.total_steps = 6
  c.log_every_steps = 2
  c.eval_every_steps = 6
  c.checkpoint_every_steps = 6
  c.optim.lr = 1e-3 * 512 / 16 / 10
  c.optim.min_lr = 0.0

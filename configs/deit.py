"""ImageNet fine-tuning of a pretrained DeiT with token reduction: the EViT recipe.

30 epochs, AdamW, lr 2e-5 per 512 images (cosine to 2e-6, no warmup), weight decay 1e-6,
batch 1024, DeiT augmentation (RandAugment m9 n2, random erasing 0.25, mixup 0.8 / cutmix 1.0,
label smoothing 0.1), stochastic depth 0.1. Start from timm weights with
``--config.init.timm_checkpoint=deit_small_patch16_224.safetensors``.

Arg string (all optional): model=<timm name>, method=none|tpm|evit|drop|tome, keep=<float>,
r=<int> (ToMe's tokens merged per block, ToMe's way; by default matched to keep: the token
counts the other methods have at keep), multiscale=none|pool|cross (default pool with a reduction, none
without), seed=<int>, smoke (a run of seconds on a CPU).
  python train.py --config configs/deit.py:model=deit_small_patch16_224,method=tpm,keep=0.7 \\
      --config.dataset.manual_dir=/data/imagenet --workdir /ckpt/deit_s_tpm07
"""

from configs.common import ARG_FIELDS, RECIPE_ARGS, apply_arg, base_config, parse_arg

__all__ = ['ARG_FIELDS', 'get_config']  # ARG_FIELDS: the field each arg-string key names (the sweep reads it)


def get_config(arg=None):
  a = parse_arg(arg, **RECIPE_ARGS)
  c = base_config()
  c.model.dtype = 'bfloat16'  # mixed precision on accelerators: bfloat16 compute, float32 parameters
  c.num_epochs = 30.0
  c.batch_size = 1024
  c.optim.lr, c.optim.min_lr, c.optim.warmup_epochs, c.optim.weight_decay = 2e-5, 2e-6, 0.0, 1e-6
  return apply_arg(c, a)

"""ImageNet training from scratch with token reduction: the DeiT recipe, 300 epochs.

AdamW, lr 5e-4 per 512 images with 5 warmup epochs, cosine to 1e-5, weight decay 0.05, batch 1024,
DeiT augmentation, stochastic depth 0.1, and EViT's keep-rate warmup (the keep rate goes from 1 to
the target, quantised into ``keep_warmup_stages`` compiled steps).

Arg string: as configs/deit.py.
"""

from configs.common import ARG_FIELDS, RECIPE_ARGS, apply_arg, base_config, parse_arg

__all__ = ['ARG_FIELDS', 'get_config']  # ARG_FIELDS: the field each arg-string key names (the sweep reads it)


def get_config(arg=None):
  a = parse_arg(arg, **RECIPE_ARGS)
  c = base_config()
  c.model.dtype = 'bfloat16'  # mixed precision on accelerators: bfloat16 compute, float32 parameters
  c.num_epochs = 300.0
  c.batch_size = 1024
  c.optim.lr, c.optim.min_lr, c.optim.warmup_epochs, c.optim.weight_decay = 5e-4, 1e-5, 5.0, 0.05
  c.optim.grad_clip = 0.0
  c.keep_warmup_epochs = 30.0
  c.keep_warmup_stages = 4
  return apply_arg(c, a)

"""Every model family against PyTorch timm at its full size: the same random weights, the same images,
float32; the relative error of our logits (or pooled features, where timm's model has no head).

The suite checks each family at 2 blocks and width 64 (``tests/test_timm_parity.py``); this measures the
sizes people run (B/16 at 224, DINOv2-S/14 at 518, ...), where errors would grow with depth and width.
Every parameter is moved off its initial value (LayerScale's 1e-5 gains, unit norms) so each enters the
output. Relative error: max |ours - timm| / max |timm|.

  python benchmarks/family_parity.py --out benchmarks/results/family_parity
"""
import argparse
import os
import shlex
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import tpm_jax  # noqa: E402
from benchmarks.throughput import machine, write_results  # noqa: E402
from benchmarks.torch_compat import import_timm  # noqa: E402

# One name per family (README "Models"), at timm's sizes.
FAMILIES = ['deit_small_patch16_224', 'deit_base_distilled_patch16_224', 'vit_base_patch16_clip_224',
            'vit_base_patch16_clip_quickgelu_224', 'vit_base_patch16_siglip_224', 'vit_base_patch16_siglip_gap_224',
            'vit_small_patch14_dinov2', 'vit_small_patch14_reg4_dinov2', 'deit3_small_patch16_224',
            'vit_base_patch16_gap_224', 'vit_medium_patch16_reg4_gap_256']


def parity(timm, name, batch, seed=0):
  import torch
  torch.manual_seed(seed)
  tm = timm.create_model(name, pretrained=False).eval()
  with torch.no_grad():
    for p in tm.parameters():
      p.add_(torch.randn_like(p) * 0.02)
  size = tm.patch_embed.img_size[0]
  x = np.random.RandomState(seed + 1).randn(batch, size, size, 3).astype(np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  model = tpm_jax.load_timm_weights(tpm_jax.create_model(name), tm.state_dict())
  ours = np.asarray(tpm_jax.jit_forward(model)(jnp.asarray(x)))
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  err = float(np.abs(ours - ref).max() / np.abs(ref).max())
  return dict(name=name, img_size=size, tokens=tm.patch_embed.num_patches, params_m=round(sum(p.numel() for p in tm.parameters()) / 1e6, 1),
              outputs=ref.shape[1], rel_error=err)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--models', default=','.join(FAMILIES), help='comma-separated timm names')
  ap.add_argument('--batch', type=int, default=2)
  ap.add_argument('--out', default=os.path.join(ROOT, 'benchmarks/results/family_parity'))
  args = ap.parse_args()
  timm = import_timm()
  import torch
  rows = []
  for name in args.models.split(','):
    t = time.time()
    rows.append(parity(timm, name, args.batch))
    print(f'{name}: relative error {rows[-1]["rel_error"]:.2e} ({time.time() - t:.0f} s)', flush=True)
  m = machine(torch, timm)
  table = [f'# Parity with PyTorch timm at full size ({m["date"]})', '',
           f'`{shlex.join(["python"] + sys.argv)}`', '',
           f'jax {m["jax"]}, flax {m["flax"]}, torch {m["torch"]}, timm {m["timm"]}; float32, batch {args.batch}, random '
           'weights (timm init, every parameter moved by N(0, 0.02)), random N(0, 1) images.', '',
           '| model | image | patches | params (M) | outputs | relative error |', '|---|---|---|---|---|---|']
  table += [f'| {r["name"]} | {r["img_size"]} | {r["tokens"]} | {r["params_m"]} | {r["outputs"]} | {r["rel_error"]:.1e} |' for r in rows]
  write_results(args.out, dict(machine=m, rows=rows), '\n'.join(table) + '\n')


if __name__ == '__main__':
  main()

#!/usr/bin/env python
"""One-off: give the committed off-the-shelf evaluation records the 'applied' field that records have carried since
39b0e01 (the reduction and fusion fields each setting applied, as RunConfig.computed gives them), computed by this
code, whose defaults are those the records were evaluated with. Checks: the folder's checkpoint is the export (the
SHA-256 of its checksums.json), and each record's token counts are those the applied setting gives. Run once:

  for f in fmnist_backbone_offtheshelf fmnist_backbone_tpm_variants; do
    .venv/bin/python scripts/records_applied.py docs/results/$f docs/results/fmnist_backbone; done
  for f in fmnist_backbone_w96_offtheshelf fmnist_backbone_w96_tpm_variants; do
    .venv/bin/python scripts/records_applied.py docs/results/$f docs/results/fmnist_backbone_w96; done

A later default (say tpm's) then makes these records refused, not relabelled, when their folders are collected again.
"""
import glob
import json
import os
import sys

from tpm_jax import export
from tpm_jax.evaluation import describe_reduction
from tpm_jax.files import sha256, write_json
from tpm_jax.models.registry import model_from_config
from tpm_jax.reduction_setting import parse_setting
from tpm_jax.sweep.off_the_shelf import applied_fields

folder, checkpoint = sys.argv[1], sys.argv[2]
plan = json.load(open(os.path.join(folder, 'sweep.json')))
assert plan["checksums_sha256"] == sha256(os.path.join(checkpoint, "checksums.json")), folder
run = export.read_config(checkpoint)
n = 0
for path in sorted(glob.glob(os.path.join(folder, 'evals', '*.json'))):
  rec = json.load(open(path))
  cfg = parse_setting(rec['reduction']).apply(run)
  described = describe_reduction(model_from_config(cfg), cfg)
  assert described['tokens'] == rec['tokens'], (path, described['tokens'], rec['tokens'])
  if 'applied' in rec:
    assert rec['applied'] == applied_fields(cfg), path
    continue
  rec['applied'] = applied_fields(cfg)
  write_json(path, rec)
  n += 1
print(folder, 'records given applied:', n)

#!/usr/bin/env bash
# Copy the finished runs of `bash scripts/fmnist_backbone.sh finetune` (workdirs/fmnist_backbone_ft/,
# not committed: checkpoints) into docs/results/fmnist_backbone_ft/: each sweep's tables and plot, and
# each finished run's final.json, train.log and metrics.jsonl. Safe to run while the sweeps go on.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=workdirs/fmnist_backbone_ft
DST=docs/results/fmnist_backbone_ft
for sweep in "$SRC"/*/; do
  name=$(basename "$sweep")
  mkdir -p "$DST/$name"
  for f in results.csv results.md pareto.png sweep.json; do
    [ -f "$sweep/$f" ] && cp "$sweep/$f" "$DST/$name/"
  done
  for run in "$sweep"runs/*/; do
    [ -f "$run/final.json" ] || continue
    mkdir -p "$DST/$name/runs/$(basename "$run")"
    cp "$run/final.json" "$run/train.log" "$run/metrics.jsonl" "$DST/$name/runs/$(basename "$run")/"
  done
done
echo "copied into $DST"

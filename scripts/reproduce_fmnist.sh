#!/usr/bin/env bash
# The CPU-scale reproduction of docs/RESULTS.md, exactly as it was run (2 CPU cores).
# Resumable: run it again and finished runs are skipped (the sweep looks for final.json), an
# interrupted run resumes from its last checkpoint. Results land in workdirs/repro/*/results.md.
#   bash scripts/reproduce_fmnist.sh [main|ablation|recommended|all|core] [seeds, default 0,1,2]
# core: the claims' key runs only (none; tpm, drop, evit, tome at keep 0.5; the library's tpm at 0.7 and 0.5),
# for checking them on another backbone.
# BACKBONE=sincos2d (in the environment) pretrains the backbone with the position embedding started
# from a 2-D sin-cos table and lr 2e-3 (8e-3 per 512 images), into workdirs/repro_sincos2d/; the
# default (BACKBONE=trunc_normal) is the first reproduction's backbone, into workdirs/repro/.
# Tables for docs/RESULTS.md: python scripts/repro_tables.py --main $W/main/results.csv ...
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PART=${1:-all}
SEEDS=${2:-0,1,2}
BACKBONE=${BACKBONE:-trunc_normal}
case "$BACKBONE" in
  trunc_normal) W=workdirs/repro; PRETRAIN=(configs/fmnist.py:stage=pretrain) ;;
  sincos2d) W=workdirs/repro_sincos2d
            PRETRAIN=(configs/fmnist.py:stage=pretrain,pos_embed_init=sincos2d --config.optim.lr=8e-3) ;;
  *) echo "BACKBONE=$BACKBONE: accepted are trunc_normal, sincos2d" >&2; exit 2 ;;
esac

# 1. The unpruned backbone from scratch (3 epochs), and its export.
[ -f $W/pretrain/final.json ] || $PY train.py --config "${PRETRAIN[@]}" --workdir $W/pretrain \
    --config.progress=lines --config.log_every_steps=100
[ -f $W/backbone/export.json ] || $PY -m tpm_jax.export --workdir $W/pretrain --output $W/backbone

# 2. Every variant fine-tuned for the same budget (0.2 epoch) from that backbone.
FT=(--config.init.checkpoint=$W/backbone --config.progress=off)
if [ "$PART" = main ] || [ "$PART" = all ]; then
  # merge (tpm) against discarding (drop), fusing into one token (evit) and ToMe at the same token schedule
  $PY -m tpm_jax.sweep --config configs/fmnist.py --sweep seed=$SEEDS --sweep method=none --workdir $W/main "${FT[@]}"
  $PY -m tpm_jax.sweep --config configs/fmnist.py --sweep seed=$SEEDS --sweep keep=0.7,0.5 \
      --sweep method=tpm,drop,evit,tome --workdir $W/main "${FT[@]}"
fi
if [ "$PART" = core ]; then
  $PY -m tpm_jax.sweep --config configs/fmnist.py --sweep seed=$SEEDS --sweep method=none --workdir $W/core "${FT[@]}"
  $PY -m tpm_jax.sweep --config configs/fmnist.py --sweep seed=$SEEDS --sweep keep=0.5 --sweep method=tpm,drop,evit,tome \
      --workdir $W/core "${FT[@]}"
fi
if [ "$PART" = ablation ] || [ "$PART" = all ]; then
  # tpm at keep 0.5, one change at a time from (multiscale none, similarity keys, weight importance, prop_attn off)
  for S in multiscale=pool,cross similarity=tokens weight=size,uniform prop_attn=on; do
    $PY -m tpm_jax.sweep --config configs/fmnist.py:method=tpm,keep=0.5 --sweep seed=$SEEDS --sweep $S \
        --workdir $W/ablation "${FT[@]}" || FAILED=1  # a failed sweep does not stop the others
  done
fi
if [ "$PART" = recommended ] || [ "$PART" = all ] || [ "$PART" = core ]; then
  # the library's defaults, set from the two parts above: tpm with multi-scale pool fusion and prop_attn on
  $PY -m tpm_jax.sweep --config configs/fmnist.py:method=tpm,multiscale=pool,prop_attn=on --sweep seed=$SEEDS \
      --sweep keep=0.7,0.5 --workdir $W/recommended "${FT[@]}" || FAILED=1
fi
exit ${FAILED:-0}

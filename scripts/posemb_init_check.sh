#!/usr/bin/env bash
# The quickstart's unpruned pretraining (configs/quickstart.py:stage=pretrain, 200 steps of 64,
# top-1 on the first 2,000 test images) with each position-embedding start and learning rate, to
# separate the two changes the quickstart made (docs/RESULTS.md, section 4). About 3 minutes a run.
#   bash scripts/posemb_init_check.sh   -> workdirs/posemb_check/<init>_lr<lr>/final.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for INIT in trunc_normal sincos2d; do
  for LR in 8e-3 1.6e-2; do  # per 512 images: 1e-3 and 2e-3 at batch 64
    D=workdirs/posemb_check/${INIT}_lr${LR}
    [ -f $D/final.json ] || $PY train.py --config configs/quickstart.py:stage=pretrain --workdir $D \
        --config.model.pos_embed_init=$INIT --config.optim.lr=$LR --config.progress=off
    $PY -c "import json; f = json.load(open('$D/final.json')); print('$INIT lr $LR: top-1', f['eval_top1'])"
  done
done

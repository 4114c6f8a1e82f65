#!/usr/bin/env bash
# The converged 12-block Fashion-MNIST backbone of docs/RESULTS.md section 1 and the comparisons on it
# (2 CPU cores), from a fresh clone (the venv and the data are made first). Resumable: finished steps are skipped.
#   bash scripts/fmnist_backbone.sh [backbone|offtheshelf|defaults|variants|finetune|all]
# backbone     train configs/fmnist_backbone.py:stage=pretrain into workdirs/fmnist_backbone (log:
#              workdirs/fmnist_backbone.log) and export it to docs/results/fmnist_backbone
# offtheshelf  (run with tpm_jax before its tpm defaults changed on 2026-12-07: `git checkout d333653` to
#              run it again; today the folder's settings name other models, and the sweep refuses)
#              the export evaluated on all 10,000 test images under none, tpm (the library's defaults then:
#              pool fusion, proportional attention), tpm as the paper specifies it (no fusion, no
#              proportional attention), evit, drop and ToMe matched to the same token counts, at keep
#              0.9 ... 0.5, no training: docs/results/fmnist_backbone_offtheshelf/
# defaults     the same for tpm's defaults since 2026-12-07 (and the same ranking and merge without fusion
#              or proportional attention), beside none and ToMe: docs/results/fmnist_backbone_offtheshelf_defaults/
# variants     (as offtheshelf: run at d333653) why tpm trailed ToMe off-the-shelf: tpm with each of its choices changed (similarity
#              keys/tokens, merge weight importance/size/uniform, hard/soft assignment, proportional
#              attention, ranking by distinctness too) at keep 0.7 and 0.5, beside tome and evit:
#              docs/results/fmnist_backbone_tpm_variants/
# finetune     every method fine-tuned from the backbone for 1 epoch (configs/fmnist_backbone.py's finetune
#              stage) at keep 0.7 and 0.5, seeds $SEEDS (default 0,1,2), one seed at a time so that every
#              method has its runs of the first seed first: none; tpm with the defaults before 2026-12-07
#              (pool fusion, proportional attention, keys' similarity, importance weights, ranked by attention
#              alone: spelled out); tpm ranked by distinctness too (similarity=tokens, weight=size,
#              distinct=$DISTINCT, default 2: today's defaults), with and without fusion; tome (r matched),
#              evit, drop. Sweeps under
#              workdirs/fmnist_backbone_ft/{none,tpm,tpm_distinct,peers}; each resumes where it stopped
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh  # .venv/ as the README's commands make it ($PY)
source scripts/fmnist_data.sh
prepare_fmnist  # Fashion-MNIST prepared through TFDS (once)
PART=${1:-all}
W=workdirs/fmnist_backbone
OUT=docs/results/fmnist_backbone

if [ "$PART" = backbone ] || [ "$PART" = all ]; then
  [ -f $W/final.json ] || $PY train.py --config configs/fmnist_backbone.py:stage=pretrain --workdir $W \
      --config.progress=lines 2>&1 | tee -a $W.log
  [ -f $OUT/export.json ] || $PY -m tpm_jax.export --workdir $W --output $OUT
  $PY eval.py --checkpoint $OUT --split test --output docs/results/fmnist_backbone_eval.json
  $PY eval.py --checkpoint $OUT --split test --reduction tpm:0.7 --output docs/results/fmnist_backbone_eval_tpm07.json
fi
if [ "$PART" = offtheshelf ] || [ "$PART" = all ]; then
  S=none
  for k in 0.9 0.8 0.7 0.6 0.5; do
    S="$S,tpm+pool:$k,tpm:$k@prop_attn=off,evit:$k,drop:$k,tome:$k"
  done
  $PY -m tpm_jax.sweep --checkpoint $OUT --split test --reductions "$S" \
      --workdir docs/results/fmnist_backbone_offtheshelf --throughput_batch 64
fi
if [ "$PART" = defaults ] || [ "$PART" = all ]; then  # tpm's defaults since 2026-12-07 off-the-shelf, beside ToMe
  S=none
  for k in 0.9 0.8 0.7 0.6 0.5; do
    S="$S,tpm+pool:$k,tpm:$k@prop_attn=off,tome:$k"
  done
  $PY -m tpm_jax.sweep --checkpoint $OUT --split test --reductions "$S" \
      --workdir docs/results/fmnist_backbone_offtheshelf_defaults --throughput_batch 64
fi
if [ "$PART" = variants ] || [ "$PART" = all ]; then
  S=""
  for k in 0.7 0.5; do
    S="$S,tpm:$k,tpm:$k@prop_attn=off,tpm:$k@similarity=tokens,tpm:$k@weight=size,tpm:$k@weight=uniform"
    S="$S,tpm:$k@assign=soft,tpm:$k@similarity=tokens@weight=size,tpm:$k@distinct=2"
    S="$S,tpm:$k@similarity=tokens@weight=size@distinct=1,tpm:$k@similarity=tokens@weight=size@distinct=2,evit:$k,tome:$k"
  done
  $PY -m tpm_jax.sweep --checkpoint $OUT --split test --reductions "none$S" \
      --workdir docs/results/fmnist_backbone_tpm_variants --throughput_batch 64
fi
if [ "$PART" = finetune ] || [ "$PART" = all ]; then
  FT=workdirs/fmnist_backbone_ft
  SEEDS=${SEEDS:-0,1,2}
  DISTINCT=${DISTINCT:-2}
  QUIET="--config.progress=off"
  for s in ${SEEDS//,/ }; do
    $PY -m tpm_jax.sweep --config configs/fmnist_backbone.py --sweep seed=$s --sweep method=none \
        --workdir $FT/none $QUIET
    $PY -m tpm_jax.sweep \
        --config configs/fmnist_backbone.py:method=tpm,multiscale=pool,prop_attn=on,similarity=keys,weight=importance,distinct=0 \
        --sweep seed=$s --sweep keep=0.7,0.5 --workdir $FT/tpm $QUIET
    $PY -m tpm_jax.sweep \
        --config configs/fmnist_backbone.py:method=tpm,multiscale=pool,prop_attn=on,similarity=tokens,weight=size,distinct=$DISTINCT \
        --sweep seed=$s --sweep keep=0.7,0.5 --workdir $FT/tpm_distinct $QUIET
    $PY -m tpm_jax.sweep \
        --config configs/fmnist_backbone.py:method=tpm,multiscale=none,prop_attn=on,similarity=tokens,weight=size,distinct=$DISTINCT \
        --sweep seed=$s --sweep keep=0.7,0.5 --workdir $FT/tpm_distinct_nofusion $QUIET
    $PY -m tpm_jax.sweep --config configs/fmnist_backbone.py --sweep seed=$s --sweep keep=0.7,0.5 \
        --sweep method=tome,evit,drop --workdir $FT/peers $QUIET
  done
fi

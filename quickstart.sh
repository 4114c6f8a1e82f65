#!/usr/bin/env bash
# One command from a fresh clone: creates .venv/, installs requirements.txt and the `prepare` extra,
# prepares the real Fashion-MNIST through TFDS, in ArrayRecord (from Debian's dataset-fashion-mnist
# where apt is available; the one step that runs TensorFlow) and runs the quickstart job, which reads
# it with Grain and imports no TensorFlow. Idempotent: a second run reuses the venv and the data.
# Extra arguments go to the job, e.g. `bash quickstart.sh --workdir /tmp/qs`.
source "$(dirname "$0")/scripts/venv.sh"
cd "$ROOT"
DATA_DIR=()  # the job's --data_dir, if given, for the preparation too
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --data_dir=*) DATA_DIR=(--data_dir "${!i#--data_dir=}") ;;
    --data_dir) j=$((i + 1)); DATA_DIR=(--data_dir "${!j}") ;;
  esac
done
source "$ROOT/scripts/fmnist_data.sh"
prepare_fmnist "${DATA_DIR[@]}"
exec "$PY" -m tpm_jax.quickstart "$@"

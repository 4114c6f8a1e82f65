#!/usr/bin/env bash
# One command from a fresh clone: creates .venv/, installs requirements.txt and the `prepare` extra,
# prepares the real Fashion-MNIST through TFDS, in ArrayRecord (from Debian's dataset-fashion-mnist
# where apt is available; the one step that runs TensorFlow) and runs the quickstart job, which reads
# it with Grain and imports no TensorFlow. Idempotent: a second run reuses the venv and the data.
# Extra arguments go to the job, e.g. `bash quickstart.sh --workdir /tmp/qs`.
source "$(dirname "$0")/scripts/venv.sh"
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "[setup] installing Debian's dataset-fashion-mnist (the files TFDS would download)"
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "[setup] apt could not install dataset-fashion-mnist; TFDS will try to download the files"
fi
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"  # TensorFlow's C++ log level (preparing the data)
DATA_DIR=()  # the job's --data_dir, if given, for the preparation too
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --data_dir=*) DATA_DIR=(--data_dir "${!i#--data_dir=}") ;;
    --data_dir) j=$((i + 1)); DATA_DIR=(--data_dir "${!j}") ;;
  esac
done
"$PY" -m tpm_jax.data.prepare --name fashion_mnist "${DATA_DIR[@]}"
exec "$PY" -m tpm_jax.quickstart "$@"

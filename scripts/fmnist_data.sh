# Sourced after scripts/venv.sh (needs $PY): defines prepare_fmnist [--data_dir DIR], which prepares
# Fashion-MNIST through TFDS, in ArrayRecord, from Debian's dataset-fashion-mnist where apt is
# available (the very files TFDS would download; the one step that runs TensorFlow), else TFDS
# downloads them. Idempotent.
prepare_fmnist() {
  if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
    local SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "[setup] installing Debian's dataset-fashion-mnist (the files TFDS would download)"
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "[setup] apt could not install dataset-fashion-mnist; TFDS will try to download the files"
  fi
  TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" "$PY" -m tpm_jax.data.prepare --name fashion_mnist "$@"
}

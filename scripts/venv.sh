# Sourced by quickstart.sh and test.sh: make sure .venv/ exists at the repo root and holds
# requirements.txt and the `prepare` extra (TensorFlow, for TFDS to prepare datasets) + the package
# itself, editable. Idempotent: a second run reuses the venv and
# skips pip when the requirement files have not changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
pip_install() {  # pip_install STAMP_NAME ARGS...: run pip unless the stamp matches the inputs
  local stamp="$VENV/.stamp-$1"; shift
  local want
  want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$ROOT/requirements-prepare.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $*"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "[setup] pip install $*"
  "$PY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "$want" > "$stamp"
}
pip_install runtime -r "$ROOT/requirements.txt" -r "$ROOT/requirements-prepare.txt" -e "$ROOT"

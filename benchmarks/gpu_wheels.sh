#!/usr/bin/env bash
# Run HERE, on the CPU machine (it reaches PyPI), before a call to the lent GPU machine: downloads
# into .whl/ the wheels that the GPU machine's image lacks and tpm_jax imports (its image has jax,
# flax, optax, orbax-checkpoint, torch, timm and the rest; the device tool's KINDS.md lists them), for
# its Python 3.12 on x86-64, at the versions this machine's .venv runs. Also copies Fashion-MNIST's
# idx files to .data/fashion-mnist/ for `gpu_run.sh train`. Both folders are ignored by git: give
# them to the device tool as carry: [".whl", ".data"]; benchmarks/gpu_run.sh installs the wheels
# (--no-deps, into /tmp/site) before each part.
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# import-time needs of tpm_jax, benchmarks/ and tests/ that the image does not have (with
# tensorflow-datasets' own import-time dependencies); everything else they import is there
BINARY="grain array_record"  # compiled: wheels for CPython 3.12 on manylinux x86-64
PURE="ml_collections tensorflow-datasets tensorflow-metadata googleapis-common-protos immutabledict portpicker
      promise toml importlib_resources"  # pure Python (promise has no wheel on PyPI: built here)
pin() { for p in "$@"; do echo "$p==$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")"; done; }
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --dest .whl --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 $(pin $BINARY)
"$PY" -m pip wheel --quiet --wheel-dir .whl --no-deps $(pin $PURE)
SRC=/usr/share/datasets/fashion-mnist  # Debian's dataset-fashion-mnist: the very files TFDS downloads
if [ -d "$SRC" ]; then
  mkdir -p .data/fashion-mnist && cp "$SRC"/*-ubyte.gz .data/fashion-mnist/ 2>/dev/null || cp -r "$SRC"/. .data/fashion-mnist/
fi
ls -la .whl
du -sh .whl .data 2>/dev/null || true

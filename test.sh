#!/usr/bin/env bash
# Installs the test extras (CPU torch, timm, pytest, ruff) into .venv/, checks the code with ruff
# (pyflakes and import order, pyproject.toml), then runs the whole test suite.
# Extra arguments go to pytest, e.g. `bash test.sh -k parity`.
source "$(dirname "$0")/scripts/venv.sh"
pip_install test -r "$ROOT/requirements-test.txt"
cd "$ROOT"
# The suite starts a few hundred Python processes (train.py, eval.py, the tools): where the environment says not to
# write bytecode (PYTHONDONTWRITEBYTECODE), each compiled the project's modules from source again.
unset PYTHONDONTWRITEBYTECODE
"$PY" -m ruff check --quiet .
exec "$PY" -m pytest -q -n 2 --dist loadgroup tests "$@"

#!/usr/bin/env bash
# Create the project-local .venv and install embed-kd with everything the demo and tests need.
# Idempotent: a second run only checks that the packages are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.embed-kd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing (torch CPU build first, then embed-kd and its test/offline extras)"
  python -m pip install -q --upgrade pip
  # torch first, pinned: an unpinned torch can pull a multi-GB CUDA build.
  python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  python -m pip install -q -e ".[test,offline,serve]"
  touch "$stamp"
fi

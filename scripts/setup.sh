#!/usr/bin/env bash
# Create .venv (Python 3.11), install requirements.txt in one pip call, then the project itself as an editable
# package (pyproject.toml), so every script and test imports it from any folder; idempotent, and a rerun only checks.
# Sourced from the repository root by scripts/demo.sh and scripts/test.sh, so each README command is self-sufficient.
set -euo pipefail
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -x .venv/bin/ruff ] || \
   ! .venv/bin/python -c "import torch, torchvision, timm, transformers, cv2, sklearn, mtcnn, skimage, pytest" 2>/dev/null; then
  .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt
fi
# The editable install builds here, without build isolation (so nothing is resolved or downloaded but setuptools,
# which a Python 3.11 venv ships too old: 65.x).
if ! .venv/bin/python -c "import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split('.')[:2])) < (70, 1))" 2>/dev/null; then
  .venv/bin/pip install --disable-pip-version-check -q "setuptools>=70.1"
fi
# --no-deps: requirements.txt is installed above, and torch must stay the local wheel. Redone when pyproject.toml
# changed or the install points at another checkout (python -P: the current folder does not count).
if ! cmp -s pyproject.toml .venv/.ciec-pyproject.toml || \
   ! .venv/bin/python -P -c "import sys, utils; sys.exit(utils.__file__ != sys.argv[1])" "$PWD/utils/__init__.py" 2>/dev/null; then
  .venv/bin/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
  cp pyproject.toml .venv/.ciec-pyproject.toml
fi
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0

#!/usr/bin/env bash
# Create .venv (Python 3.11) and install requirements.txt in one pip call; idempotent.
# Sourced by scripts/demo.sh and scripts/test.sh, so each README command is self-sufficient.
set -euo pipefail
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision, timm, transformers, cv2, sklearn, mtcnn, skimage, pytest" 2>/dev/null; then
  .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt
fi
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0

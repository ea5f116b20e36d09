#!/usr/bin/env bash
# README command 2 (and CI): install, lint (ruff, configured in pyproject.toml), then run the whole test suite on
# the CPU. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ruff check .
python -m pytest "$@"

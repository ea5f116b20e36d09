#!/usr/bin/env bash
# README command 2 (and CI): install, then run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
python -m pytest "$@"

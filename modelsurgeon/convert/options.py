"""What a user may ask `surgeon convert` for: output formats and dtypes, checked before any
file is read (the dtype rule itself is io/dtype_rules.py, shared with grow)."""

from __future__ import annotations

from pathlib import Path

from modelsurgeon.errors import ConvertError
from modelsurgeon.io.dtype_rules import DTYPE_NAMES, DTYPES, alias_help, canonical_dtype, target_dtype  # noqa: F401 (re-exported)

FORMATS = ("safetensors", "bin", "gguf")


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
    if canonical_dtype(name) not in DTYPES:
        raise ConvertError(f"unknown dtype {name!r}", hint=f"use one of: {alias_help(DTYPES)}")
    return DTYPES[canonical_dtype(name)]

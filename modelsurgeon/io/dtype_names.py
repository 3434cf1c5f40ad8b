"""The dtype names users type, torch-free: long names plus the short aliases other tools accept."""

from __future__ import annotations

# Short spellings (mergekit, vLLM, llama.cpp, accelerate) -> the torch names used everywhere else.
DTYPE_ALIASES = {
    "bf16": "bfloat16", "fp16": "float16", "f16": "float16", "half": "float16",
    "fp32": "float32", "f32": "float32", "float": "float32",
}  # fmt: skip


def canonical_dtype(name: str) -> str:
    """`bf16` -> `bfloat16`, `fp16` -> `float16`, `fp32` -> `float32`; other names unchanged
    (case-insensitive, so the caller's own check can reject what is not a dtype)."""
    key = name.strip().lower()
    return DTYPE_ALIASES.get(key, key)


def alias_help(names) -> str:
    """`float32 (fp32), bfloat16 (bf16)` for the names a command accepts."""
    short = {long: next((a for a, v in DTYPE_ALIASES.items() if v == long), None) for long in names}
    return ", ".join(f"{n} ({short[n]})" if short[n] else n for n in names)

"""Dtypes as users name them (long names plus the short aliases other tools accept) and the rule
shared by `surgeon convert --dtype` and a mergekit config's `dtype:`: floating tensors become
exactly `tensor.to(dtype)`, integer and bool tensors keep theirs. Names and codes only, so
planning a cast never imports torch."""

from __future__ import annotations

# User-facing dtype names -> safetensors dtype codes (the codes OutTensor and TensorInfo use).
DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
DTYPE_NAMES = {code: name for name, code in DTYPES.items()}
# Codes that `tensor.to(dtype)` would convert: every floating type. Integer and bool tensors
# (position ids, masks, quantisation indices) keep their dtype, as they do in torch.
FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def target_dtype(source: str, target: str | None) -> str:
    """The dtype a tensor of dtype `source` is written in when `target` was asked for."""
    return target if target is not None and source in FLOATING else source


def converted_config(config: dict, dtype: str | None) -> dict:
    """config.json with its dtype entry naming the new dtype (unchanged when no dtype was asked)."""
    if dtype is None:
        return dict(config)
    name = DTYPE_NAMES[dtype]
    keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]  # old readers know torch_dtype
    return {**config, **{k: name for k in keys}}


# Short spellings (mergekit, vLLM, llama.cpp, accelerate) -> the torch names used everywhere else.
# hand-laid table: aliases grouped by target dtype (fmt: skip below)
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

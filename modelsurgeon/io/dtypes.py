"""safetensors dtype names <-> torch dtypes (kept apart so that plain copies never import torch)."""

import torch

# hand-laid table: dtypes grouped by kind (fmt: skip below)
TORCH_TO_ST = {
    torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip
ST_TO_TORCH = {v: k for k, v in TORCH_TO_ST.items()}
# Integers of each element size: comparing bit patterns through them is exact and ~3x faster
# than through uint8.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality; values would mislead (-0.0 == 0.0, NaN != NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    bits = _BITS[a.element_size()]
    return torch.equal(a.reshape(-1).view(bits), b.reshape(-1).view(bits))

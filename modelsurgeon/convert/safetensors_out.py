"""Output tensors for safetensors and .bin checkpoints: a new dtype and/or a new shard size.

A tensor whose bytes do not change (same dtype, safetensors input) is copied by the kernel from
its source byte range; every other tensor is produced a block of rows at a time as exactly
`tensor.to(dtype)`, so memory stays bounded by the block size (see io.writer)."""

from __future__ import annotations

from functools import partial

import torch

from modelsurgeon.convert.options import DTYPE_NAMES, target_dtype
from modelsurgeon.convert.source import Source, SourceTensor
from modelsurgeon.errors import CheckpointError, ConvertError, SurgeonError
from modelsurgeon.io.cast import cast_into, fast_cast
from modelsurgeon.io.dtype_rules import converted_config  # noqa: F401 (re-exported)
from modelsurgeon.io.dtypes import ST_TO_TORCH
from modelsurgeon.io.st_format import DTYPE_SIZES
from modelsurgeon.io.writer import OutTensor, all_finite, row_blocks


def _not_finite(name: str, value: torch.Tensor, dtype: str) -> SurgeonError:
    """Say whether a non-finite block came from the input or from the cast overflowing."""
    if value.is_floating_point() and not all_finite(value):
        return CheckpointError(
            f"source tensor '{name}' already holds NaN or inf values",
            hint="the checkpoint is damaged; fix or re-export it before converting",
        )
    peak = float(value.abs().max())
    return ConvertError(
        f"tensor '{name}' overflows {DTYPE_NAMES.get(dtype, dtype)}: its largest magnitude is {peak:.4g}",
        hint="convert to bfloat16 or float32, which have float32's range",
    )


def cast_rows(src: Source, name: str, dtype: str, start: int, stop: int) -> torch.Tensor:
    """Rows start..stop-1 of one source tensor as `tensor.to(dtype)` gives them."""
    cast = src.load(name, (start, stop), ST_TO_TORCH[dtype]).contiguous()
    if cast.is_floating_point() and not all_finite(cast):
        raise _not_finite(name, src.load(name, (start, stop)), dtype)
    return cast


def write_cast(src: Source, t: SourceTensor, dtype: str, fd: int, offset: int) -> None:
    """Write `t` as exactly `tensor.to(dtype)` gives it, cast by io.cast straight from its bytes
    (several times faster than through torch); torch is used only to name what failed."""
    if cast_into(t.info.path, t.info.offset, t.numel, t.dtype, dtype, fd, offset):
        return
    for rows in row_blocks(t.shape):
        cast_rows(src, t.name, dtype, *rows)  # raises for the first block that is not finite
    raise ConvertError(
        f"tensor '{t.name}': the fast cast found non-finite values torch does not",
        hint="this is a bug in modelsurgeon; please report it",
    )


def out_tensor(src: Source, t: SourceTensor, dtype: str | None, copy_bytes: bool = True) -> OutTensor:
    """The output tensor for `t` in dtype `dtype` (None: keep); a byte copy where possible."""
    out = target_dtype(t.dtype, dtype)
    nbytes = t.numel * DTYPE_SIZES[out]
    if copy_bytes and out == t.dtype and t.info is not None:
        return OutTensor(t.name, out, t.shape, nbytes, source=t.info)
    if copy_bytes and t.info is not None and fast_cast(t.dtype, out):
        return OutTensor(t.name, out, t.shape, nbytes, write=partial(write_cast, src, t, out))
    return OutTensor(t.name, out, t.shape, nbytes, compute=partial(cast_rows, src, t.name, out))


def out_tensors(src: Source, dtype: str | None, copy_bytes: bool = True) -> list[OutTensor]:
    """Every source tensor, in source order; `copy_bytes=False` for writers that need values."""
    return [out_tensor(src, t, dtype, copy_bytes) for t in src.tensors.values()]

"""A grown checkpoint written in one dtype (a mergekit config's `dtype:`), by the rule
`surgeon convert --dtype` uses: floating tensors become exactly `tensor.to(dtype)`, integer and
bool tensors keep theirs. Tensors are still produced a block of rows at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from modelsurgeon.errors import PlanError
from modelsurgeon.io.dtype_rules import DTYPE_NAMES, DTYPES, converted_config, target_dtype
from modelsurgeon.io.st_format import DTYPE_SIZES
from modelsurgeon.io.writer import OutTensor, all_finite

if TYPE_CHECKING:
    import torch

Load = Callable[[str, tuple[int, int] | None], "torch.Tensor"]  # (source name, rows) -> tensor


def _rows(t: OutTensor, load: Load, dtype: str, origin: str, start: int, stop: int) -> torch.Tensor:
    value = t.compute(start, stop) if t.compute is not None else load(t.source.name, (start, stop) if t.shape else None)
    from modelsurgeon.io.dtypes import ST_TO_TORCH  # imports torch: only once a tensor is cast

    cast = value.to(ST_TO_TORCH[dtype])
    if cast.is_floating_point() and not all_finite(cast) and all_finite(value):
        peak = float(value.abs().max())
        problem = f"dtype: tensor '{t.name}' overflows {DTYPE_NAMES[dtype]} (largest magnitude {peak:.4g})"
        raise PlanError(origin, [problem], hint="use bfloat16 or float32, which have float32's range")
    return cast


def cast_tensors(tensors: list[OutTensor], dtype: str, load: Load, origin: str) -> list[OutTensor]:
    """`tensors` written as `dtype` (a name: float32, bfloat16, float16); unchanged ones stay byte copies."""
    code = DTYPES[dtype]
    out = []
    for t in tensors:
        new = target_dtype(t.dtype, code)
        if new == t.dtype:
            out.append(t)
            continue
        nbytes = DTYPE_SIZES[new] * t.numel
        out.append(replace(t, dtype=new, nbytes=nbytes, source=None, compute=partial(_rows, t, load, new, origin)))
    return out


def cast_output(
    tensors: list[OutTensor], config: dict, dtype: str, load: Load, origin: str
) -> tuple[list[OutTensor], dict]:
    """The tensors and config.json of an output written as `dtype`."""
    return cast_tensors(tensors, dtype, load, origin), converted_config(config, DTYPES[dtype])

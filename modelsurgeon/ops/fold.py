"""Fold a residual-branch scale into the tensor that carries the branch's output. Shared by
depth growth (branch_scale, new: zero) and width growth (tied-embedding compensation)."""

from __future__ import annotations

import torch


def fold_branch_scale(tensor: torch.Tensor, fold: str, is_bias: bool, scale: float) -> torch.Tensor:
    """Fold x + s*F(x) into the tensor that carries F's output, in float32, cast back.

    multiply/gain: the output is linear in the tensor, so multiply it (weight and bias).
    offset_gain: Gemma norms compute n(x) * (1 + w): w' = s(1 + w) - 1 gives s * n(x) * (1 + w)."""
    x = tensor.to(torch.float32)
    y = scale * (1.0 + x) - 1.0 if fold == "offset_gain" and not is_bias else scale * x
    return y.to(tensor.dtype)


def apply_folds(x: torch.Tensor, folds: tuple[tuple[str, float], ...], is_bias: bool) -> torch.Tensor:
    """Each (fold rule, scale) in turn; elementwise, so any block of rows folds alone."""
    for fold, scale in folds:
        x = fold_branch_scale(x, fold, is_bias, scale)
    return x


def folded_rows(
    folds: tuple[tuple[str, float], ...], load, is_bias: bool, dtype: torch.dtype, start: int, stop: int
) -> torch.Tensor:
    """Rows start..stop-1 of a tensor whose only change is its folds; `load(a, b)` reads source
    rows a..b-1. Computed in float32, cast to `dtype`."""
    return apply_folds(load(start, stop).to(torch.float32), folds, is_bias).to(dtype)

"""Fold a residual-branch scale into the tensor that carries the branch's output."""

from __future__ import annotations

import torch


def fold_branch_scale(tensor: torch.Tensor, fold: str, is_bias: bool, scale: float) -> torch.Tensor:
    """Fold x + s*F(x) into the tensor that carries F's output, in float32, cast back.

    multiply/gain: the output is linear in the tensor, so multiply it (weight and bias).
    offset_gain: Gemma norms compute n(x) * (1 + w): w' = s(1 + w) - 1 gives s * n(x) * (1 + w)."""
    x = tensor.to(torch.float32)
    y = scale * (1.0 + x) - 1.0 if fold == "offset_gain" and not is_bias else scale * x
    return y.to(tensor.dtype)

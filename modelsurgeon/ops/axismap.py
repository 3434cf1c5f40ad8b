"""Axis maps for width growth: for each output position along one tensor axis, the source
position it copies and the divisor that splits a replicated input (Net2WiderNet/HyperCloning).

A linear layer whose input units were replicated keeps its output if each replica's incoming
weight is divided by its divisor (the divisors of one source's replicas sum back to 1/1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AxisMap:
    idx: torch.Tensor  # (n_out,) int64: source position of each output position
    div: torch.Tensor  # (n_out,) float32: divisor applied when this axis is an input split

    @property
    def size(self) -> int:
        return int(self.idx.numel())

    @property
    def is_identity(self) -> bool:
        return torch.equal(self.idx, torch.arange(self.size)) and bool((self.div == 1).all())


def identity(n: int) -> AxisMap:
    return AxisMap(torch.arange(n), torch.ones(n))


def replicate(n: int, target: int) -> AxisMap:
    """Units 0..n-1 kept, extra units copy unit j mod n (round-robin, so replica counts differ
    by at most one); each position's divisor is its source's replica count."""
    idx = torch.arange(target) % n
    counts = torch.bincount(idx, minlength=n).to(torch.float32)
    return AxisMap(idx, counts[idx])


def blocks(m: AxisMap, block: int) -> AxisMap:
    """Expand a map over heads into a map over the heads' elements (head_dim each)."""
    offsets = torch.arange(block)
    return AxisMap((m.idx[:, None] * block + offsets).reshape(-1), m.div.repeat_interleave(block))


def concat(parts: list[tuple[AxisMap, int]]) -> AxisMap:
    """Fused layouts (q|k|v, gate|up): segment maps side by side; ints are the source sizes."""
    idx, div, offset = [], [], 0
    for m, src_size in parts:
        idx.append(m.idx + offset)
        div.append(m.div)
        offset += src_size
    return AxisMap(torch.cat(idx), torch.cat(div))


def compose(first: AxisMap, then: AxisMap) -> AxisMap:
    """`then` maps positions of `first`'s output: chain the sources, multiply the divisors."""
    return AxisMap(first.idx[then.idx], first.div[then.idx] * then.div)


def gather(x: torch.Tensor, dim: int, m: AxisMap, split: bool) -> torch.Tensor:
    """Copy positions along `dim`; divide by the replica divisor when the axis is an input split."""
    out = x.index_select(dim, m.idx)
    if split:
        shape = [1] * x.dim()
        shape[dim] = -1
        out = out / m.div.view(shape)
    return out


def cancelling_noise(shape: tuple[int, ...], dim: int, m: AxisMap, std: float, gen: torch.Generator) -> torch.Tensor:
    """Noise along an input-split axis whose replicas of one source sum to zero, so for
    replicated inputs x the layer's output is unchanged (HyperCloning's +N/-N twins)."""
    z = torch.randn(shape, generator=gen)
    z = z.movedim(dim, -1)
    n_src = int(m.idx.max()) + 1
    counts = torch.bincount(m.idx, minlength=n_src).to(z.dtype)
    means = torch.zeros(*z.shape[:-1], n_src).index_add_(-1, m.idx, z) / counts
    z = z - means.index_select(-1, m.idx)
    return (z * std).movedim(-1, dim)

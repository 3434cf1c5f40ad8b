"""Tensor math of expert growth: new routers, Drop-Upcycling and per-expert noise. Each function
makes one whole tensor (at most one FFN matrix in memory) from a seed and the tensor's name,
so the output does not depend on how the writer splits it into row blocks."""

from __future__ import annotations

import zlib

import torch

from modelsurgeon.plan.schema import DropSpec, ExpertNoise, RouterInit


def generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))


def router_weight(init: RouterInit, shape: tuple[int, int], dtype: torch.dtype, key: str) -> torch.Tensor:
    """(experts, hidden) router rows. zero: uniform routing (ties broken by expert index)."""
    if init.init == "zero":
        return torch.zeros(shape, dtype=dtype)
    g = generator(init.seed, key)
    if init.init == "normal":
        return (torch.randn(shape, generator=g) * init.std).to(dtype)
    w = torch.empty(shape, dtype=torch.float32)
    torch.nn.init.orthogonal_(w, generator=g)  # rows orthonormal: experts see distinct directions
    return w.to(dtype)


def dropped_units(drop: DropSpec, units: int, expert_key: str) -> torch.Tensor:
    """The FFN units expert `expert_key` re-initialises: exactly round(fraction * units) of
    them, the same for its gate, up and down tensors, independent between experts."""
    n = round(drop.fraction * units)
    return torch.randperm(units, generator=generator(drop.seed, expert_key))[:n]


def drop_upcycle(x: torch.Tensor, role: str, drop: DropSpec, expert_key: str, key: str) -> torch.Tensor:
    """Re-initialise the dropped units (rows of gate/up, columns of down) from N(mean, std) of
    the original weight, as in Drop-Upcycling; every other unit keeps the dense FFN's values."""
    dim = 1 if role == "down" else 0
    idx = dropped_units(drop, x.shape[dim], expert_key)
    w = x.to(torch.float32)
    mean, std = w.mean(), w.std()
    shape = (w.shape[0], len(idx)) if dim == 1 else (len(idx), w.shape[1])
    fresh = torch.randn(shape, generator=generator(drop.seed, key)) * std + mean
    w = w.clone()
    w.index_copy_(dim, idx, fresh)
    return w.to(x.dtype)


def add_noise(x: torch.Tensor, noise: ExpertNoise, key: str) -> torch.Tensor:
    w = x.to(torch.float32)
    return (w + torch.randn(w.shape, generator=generator(noise.seed, key)) * noise.std).to(x.dtype)


def repeat_rows(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Router rows for copied experts: out row e*factor + c is source row e."""
    return x.repeat_interleave(factor, dim=0)

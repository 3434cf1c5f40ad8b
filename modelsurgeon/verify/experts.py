"""Tensor-level checks of exact expert growth: every expert of an upcycled layer is the source
FFN, every copied expert and router row is its source's. A logit check says that something
moved; this one names the layer and the expert."""

from __future__ import annotations

import torch

from modelsurgeon.verify.claims import Structure


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.to(torch.float32) - b.to(torch.float32)).abs().max().item()


def _same(got: torch.Tensor, want: torch.Tensor, role: str, halved: bool) -> bool:
    # Qwen2-MoE's routed experts carry half the FFN (the shared expert the other half).
    want = (want.to(torch.float32) * 0.5).to(want.dtype) if halved and role == "down" else want
    return got.shape == want.shape and torch.equal(got, want)


def _source_tensor(source: Structure, s: int, suffix: str, e: int, role: str, factor: int | None) -> str | None:
    layer = source.layout.layers[s]
    if factor is None:  # upcycled: the dense FFN tensor of the same role
        return next(
            (n for sfx, n in layer.items() if source.spec.role_of(sfx) == role and sfx.endswith(".weight")), None
        )
    moe = source.spec.moe
    inner = suffix[len(moe.expert_module(e, "")) :]
    return layer.get(moe.expert_module(e // factor, inner))


def _router_problems(source: Structure, grown: Structure, j: int, s: int, factor: int) -> list[str]:
    name = f"{grown.spec.moe.router}.weight"
    got = grown.ckpt.load(grown.layout.layers[j][name])
    want = source.ckpt.load(source.layout.layers[s][name]).repeat_interleave(factor, dim=0)
    bad = [r for r in range(min(len(got), len(want))) if not torch.equal(got[r], want[r])]
    return [
        f"grown layer {j} router: the row of expert {r} differs from source layer {s} expert {r // factor}'s row "
        f"(max |diff| {_max_diff(got[r], want[r]):.3g}); copied experts need copied router rows"
        for r in bad
    ]


def expert_problems(
    source: Structure, grown: Structure, layer_map: list[tuple[int, float]] | None, equivalence: str
) -> list[str]:
    """Experts (and router rows) an exact growth should have copied but did not."""
    moe = grown.spec.moe
    if moe is None or equivalence != "exact" or not layer_map or len(layer_map) != grown.num_layers:
        return []
    factor = None
    if source.spec.moe is not None:
        n_in = source.ckpt.config[source.spec.moe.experts_key(source.ckpt.config)]
        factor = grown.ckpt.config[moe.experts_key(grown.ckpt.config)] // n_in
    halved = factor is None and bool(moe.shared)
    problems = []
    for j, (s, scale) in enumerate(layer_map):
        if scale != 1.0:  # a scaled branch changes the down projections on purpose
            continue
        for suffix, name in sorted(grown.layout.layers[j].items()):
            found = moe.expert_role(suffix.rsplit(".", 1)[0])
            if found is None:
                continue
            e, role = found
            src = _source_tensor(source, s, suffix, e, role, factor)
            got = grown.ckpt.load(name)
            want = source.ckpt.load(src) if src else None
            if want is None or not _same(got, want, role, halved):
                diff = (
                    f"max |diff| {_max_diff(got, want):.3g}"
                    if want is not None and got.shape == want.shape
                    else "shape"
                )
                problems.append(f"grown layer {j} expert {e}: {suffix} differs from source layer {s} '{src}' ({diff})")
        if factor and f"{moe.router}.weight" in grown.layout.layers[j]:
            problems += _router_problems(source, grown, j, s, factor)
    return problems

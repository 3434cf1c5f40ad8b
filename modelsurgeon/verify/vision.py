"""Tensor-level check of a grown vision-language model's vision side: every op byte-copies the
vision tower, and the projector too unless a widening of the text tower changed its shape.
Verify's prompts are text-only, so they never run these tensors; this check reads them instead
and names the tensor that moved."""

from __future__ import annotations

from modelsurgeon.arch.vlm import PROJECTOR_ROLES
from modelsurgeon.verify.claims import Structure
from modelsurgeon.verify.report import Check

VISION_ROLES = {"vision", *PROJECTOR_ROLES.values()}


def _problem(source: Structure, grown: Structure, name: str) -> str | None:
    src = source.ckpt.tensors.get(name)
    if src is None:
        return f"{name} is not in SOURCE"
    out = grown.ckpt.tensors[name]
    if tuple(src.shape) != tuple(out.shape):
        # A widened text tower widens the projector's output side (checked by the logits of
        # image prompts in tests/test_vlm.py, not here); the vision tower never changes shape.
        role = grown.spec.global_role(name)
        return None if role != "vision" else f"{name} has shape {list(out.shape)}, SOURCE {list(src.shape)}"
    import torch  # lazy: this module's header-only paths (shapes, names) need no torch

    a, b = source.ckpt.load(name), grown.ckpt.load(name)
    if a.dtype != b.dtype:  # a converted checkpoint: compare values at GROWN's dtype
        a = a.to(b.dtype)
    if torch.equal(a, b):
        return None
    diff = (a.float() - b.float()).abs().max().item()
    return f"{name} differs from SOURCE's (max |diff| {diff:.3g})"


def vision_problems(source: Structure, grown: Structure) -> list[str]:
    """Vision-tower and projector tensors of GROWN that are not SOURCE's, or missing from GROWN."""
    names = [n for n in grown.layout.others if grown.spec.global_role(n) in VISION_ROLES]
    problems = [p for n in sorted(names) if (p := _problem(source, grown, n)) is not None]
    lost = sorted(
        n for n in source.layout.others if source.spec.global_role(n) in VISION_ROLES and n not in grown.ckpt.tensors
    )
    return problems + [f"{n} is missing from GROWN" for n in lost]


def vision_check(source: Structure, grown: Structure, gating: bool) -> Check:
    problems = vision_problems(source, grown)
    return Check(
        "vision tower and projector copied",
        not problems,
        "yes" if not problems else f"{len(problems)} tensor(s) differ",
        "SOURCE's bytes (a widened projector excepted)",
        gating,
        "; ".join(problems)[:500],
    )

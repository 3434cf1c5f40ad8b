"""Compare a grown model's next-token distributions with its source's on a few prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_PROMPTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "The derivative of x^2 + 3x with respect to x is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
)


@dataclass(frozen=True)
class LogitsReport:
    max_abs: float  # max |logit difference| over all positions and vocabulary entries
    mean_kl: float  # KL(source || grown) in nats per token
    top1: float  # fraction of positions where the argmax token agrees
    positions: int


def _load(path: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def compare_logits(source: Path, grown: Path, prompts: tuple[str, ...] = DEFAULT_PROMPTS) -> LogitsReport:
    """Run both models (float32, CPU) on each prompt, one model at a time in memory."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    batches = [tok(p, return_tensors="pt")["input_ids"] for p in prompts]
    outs = []
    for path in (source, grown):
        model = _load(path)
        outs.append([model(input_ids=ids, use_cache=False).logits[0].float() for ids in batches])
        del model
    a, b = torch.cat(outs[0]), torch.cat(outs[1])
    logp, logq = a.log_softmax(-1), b.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return LogitsReport(
        max_abs=(a - b).abs().max().item(),
        mean_kl=kl.mean().item(),
        top1=(a.argmax(-1) == b.argmax(-1)).float().mean().item(),
        positions=a.shape[0],
    )

"""What a recipe measures besides the losses train-stage logs: per-decoder-layer gradient norms
during training (the seed's "gradient deterioration" concern) and, after each train stage,
exact-match accuracy by chain length on held-out `synthetic:arith` problems (scored in evals.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class ArithEval(BaseModel):
    """`eval: {arith: {...}}`: eval problems for k in [min_k, max_k] (train on k <= K, eval to 2K)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_k: int = Field(1, ge=1)
    max_k: int = Field(8, ge=1, le=25)
    per_k: int = Field(50, ge=1)
    seed: int = 0
    max_new_tokens: int = Field(4, ge=1)  # answers are 0..99: two digits, then EOS


def grad_norm_callback(path: Path, layer_prefix: str):
    """A TrainerCallback writing, every logging step, the L2 norm of each decoder layer's trainable
    gradients (LoRA adapters for LoRA stages) to `path` as JSON lines {step, norms: [...]}.

    on_pre_optimizer_step runs after gradient clipping: clipping scales every layer by the same
    factor, so the profile across layers is unchanged, and the totals are what the optimizer used."""
    from transformers import TrainerCallback

    pattern = re.compile(re.escape(layer_prefix) + r"(\d+)\.")

    class GradNormCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            # a resumed stage restarts at its last checkpoint: drop rows the interrupted run logged after it
            kept = [r for r in read_jsonl(path) if r["step"] <= state.global_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            step = state.global_step + 1  # the step this update completes
            if model is None or (step % args.logging_steps and step != 1):
                return
            sums: dict[int, float] = {}
            for name, p in model.named_parameters():
                m = pattern.search(name)
                if m and p.requires_grad and p.grad is not None:
                    sums[int(m.group(1))] = sums.get(int(m.group(1)), 0.0) + float(p.grad.detach().float().pow(2).sum())
            if sums:
                norms = [math.sqrt(sums.get(i, 0.0)) for i in range(max(sums) + 1)]
                with path.open("a") as fh:
                    fh.write(json.dumps({"step": step, "norms": norms}) + "\n")

    return GradNormCallback()


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

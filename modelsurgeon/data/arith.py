"""`synthetic:arith`: variable-chain arithmetic whose chain length k is a knob, for training and eval.

A problem of chain length k assigns a start value, then applies k operations, each reading the
previous variable, and asks for the last one:

    "q=3; x=q+4; m=x*2; m=?"   answer "14"   (k = 2)

Variable names are distinct random letters, so the query cannot be answered by position alone.
Every value stays an integer in 0..99: the start is 0..9, operands are 1..9 (2..9 for `*`), and
an operation is only drawn when its result stays in range (so no modulo wraps the arithmetic).
The prompt ends right after "?" with no space, so a BPE tokenizer splits prompt and answer at the
same place in training text (`prompt + answer`) and at evaluation (prompt alone).

Train and eval problems are disjoint by construction, not by luck of the seeds: a stable hash of
a problem's structure (start, operations and operands; the letters removed) reserves one
structure in `EVAL_SHARE` for evaluation. `generate` never returns those and `eval_set` returns
nothing else, so renaming variables cannot turn a training problem into an eval problem.
"""

from __future__ import annotations

import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelsurgeon.data.chartok import char_tokenizer
from modelsurgeon.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

LETTERS = "abcdefghijklmnopqrstuvwxyz"
CHARSET = "0123456789" + LETTERS + "=;+-*? "
MAX_VALUE = 99
MAX_K = len(LETTERS) - 1  # k operations need k + 1 distinct variable names
EVAL_SHARE = 10


@dataclass(frozen=True)
class ArithProblem:
    prompt: str  # "a=3; b=a+4; b=?"
    answer: str  # "7"
    k: int  # number of operations in the chain

    @property
    def text(self) -> str:
        """The training document; packing appends EOS after it."""
        return self.prompt + self.answer


def check_arith_options(source: str, n: int, min_k: int, max_k: int, seed: int) -> None:
    """Raise DataError unless 1 <= n and 1 <= min_k <= max_k <= MAX_K (`seed` is free)."""
    if n < 1:
        raise DataError(f"{source}: n={n} problems; need at least 1", hint="e.g. n=2000")
    if not 1 <= min_k <= max_k <= MAX_K:
        raise DataError(
            f"{source}: chain lengths min_k={min_k}, max_k={max_k} are not within 1 <= min_k <= max_k <= {MAX_K}",
            hint=f"k counts operations and each needs its own letter, so at most {MAX_K}",
        )


def _step(rng: random.Random, value: int) -> tuple[str, int, int]:
    """One operation (op, operand, result) whose result stays within 0..MAX_VALUE."""
    choices = {
        "+": [c for c in range(1, 10) if value + c <= MAX_VALUE],
        "-": [c for c in range(1, 10) if c <= value],
        "*": [c for c in range(2, 10) if value * c <= MAX_VALUE] if value > 0 else [],
    }
    op = rng.choice([name for name, operands in choices.items() if operands])
    operand = rng.choice(choices[op])
    result = {"+": value + operand, "-": value - operand, "*": value * operand}[op]
    return op, operand, result


def make_problem(rng: random.Random, k: int) -> ArithProblem:
    """A random chain of `k` operations; either partition (see the module docstring)."""
    names = rng.sample(LETTERS, k + 1)
    value = rng.randint(0, 9)
    parts = [f"{names[0]}={value}"]
    for prev, name in zip(names, names[1:]):
        op, operand, value = _step(rng, value)
        parts.append(f"{name}={prev}{op}{operand}")
    return ArithProblem("; ".join(parts) + f"; {names[-1]}=?", str(value), k)


def is_eval_problem(problem: ArithProblem) -> bool:
    """Whether the problem's structure is reserved for evaluation (stable across runs and machines)."""
    structure = re.sub(f"[{LETTERS}]", "", problem.prompt)
    return zlib.crc32(structure.encode()) % EVAL_SHARE == 0


def _draw(rng: random.Random, k: int, for_eval: bool) -> ArithProblem:
    while True:  # about EVAL_SHARE tries per eval problem, about 1.1 per train problem
        problem = make_problem(rng, k)
        if is_eval_problem(problem) == for_eval:
            return problem


def generate(n: int, min_k: int, max_k: int, seed: int) -> list[ArithProblem]:
    """`n` training problems, k uniform over [min_k, max_k]; same arguments, same problems."""
    check_arith_options("synthetic:arith", n, min_k, max_k, seed)
    rng = random.Random(f"arith-train:{seed}")
    return [_draw(rng, rng.randint(min_k, max_k), for_eval=False) for _ in range(n)]


def eval_set(ks: list[int], per_k: int, seed: int) -> list[ArithProblem]:
    """`per_k` distinct eval problems for each k in `ks`, never among any `generate` output."""
    problems: list[ArithProblem] = []
    rng = random.Random(f"arith-eval:{seed}")
    for k in ks:
        check_arith_options("synthetic:arith eval", per_k, k, k, seed)
        seen: set[str] = set()
        for _ in range(per_k * EVAL_SHARE * 100):  # a bound, in case k has few distinct problems
            problem = _draw(rng, k, for_eval=True)
            if problem.prompt not in seen:
                seen.add(problem.prompt)
                problems.append(problem)
            if len(seen) == per_k:
                break
        if len(seen) < per_k:
            raise DataError(
                f"synthetic:arith eval: found only {len(seen)} distinct problems with k={k}",
                hint="ask for fewer problems per chain length",
            )
    return problems


def arith_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over CHARSET with <pad> <s> </s> <unk> at ids 0-3 (47 tokens)."""
    return char_tokenizer(CHARSET)


def _reply(text: str) -> str:
    """The answer part of a continuation: up to the first ';' or newline, stripped."""
    return re.split(r"[;\n]", text, maxsplit=1)[0].strip()


def left_padded(tokenizer, rows: list[list[int]]):
    """(input_ids, attention_mask, width, pad) of token rows padded on the left, so that every
    row's continuation starts at column `width` of a batched generate."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, width, pad


def greedy_replies(model, tokenizer, prompts: list[str], max_new_tokens: int = 8) -> list[str]:
    """Greedy continuations of `prompts` in one left-padded batch, each cut at EOS, ';' or newline.

    Each prompt is preceded by EOS, because in packed training data every document follows the
    previous one's EOS; the model sees the same context at evaluation.
    """
    eos = tokenizer.eos_token_id
    rows = [[eos, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in prompts]
    ids, mask, width, pad = left_padded(tokenizer, rows)
    device = getattr(model, "device", None)
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    replies = []
    for row in out[:, width:].tolist():
        row = row[: row.index(eos)] if eos in row else row
        replies.append(_reply(tokenizer.decode(row, skip_special_tokens=True)))
    return replies


def answer_nll(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 50) -> list[float]:
    """Teacher-forced mean negative log-likelihood (nats per token) of each answer and its closing
    EOS after EOS + prompt, the context of packed training data. A graded score where exact match
    sits at the floor: it moves long before the first whole answer is right."""
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = getattr(model, "device", None)
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            heads = [
                [eos, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in prompts[start : start + batch_size]
            ]
            tails = [
                [*tokenizer(a, add_special_tokens=False)["input_ids"], eos] for a in answers[start : start + batch_size]
            ]
            rows = [h + t for h, t in zip(heads, tails)]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # right padding: causal, ignored
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            labels = torch.full_like(ids, -100)
            for i, (h, t) in enumerate(zip(heads, tails)):
                labels[i, len(h) : len(h) + len(t)] = ids[i, len(h) : len(h) + len(t)]
            if device is not None:
                ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
            out.extend((nll.sum(1) / (target != -100).sum(1)).tolist())
    return out


def exact_match_by_k(
    model, tokenizer, problems: list[ArithProblem], max_new_tokens: int = 8, batch_size: int = 32
) -> dict[int, float]:
    """Greedy exact-match accuracy per chain length k (sorted by k), on CPU or the model's device."""
    import torch

    total = Counter(p.k for p in problems)
    correct: Counter[int] = Counter()
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()  # dropout off: greedy decoding must be deterministic
    try:
        with torch.no_grad():
            for start in range(0, len(problems), batch_size):
                batch = problems[start : start + batch_size]
                replies = greedy_replies(model, tokenizer, [p.prompt for p in batch], max_new_tokens)
                correct.update(p.k for p, reply in zip(batch, replies) if reply == p.answer)
    finally:
        if was_training:
            model.train()
    return {k: correct[k] / total[k] for k in sorted(total)}

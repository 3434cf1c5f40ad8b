"""Exact match on held-out math word problems with numeric answers (`eval: {word_problems: {...}}`),
for a pretrained start model continued on math text (the handbook's chapter 5).

The problems are a local JSON-lines file, one `{"id", "question", "answer"}` per line (answer: a
number as text, e.g. GSM8K's `#### 18`), such as the 100 GSM8K test originals that
scripts/make_handbook_data.py writes. The prompt is `Question: <question>\\nAnswer:`, the format
of the handbook's training text; greedy decoding stops at EOS, at a blank line or once a
`#### <number>` line is complete. The reply's answer is the number after the last `####`, else its
last number; it is correct when it equals the answer as a number (commas and a trailing `.0` do
not matter)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelsurgeon.data.arith import left_padded
from modelsurgeon.errors import DataError

BENCH = "word_problems"
TEST_SET = "heldout"
PROMPT = "Question: {question}\nAnswer:"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FINAL = re.compile(r"####\s*(-?\d[\d,]*(?:\.\d+)?)")


class WordProblemEval(BaseModel):
    """`eval: {word_problems: {path: FILE.jsonl, limit: N, max_new_tokens: 160, batch_size: 10}}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    limit: int | None = Field(None, ge=1)  # the first N problems only (a cheap eval)
    max_new_tokens: int = Field(160, ge=1)
    batch_size: int = Field(10, ge=1)

    @field_validator("path")
    @classmethod
    def _jsonl(cls, path: str) -> str:
        if not path.endswith(".jsonl"):
            raise ValueError(f"word_problems.path {path!r} must be a .jsonl file of {{id, question, answer}} lines")
        return path


def read_problems(spec: WordProblemEval) -> list[dict]:
    """The problems, in file order (the first `limit`); a clear error names a bad line."""

    path = Path(spec.path)
    if not path.is_file():
        raise DataError(
            f"word problems file {path} not found", hint="build it with: python scripts/make_handbook_data.py --out DIR"
        )
    problems = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not {"id", "question", "answer"} <= set(row) or numeric(str(row["answer"])) is None:
            raise DataError(
                f"{path}:{n}: expected {{id, question, answer}} with a numeric answer, got keys {sorted(row)}",
                hint='one JSON object per line, e.g. {"id": "gsm-0", "question": "...", "answer": "18"}',
            )
        problems.append(row)
    return problems[: spec.limit] if spec.limit else problems


def numeric(text: str) -> float | None:
    """The number a string states (commas dropped), or None."""
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def extract_answer(reply: str) -> str | None:
    """The number after the last `####`, else the reply's last number."""
    final = _FINAL.findall(reply)
    found = final or _NUMBER.findall(reply)
    return found[-1].rstrip(".") if found else None


def is_correct(reply: str, answer: str) -> bool:
    got, want = extract_answer(reply), numeric(str(answer))
    return got is not None and want is not None and numeric(got) == want


def _finished(text: str) -> bool:
    """A reply is complete at a blank line or a finished `#### N` line."""
    return "\n\n" in text or re.search(r"####\s*-?\d[\d,.]*\s*\n", text) is not None


def _stopper(tokenizer, width: int):
    """Stops generation per row once its reply is finished (so a batch ends with its longest reply)."""
    import torch
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, width:], skip_special_tokens=True)
            return torch.tensor([_finished(t) for t in texts], device=input_ids.device)

    return _Stop()


def _replies(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    import torch
    from transformers import StoppingCriteriaList

    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    ids, mask, width, pad = left_padded(tokenizer, rows)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([_stopper(tokenizer, width)]),
        )
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [t.split("\n\n", 1)[0].strip() for t in texts]


def word_problem_rows(model, tokenizer, spec: WordProblemEval) -> list[dict]:
    """One eval_problems.jsonl row per problem (bench word_problems, set heldout)."""
    problems = read_problems(spec)
    rows = []
    for start in range(0, len(problems), spec.batch_size):
        batch = problems[start : start + spec.batch_size]
        prompts = [PROMPT.format(question=p["question"].strip()) for p in batch]
        for p, reply in zip(batch, _replies(model, tokenizer, prompts, spec.max_new_tokens)):
            rows.append(
                {
                    "bench": BENCH,
                    "set": TEST_SET,
                    "id": str(p["id"]),
                    "answer": str(p["answer"]),
                    "reply": reply,
                    "length": None,
                    "module": None,
                    "correct": int(is_correct(reply, p["answer"])),
                }
            )
    return rows

"""The prompts a verification runs: a small built-in set, or a user's file; tokenized once with
the source's tokenizer so both models (and vLLM) see the same token ids."""

from __future__ import annotations

import json
from pathlib import Path

from modelsurgeon.errors import VerifyError

# Varied on purpose (prose arithmetic, calculus notation, code), so a broken layer has several
# kinds of context in which to show itself.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "The derivative of x^2 + 3x with respect to x is 2x + 3, and the integral of 2x dx is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
)
MIN_TOKENS = 2  # perplexity and next-token metrics need at least one predicted position


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line, or JSONL with a "text" field per line (chosen per file by whether
    its first non-empty line parses as a JSON object). Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise VerifyError(
            f"{path}: no such prompts file", hint="pass a text file (one prompt per line) or JSONL with a 'text' field"
        )
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise VerifyError(f"{path}: no prompts in the file", hint="write one prompt per line")
    if not lines[0].lstrip().startswith("{"):
        return [ln.replace("\\n", "\n") for ln in lines]  # a literal \n lets code prompts span lines
    prompts = []
    for n, line in enumerate(lines, 1):
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise VerifyError(
                f"{path}:{n}: not a JSON object with a 'text' field", hint='write lines like {"text": "..."}'
            ) from None
        if not isinstance(text, str) or not text:
            raise VerifyError(f"{path}:{n}: 'text' must be a non-empty string")
        prompts.append(text)
    return prompts


def _tokenizer(source: Path, grown: Path):
    from transformers import AutoTokenizer

    for path in (source, grown):  # the grown copy carries the source's tokenizer files too
        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            continue
    raise VerifyError(
        f"no tokenizer in {source} or {grown}",
        hint="copy the source model's tokenizer files (tokenizer.json, tokenizer_config.json) into SOURCE",
    )


def tokenize(source: Path, grown: Path, prompts: list[str], max_len: int) -> list[list[int]]:
    """Token ids per prompt, cut to `max_len` so prompt + continuation fit the model's positions."""
    tok = _tokenizer(source, grown)
    ids = [tok(p)["input_ids"][:max_len] for p in prompts]
    short = [i for i, t in enumerate(ids) if len(t) < MIN_TOKENS]
    if short:
        raise VerifyError(f"prompt(s) {short} tokenize to fewer than {MIN_TOKENS} tokens", hint="use longer prompts")
    return ids

"""Mix sources by weight, tokenize, hold out whole documents for eval, and pack into fixed blocks.

Every document is tokenized on its own (no special tokens added, and special-token strings in
the text are split like ordinary text), followed by the tokenizer's EOS, then the documents are
concatenated and cut into `seq_len` blocks; the final partial block is dropped. Eval blocks come
only from held-out documents, so no eval token was seen in training.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelsurgeon.data.sources import SourceStream
from modelsurgeon.data.spec import DataSpec
from modelsurgeon.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import torch

TOKENIZE_BATCH = 256  # documents per tokenizer call: fast tokenizers batch in Rust


@dataclass(frozen=True)
class PackedData:
    train: torch.LongTensor  # [N, seq_len] token ids, documents packed with EOS between them
    eval: torch.LongTensor  # [M, seq_len], from held-out documents only
    seq_len: int
    stats: dict  # per source: docs, tokens, text rule; totals (JSON-ready)


def build_blocks(
    specs: list[DataSpec],
    tokenizer,
    seq_len: int,
    *,
    max_tokens: int | None = None,
    eval_fraction: float = 0.05,
    seed: int = 0,
    text_field: str | None = None,
    max_positions: int | None = None,
    eval_tokens: int | None = None,
    skip_docs: int = 0,
) -> PackedData:
    """Read, mix, tokenize and pack `specs` into train and eval blocks of `seq_len` tokens.

    Documents are drawn from the sources at random in proportion to their weights (per document,
    deterministic from `seed`) until `max_tokens` tokens are read, the last document being cut to
    fit, or until every source is exhausted. Without `max_tokens`, every document of every source
    is used and the weights only set the interleaving. A directory's files are read one after
    the other in sorted order, so a budget may stop before the last files. Eval holds out whole
    documents, chosen from `seed`, totalling about `eval_fraction` of the tokens and at least one
    block.

    With `eval_tokens`, the held-out documents no longer depend on the budget: each document of
    the (seeded) stream is marked for eval or not by its position alone (about `eval_fraction`
    of them), the first marked ones up to `eval_tokens` are the eval set and the others are never
    trained on; training takes the unmarked ones up to `max_tokens - eval_tokens`. Runs with
    different budgets and the same seed and data then score the very same documents, which is
    what comparing their eval losses needs. `skip_docs` (with `eval_tokens`) passes over the first
    documents of the stream for training, so a later stage continues where an earlier one stopped;
    the eval set stays the same.

    Raises:
        DataError: bad arguments (seq_len above max_positions, a hub source without max_tokens,
            a tokenizer without EOS, ...), a source with no non-empty document, or too few tokens
            for one train block and one eval block.
    """
    _check_args(specs, tokenizer, seq_len, max_tokens, eval_fraction, max_positions)
    streams = [SourceStream(spec, text_field) for spec in specs]
    split = _Split(seq_len, max_tokens, eval_fraction, seed, eval_tokens, skip_docs)
    docs, owners, held, end = _documents(streams, specs, tokenizer, split)
    train = _pack([d for i, d in enumerate(docs) if i not in held], seq_len)
    eval_ = _pack([d for i, d in enumerate(docs) if i in held], seq_len)
    stats = _stats(streams, docs, owners, held, train, eval_)
    stats["settings"] = {
        "seq_len": seq_len,
        "max_tokens": max_tokens,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "eval_tokens": eval_tokens,
    }
    if eval_tokens is not None:  # where the next stage of a run continues (its skip_docs)
        stats["settings"].update(skip_docs=skip_docs, end_position=end)
    return PackedData(train=train, eval=eval_, seq_len=seq_len, stats=stats)


def _check_args(specs, tokenizer, seq_len, max_tokens, eval_fraction, max_positions) -> None:
    if not specs:
        raise DataError("no training data given", hint="pass --data PATH (repeatable; PATH*WEIGHT to weight it)")
    if seq_len < 2:
        raise DataError(f"--seq-len {seq_len}: a block needs at least 2 tokens", hint="use e.g. --seq-len 512")
    if max_positions is not None and seq_len > max_positions:
        raise DataError(
            f"--seq-len {seq_len} is larger than the model's maximum positions ({max_positions})",
            hint=f"pass --seq-len {max_positions} or less",
        )
    if not 0 < eval_fraction < 1:
        raise DataError(f"eval fraction {eval_fraction} is not between 0 and 1", hint="use e.g. 0.05")
    if max_tokens is not None and max_tokens < 2 * seq_len:
        raise DataError(
            f"--max-tokens {max_tokens} is below {2 * seq_len}, one train and one eval block of {seq_len}",
            hint=f"raise --max-tokens to at least {2 * seq_len} or lower --seq-len",
        )
    hub = [s.source for s in specs if s.kind == "hf"]
    if hub and max_tokens is None:
        raise DataError(
            f"{hub[0]}: a streamed hub dataset needs a token budget, or reading would not end",
            hint="pass --max-tokens N (the tokens to read from all --data sources together)",
        )
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise DataError(
            "the tokenizer has no EOS token, which separates packed documents",
            hint="set tokenizer.eos_token (e.g. in the model's tokenizer_config.json)",
        )


def _mix(streams: list[SourceStream], weights: list[float], seed: int) -> Iterator[tuple[int, str]]:
    """(source index, document) drawn by weight; an exhausted source drops out of the draw."""
    rng = random.Random(seed)
    iters = [iter(s) for s in streams]
    found = [0] * len(streams)
    active = list(range(len(streams)))
    while active:
        i = active[0] if len(active) == 1 else rng.choices(active, weights=[weights[j] for j in active])[0]
        doc = next(iters[i], None)
        if doc is None:
            if not found[i]:
                raise DataError(
                    f"{streams[i].spec.source}: no documents (every record is empty or missing its text)",
                    hint="check the file and the text field (--text-field), or remove this --data",
                )
            active.remove(i)
        elif doc.strip():
            found[i] += 1
            yield i, doc


def _tokenized(mixed: Iterator[tuple[int, str]], tokenizer) -> Iterator[tuple[int, list[int]]]:
    """(source index, token ids + EOS) per document, tokenized TOKENIZE_BATCH documents at a time."""
    batch: list[tuple[int, str]] = []
    for item in mixed:
        batch.append(item)
        if len(batch) == TOKENIZE_BATCH:
            yield from _encode(batch, tokenizer)
            batch = []
    yield from _encode(batch, tokenizer)


def _encode(batch: list[tuple[int, str]], tokenizer) -> Iterator[tuple[int, list[int]]]:
    if not batch:
        return
    # split_special_tokens: an "</s>" written in a document is text, so EOS only ever ends documents
    # verbose=False: documents longer than the model's positions are expected (packing cuts them)
    rows = tokenizer([text for _, text in batch], add_special_tokens=False, split_special_tokens=True, verbose=False)[
        "input_ids"
    ]
    for (owner, _), row in zip(batch, rows):
        yield owner, [*row, tokenizer.eos_token_id]


@dataclass(frozen=True)
class _Split:
    """How build_blocks divides the stream between train and eval."""

    seq_len: int
    max_tokens: int | None
    eval_fraction: float
    seed: int
    eval_tokens: int | None
    skip_docs: int


def _documents(streams, specs, tokenizer, split: _Split):
    """(documents, their sources, indices held out for eval, stream position after the last one
    read: None where the eval share is drawn from what was read, the default)."""
    weights, sources = [s.weight for s in specs], ", ".join(s.source for s in specs)
    if split.eval_tokens is None:
        docs, owners = _read(streams, weights, tokenizer, split.max_tokens, split.seed)
        return docs, owners, _hold_out(docs, sources, split.seq_len, split.eval_fraction, split.seed), None
    docs, owners, held, end = _read_marked(streams, weights, tokenizer, split)
    _check_split(docs, held, sources, split.seq_len)
    return docs, owners, held, end


def _read(streams, weights, tokenizer, max_tokens, seed) -> tuple[list[np.ndarray], list[int]]:
    """Token arrays of the drawn documents (each ending in EOS but a cut last one) and their sources."""
    import numpy as np

    docs: list[np.ndarray] = []
    owners: list[int] = []
    total = 0
    mixed = _mix(streams, weights, seed)
    for owner, ids in _tokenized(mixed, tokenizer):
        if max_tokens is not None:
            ids = ids[: max_tokens - total]
        docs.append(np.asarray(ids, dtype=np.int32))  # int32 halves memory; widened when packed
        owners.append(owner)
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    mixed.close()  # stop the sources: a hub stream is not read further than the budget
    return docs, owners


def is_marked(seed: int, position: int, eval_fraction: float) -> bool:
    """Whether the document at `position` of the seed's stream is an eval document (budget-free)."""
    return zlib.crc32(f"holdout:{seed}:{position}".encode()) % 1_000_000 < eval_fraction * 1_000_000


def _read_marked(streams, weights, tokenizer, split: _Split):
    """Documents in stream order until the train budget and the eval set are both full: marked
    ones to eval (whole) while it is short of `eval_tokens`, unmarked ones from position
    `skip_docs` on to train (the last cut to fit); marked documents past a full eval set are
    skipped, so none trains in any run. Also returns the position after the last one read."""
    import numpy as np

    max_tokens, eval_tokens, seed = split.max_tokens, split.eval_tokens, split.seed
    train_budget = None if max_tokens is None else max(max_tokens - eval_tokens, 0)
    docs, owners, held = [], [], set()
    train_total = eval_total = 0
    end = 0
    mixed = _mix(streams, weights, seed)
    for position, (owner, ids) in enumerate(_tokenized(mixed, tokenizer)):
        end = position + 1
        train_full = train_budget is not None and train_total >= train_budget
        if train_full and eval_total >= eval_tokens:
            break
        if is_marked(seed, position, split.eval_fraction):
            if eval_total >= eval_tokens:
                continue
            held.add(len(docs))
            eval_total += len(ids)
        else:
            if train_full or position < split.skip_docs:
                continue
            ids = ids if train_budget is None else ids[: train_budget - train_total]
            train_total += len(ids)
        docs.append(np.asarray(ids, dtype=np.int32))
        owners.append(owner)
    mixed.close()
    return docs, owners, held, end


def _check_split(docs, held, sources: str, seq_len: int) -> None:
    eval_total = sum(len(docs[i]) for i in held)
    train_total = sum(len(d) for d in docs) - eval_total
    if eval_total < seq_len or train_total < seq_len:
        raise DataError(
            f"{sources}: {train_total} train and {eval_total} eval tokens; one block of {seq_len} each is the least",
            hint="add data, lower --seq-len, or raise --eval-tokens / --max-tokens",
        )


def _hold_out(docs: list[np.ndarray], sources: str, seq_len: int, eval_fraction: float, seed: int) -> set[int]:
    """Indices of whole documents held out for eval: about eval_fraction of the tokens, at least
    one block, never so many that less than one train block is left."""
    lengths = [len(d) for d in docs]
    total = sum(lengths)
    target = max(seq_len, math.ceil(eval_fraction * total))
    order = list(range(len(docs)))
    random.Random(f"holdout:{seed}").shuffle(order)
    held: set[int] = set()
    held_tokens = 0
    for i in order:
        if held_tokens >= target:
            break
        if total - held_tokens - lengths[i] >= seq_len:
            held.add(i)
            held_tokens += lengths[i]
    if held_tokens < seq_len:
        raise DataError(
            f"{sources}: {total} tokens in {len(docs)} documents; one train block and one eval block of "
            f"{seq_len} tokens need at least {2 * seq_len}, split between whole documents (eval holds out documents)",
            hint="add data, lower --seq-len, or raise --max-tokens",
        )
    return held


def _pack(docs: list[np.ndarray], seq_len: int) -> torch.LongTensor:
    """Concatenate and cut into [n, seq_len] blocks, dropping the final partial block."""
    import numpy as np
    import torch

    flat = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int32)
    n = len(flat) // seq_len
    return torch.from_numpy(flat[: n * seq_len].astype(np.int64)).view(n, seq_len)


def _stats(streams, docs, owners, held, train, eval_) -> dict:
    sources = []
    for i, stream in enumerate(streams):
        mine = [j for j, owner in enumerate(owners) if owner == i]
        sources.append(
            {
                "source": stream.spec.source,
                "weight": stream.spec.weight,
                "docs": len(mine),
                "tokens": sum(len(docs[j]) for j in mine),
                "eval_docs": sum(j in held for j in mine),
                "text": list(stream.rules),
            }
        )
    tokens = sum(len(d) for d in docs)
    eval_tokens = sum(len(docs[j]) for j in held)
    total = {
        "docs": len(docs),
        "tokens": tokens,
        "train_docs": len(docs) - len(held),
        "eval_docs": len(held),
        "train_tokens": tokens - eval_tokens,
        "eval_tokens": eval_tokens,
        "train_blocks": train.shape[0],
        "eval_blocks": eval_.shape[0],
        "dropped_tokens": tokens - train.numel() - eval_.numel(),  # the two final partial blocks
    }
    return {"sources": sources, "total": total}

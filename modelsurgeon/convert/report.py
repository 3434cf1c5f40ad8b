"""Plain-text summary of a conversion: what --dry-run prints, and the recap after a write."""

from __future__ import annotations

from modelsurgeon.convert.engine import Conversion


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _gguf_lines(conv: Conversion) -> list[str]:
    hp, vocab = conv.gguf.hparams, conv.gguf.vocab
    positions = f"rope {hp.rope_type} (base {hp.rope_theta:g})" if hp.spec.rope else "learned positions"
    return [
        f"gguf: architecture {hp.arch.lower()}, {hp.n_layers} blocks, {hp.n_head} heads ({hp.n_head_kv} kv), "
        f"context {hp.n_ctx}, {positions}",
        f"vocabulary: {len(vocab.tokens)} tokens, tokenizer.ggml.pre {vocab.pre!r}",
    ]


def describe(conv: Conversion) -> str:
    src = conv.source
    lines = [f"{src.path} ({src.format}, {len(src.tensors)} tensors, {_size(src.total_bytes)}) -> {conv.to}"]
    for (a, b), n in sorted(conv.dtype_changes().items()):
        lines.append(f"  {n:5d} tensor(s) {a} -> {b}" if a != b else f"  {n:5d} tensor(s) {a} (kept)")
    if conv.gguf is not None:
        lines += ["  " + line for line in _gguf_lines(conv)]
    for name, count, nbytes in conv.shards():
        lines.append(f"  {name}: {count} tensors, {_size(nbytes)}")
    lines.append(f"total: {conv.tensor_count} tensors, {_size(conv.bytes_out)}")
    lines += [f"warning: {w}" for w in conv.warnings]
    return "\n".join(lines)

"""The tokenizer part of a GGUF file, for byte-level BPE tokenizers (GPT-2 style, as Llama 3,
Qwen2 and SmolLM use): tokenizer.ggml.model "gpt2", the token list and types by id, the merges
and special-token ids (written by gguf's own SpecialVocab, which reads the same files)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from modelsurgeon.convert.gguf_meta import require_gguf
from modelsurgeon.errors import CheckpointError, ConvertError

# llama.cpp picks its pre-tokenizer regexes by the name in tokenizer.ggml.pre. It cannot run
# the tokenizer.json regex itself, so map the split patterns we recognise to its names.
_APOS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
SPLIT_PATTERNS = {
    _APOS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    _APOS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}
DEFAULT_PRE = "default"
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType values


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    pre: str
    warnings: tuple[str, ...] = ()


def _steps(node: dict | None) -> list[dict]:
    if not node:
        return []
    return list(node.get("pretokenizers", [])) if node.get("type") == "Sequence" else [node]


def pre_tokenizer_name(tokenizer: dict) -> str | None:
    """llama.cpp's name for this tokenizer.json's pre-tokenizer, or None if not recognised."""
    steps = _steps(tokenizer.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is None:
        return None
    if kinds == ["ByteLevel"] and byte_level.get("use_regex", True):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level.get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not byte_level.get("use_regex", True):
        return SPLIT_PATTERNS.get(steps[0].get("pattern", {}).get("Regex"))
    return None


def _check_byte_level_bpe(file: Path, tokenizer: dict) -> None:
    model = tokenizer.get("model") or {}
    kinds = [s.get("type") for s in _steps(tokenizer.get("pre_tokenizer"))]
    if model.get("type") != "BPE" or model.get("byte_fallback") or "ByteLevel" not in kinds:
        kind = f"{model.get('type')}{' with byte fallback' if model.get('byte_fallback') else ''}"
        raise ConvertError(
            f"{file}: a {kind} tokenizer with pre-tokenizer {kinds or 'none'}; GGUF export writes "
            "byte-level BPE (GPT-2 style) vocabularies only",
            hint="for SentencePiece-style tokenizers (Llama 2, Mistral v0.1) use llama.cpp's convert_hf_to_gguf.py",
        )


def _token_type(added: dict | None, token: str) -> int:
    if added is None:
        return NORMAL
    # Like llama.cpp's converter: special added tokens, and <|...|> ones, are control tokens.
    return CONTROL if added.get("special") or (token.startswith("<|") and token.endswith("|>")) else USER_DEFINED


def read_vocab(path: Path, vocab_size: int) -> Vocab:
    """Tokens and their types for ids 0..vocab_size-1 from tokenizer.json; ids the tokenizer
    does not use (an embedding padded past the vocabulary) become unused [PAD<id>] tokens."""
    file = path / "tokenizer.json"
    if not file.is_file():
        raise ConvertError(
            f"{path}: no tokenizer.json; a GGUF file must carry its vocabulary",
            hint="copy the model's tokenizer files into MODEL",
        )
    tokenizer = json.loads(file.read_text(encoding="utf-8"))
    _check_byte_level_bpe(file, tokenizer)
    by_id = {i: t for t, i in tokenizer["model"]["vocab"].items()}
    added = {a["id"]: a for a in tokenizer.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if by_id and max(by_id) >= vocab_size:
        raise CheckpointError(
            f"{file} has token id {max(by_id)} but config.json says vocab_size={vocab_size}",
            hint="the tokenizer does not belong to these weights, or vocab_size is wrong",
        )
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        types.append(_token_type(added.get(i), token) if token is not None else UNUSED)
    pre = pre_tokenizer_name(tokenizer)
    warnings = (
        ()
        if pre
        else (
            f"pre-tokenizer of {file.name} not recognised; tokenizer.ggml.pre is "
            f"'{DEFAULT_PRE}', so llama.cpp may split text differently from transformers",
        )
    )
    return Vocab(tokens, types, pre or DEFAULT_PRE, warnings)


def add_vocab(writer, path: Path, vocab: Vocab) -> None:
    gguf = require_gguf()

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    gguf.SpecialVocab(path, load_merges=True, n_vocab=len(vocab.tokens)).add_to_gguf(writer, quiet=True)


# llama.cpp picks per-token attributes by general.name: for a name containing "phi3" or "phi-3"
# it looks these tokens up and refuses to load a file whose vocabulary lacks one of them.
PHI3_NAMES, PHI3_TOKENS = ("phi3", "phi-3"), ("</s>", "<unk>", "<s>", "<|endoftext|>")


def general_name(name: str, vocab: Vocab) -> tuple[str, list[str]]:
    """The general.name to write (the model directory's name when llama.cpp can load it), and
    why another was chosen."""
    missing = [t for t in PHI3_TOKENS if t not in vocab.tokens]
    if not any(p in name.lower() for p in PHI3_NAMES) or not missing:
        return name, []
    safe = name.lower()
    for p in PHI3_NAMES:
        safe = safe.replace(p, "phi_3")
    why = f"llama.cpp looks up {list(PHI3_TOKENS)} for names containing 'phi3' or 'phi-3'; missing: {missing}"
    return safe, [f"general.name is {safe!r}, not {name!r}: {why}"]

"""Character-level tokenizers: one token per character, with <pad> <s> </s> <unk> at ids 0-3.

`arith` covers `synthetic:arith`'s characters; `ascii` covers printable ASCII and newline, which
is every character the mathematics-dataset package writes (`dm-math:` sources).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0-3, as in modelsurgeon.tiny
ASCII_CHARS = "".join(map(chr, range(32, 127))) + "\n"  # printable ASCII (space to ~) and newline


def char_tokenizer(charset: str) -> PreTrainedTokenizerFast:
    """A tokenizer with one token per character of `charset` after the 4 special tokens; others are <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *charset))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()  # characters back into one string, spaces being tokens of their own
    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        clean_up_tokenization_spaces=False,
    )


def ascii_tokenizer() -> PreTrainedTokenizerFast:
    """Printable ASCII and newline, 100 tokens."""
    return char_tokenizer(ASCII_CHARS)

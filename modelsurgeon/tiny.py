"""Tiny, random but non-degenerate Hugging Face causal-LM checkpoints, built offline.

The test suite, `surgeon demo` and the benchmarks need real checkpoints of every supported
family without touching the network. `build_tiny` makes one from the family's own transformers
config class and writes it with `save_pretrained`, so the files (safetensors, shard index,
config.json, generation_config.json, tokenizer) are exactly what transformers itself emits.

Fresh transformers models are degenerate for our purposes (norm gains all one, Gemma's norm
offsets and all biases zero, tiny output scales), which would hide a wrong tensor copy or a
missing config remap. So every parameter is re-drawn from a seeded generator.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # transformers is slow to import; keep `import modelsurgeon.tiny` cheap
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

FAMILIES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
    "olmo2",
    "gpt_neox",
)

# Mixture-of-experts families (tests of upcycling and expert growth; kept out of FAMILIES so the
# dense-family suites do not run over them). Experts are small and distinct, so a copied or
# dropped expert shows in the logits.
MOE_FAMILIES: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "flex_olmo")
TINY_EXPERTS, TINY_TOP_K = 4, 2

MAX_POSITIONS = 128
# Smaller than the ~24-40 token prompts the tests use, so sliding and full layers differ.
SLIDING_WINDOW = 16
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # trained first, so ids are PAD..UNK

# Gemma stores RMSNorm gains as offsets: y = norm(x) * (1 + w), initialised to w = 0.
OFFSET_NORM_FAMILIES = {"gemma2", "gemma3_text"}

# Training text for the tokenizer: a little English and math, so merges look like real ones.
_SAMPLE_TEXT = """\
The quick brown fox jumps over the lazy dog. A model reads text one token at a time and
predicts the next token. Deeper models stack more layers; wider models use more hidden units.
The derivative of x^2 is 2x, and the integral of 2x dx is x^2 + C. If f(x) = 3x + 1 then
f(2) = 7. The sum 1 + 2 + 3 + ... + n equals n(n + 1) / 2. Prime numbers: 2, 3, 5, 7, 11, 13.
Water boils at 100 degrees Celsius at sea level. The sun rises in the east and sets in the west.
She said: "Let's solve it step by step." First, add the numbers; then, divide by the count.
sqrt(16) = 4, 2^10 = 1024, pi is about 3.14159, and e is about 2.71828. (a + b)^2 = a^2 + 2ab + b^2.
Question: what is 12 * 12? Answer: 144. Question: what is 7 - 10? Answer: -3.
"""


def _has_field(family: str, name: str) -> bool:
    """Whether the family's config dataclass declares `name` (setting it elsewhere is a no-op
    or, worse, an attribute that some code reads with getattr)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[family]
    if dataclasses.is_dataclass(cls):  # transformers 5
        return name in {f.name for f in dataclasses.fields(cls)}
    return name in inspect.signature(cls.__init__).parameters  # transformers 4


def _layer_types(family: str, n_layers: int) -> list[str] | None:
    """Mixed per-layer attention kinds, so a grown model with an un-remapped list is caught."""
    if family in ("qwen2", "qwen3"):
        # Alternating disagrees with what max_window_layers would imply, so code that
        # recomputes the list from max_window_layers instead of remapping it is caught too.
        return ["full_attention" if i % 2 == 0 else "sliding_attention" for i in range(n_layers)]
    if family in ("gemma2", "gemma3_text"):
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    return None


def tiny_config(
    family: str,
    n_layers: int = 4,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    **overrides,
) -> PretrainedConfig:
    """A small config of `family`; `overrides` are config fields and win over everything here.
    gpt2 and gpt_neox have no grouped-query attention, so `kv_heads` is ignored for them."""
    from transformers import AutoConfig

    if family not in FAMILIES + MOE_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES + MOE_FAMILIES)}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    tokens = dict(vocab_size=vocab, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    if family == "gpt2":
        kw = dict(n_embd=hidden, n_head=heads, n_layer=n_layers, n_positions=MAX_POSITIONS, **tokens)
        return AutoConfig.for_model(family, **{**kw, **overrides})

    kw = dict(
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        # 3x keeps the MLP width distinct from every other dimension, so a transposed or
        # mis-sliced tensor fails on shape rather than passing silently.
        intermediate_size=(4 if family == "gpt_neox" else 3) * hidden,
        max_position_embeddings=MAX_POSITIONS,
        **tokens,
    )
    if _has_field(family, "num_key_value_heads"):
        if heads % kv_heads:
            raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
        kw["num_key_value_heads"] = kv_heads
    if _has_field(family, "head_dim"):
        kw["head_dim"] = hidden // heads
    if family == "phi3":
        kw["original_max_position_embeddings"] = MAX_POSITIONS
    if family in ("qwen2", "qwen3", "qwen2_moe"):
        kw.update(use_sliding_window=True, sliding_window=SLIDING_WINDOW, max_window_layers=n_layers // 2)
    if family in MOE_FAMILIES:
        kw.update(_moe_kwargs(family, hidden))
    if family in ("gemma2", "gemma3_text"):
        # Gemma scales scores by query_pre_attn_scalar**-0.5 (default 256, sized for head_dim
        # 256); use the real head_dim so attention is neither flat nor saturated.
        kw.update(sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=hidden // heads)
    layer_types = _layer_types(family, overrides.get("num_hidden_layers", n_layers))
    if layer_types is not None:
        kw["layer_types"] = layer_types
    return AutoConfig.for_model(family, **{**kw, **overrides})


def _moe_kwargs(family: str, hidden: int) -> dict:
    kw = dict(num_experts_per_tok=TINY_TOP_K, norm_topk_prob=True)
    kw["num_local_experts" if family == "mixtral" else "num_experts"] = TINY_EXPERTS
    if family in ("qwen2_moe", "qwen3_moe"):
        kw["moe_intermediate_size"] = 2 * hidden
    if family == "qwen2_moe":
        kw["shared_expert_intermediate_size"] = 3 * hidden
    if family == "mixtral":
        kw.pop("norm_topk_prob")  # Mixtral always renormalises
    return kw


def _fan_in(module: nn.Module, weight: torch.Tensor) -> int:
    from transformers.pytorch_utils import Conv1D

    # GPT-2's Conv1D stores weights as (in, out), the transpose of nn.Linear.
    return weight.shape[0] if isinstance(module, Conv1D) else weight.shape[1]


def _is_norm(module: nn.Module) -> bool:
    # Matches nn.LayerNorm and every family's own *RMSNorm / *LayerNorm class.
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm")


@torch.no_grad()
def _randomise(model: PreTrainedModel, family: str, seed: int) -> None:
    """Re-draw every parameter, in module order, from one seeded generator.

    Scales keep activations O(1) at any width: matrices ~ N(0, 1/fan_in) preserve the
    variance of their input; embeddings ~ N(0, 1/hidden) so a (tied or not) LM head on a
    normalised state gives logits of std ~1. Norm gains and biases get small noise so that
    they are not all one / zero and a wrong copy changes the output.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    seen: set[int] = set()  # a tied LM head is the embedding; draw it once
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if name == "bias":
                value = normal(p.shape, 0.02)
            elif _is_norm(module) and p.ndim == 1:
                offset = family in OFFSET_NORM_FAMILIES
                value = normal(p.shape, 0.1, mean=0.0 if offset else 1.0)
            elif isinstance(module, nn.Embedding):
                value = normal(p.shape, 1 / math.sqrt(p.shape[1]))
            elif p.ndim == 2:
                value = normal(p.shape, 1 / math.sqrt(_fan_in(module, p)))
            elif p.ndim == 3:  # transformers 5 fuses experts: (experts, out, in)
                value = normal(p.shape, 1 / math.sqrt(p.shape[2]))
            else:  # a new kind of parameter needs a deliberate choice, not a silent default
                raise TypeError(f"tiny: no rule for parameter {name} of {type(module).__name__} {tuple(p.shape)}")
            p.copy_(value)
    model.tie_weights()


def tiny_tokenizer(vocab: int = 256) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a built-in sample, with at most `vocab` tokens and
    pad/bos/eos/unk at ids 0-3 (matching `tiny_config`). Bytes not in the sample map to <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # No initial_alphabet: the full 256-byte alphabet would not fit in a 256-token vocab.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=max(vocab - len(SPECIAL_TOKENS), 0),
        show_progress=False,
    )
    tok.train_from_iterator(_SAMPLE_TEXT.splitlines(), trainer=trainer)
    if tok.get_vocab_size() > vocab:
        raise ValueError(f"tiny tokenizer has {tok.get_vocab_size()} tokens, more than vocab={vocab}")
    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        model_max_length=MAX_POSITIONS,
    )


@contextmanager
def _no_progress_bars():
    """save_pretrained draws a "Writing model shards" bar; noise in tests and `surgeon demo`."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_tiny(
    family: str,
    out_dir: str | Path,
    n_layers: int = 4,
    hidden: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | int | None = None,
    with_tokenizer: bool = True,
    **config_overrides,
) -> Path:
    """Write a random tiny `family` checkpoint to `out_dir` and return its path.

    Same arguments, bit-identical tensors. `config_overrides` go to `tiny_config`, so they
    may be its own parameters (heads, kv_heads, vocab) or any config field.
    `max_shard_size=None` writes a single model.safetensors.
    """
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    cfg = tiny_config(family, n_layers=n_layers, hidden=hidden, **config_overrides)
    model = AutoModelForCausalLM.from_config(cfg)  # always float32: draw once, then cast
    _randomise(model, family, seed)
    model.to(dtype)
    model.config.dtype = dtype
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(cfg, key))
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    with _no_progress_bars():
        model.save_pretrained(out, **kwargs)
    if with_tokenizer:
        tiny_tokenizer(cfg.vocab_size).save_pretrained(out)
    return out

"""GGUF model metadata from a Hugging Face config.json, as llama.cpp's convert_hf_to_gguf.py
writes it for the llama (also used for Mistral) and qwen2 architectures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelsurgeon.errors import CheckpointError, ConvertError

# HF model_type -> gguf MODEL_ARCH member. llama.cpp has no separate architecture for dense
# Mistral models: its converter writes them as llama, and so do we.
GGUF_ARCHS = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2"}
# llama.cpp's llama graph applies rope to interleaved (x0, x1) pairs while HF rotates halves
# (x_i, x_{i+d/2}), so the q/k rows are reordered per head; qwen2's graph uses HF's layout.
PERMUTED_QK = {"llama", "mistral"}
ROPE_TYPES = ("default", "linear", "yarn", "llama3")
REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "rms_norm_eps", "vocab_size")  # fmt: skip


@dataclass(frozen=True)
class Hparams:
    family: str
    arch: str  # the gguf MODEL_ARCH member name
    n_layers: int
    n_ctx: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_in_config: bool
    rms_eps: float
    rope_theta: float
    rope: dict = field(default_factory=dict)  # the scaling parameters, rope_type included
    vocab_size: int = 0

    @property
    def rope_type(self) -> str:
        return str(self.rope.get("rope_type", self.rope.get("type", "default")))


def require_gguf():
    """The gguf module (an optional dependency), or a ConvertError saying how to install it."""
    try:
        import gguf
    except ImportError as exc:  # not installed, or one of its own imports is missing
        raise ConvertError(f"GGUF export needs the gguf package, which could not be imported ({exc})",
                           hint="pip install gguf (the package's 'gguf' extra)") from None
    return gguf


def _rope_params(config: dict) -> dict:
    """Rope settings from either transformers 5 `rope_parameters` or older `rope_scaling`."""
    params = dict(config.get("rope_parameters") or {})
    if "rope_type" not in params and isinstance(params.get("full_attention"), dict):
        params = dict(params["full_attention"])  # per-layer-type parameters; full attention is the base
    return {**(config.get("rope_scaling") or {}), **params}


def read_hparams(config: dict) -> Hparams:
    """Raises ConvertError for a family or rope type GGUF export does not support."""
    family = str(config.get("model_type"))
    if family not in GGUF_ARCHS:
        raise ConvertError(f"GGUF export does not support model_type {family!r}",
                           hint=f"supported families: {', '.join(GGUF_ARCHS)}")
    missing = [k for k in REQUIRED if not isinstance(config.get(k), (int, float))]
    if missing:
        raise CheckpointError(f"config.json lacks {', '.join(missing)}, needed for the GGUF metadata",
                              hint="fix or re-export config.json")
    rope = _rope_params(config)
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    hp = Hparams(
        family=family, arch=GGUF_ARCHS[family], n_layers=config["num_hidden_layers"],
        n_ctx=config["max_position_embeddings"], n_embd=config["hidden_size"], n_ff=config["intermediate_size"],
        n_head=n_head, n_head_kv=config.get("num_key_value_heads") or n_head, head_dim=head_dim,
        head_dim_in_config=config.get("head_dim") is not None, rms_eps=config["rms_norm_eps"],
        rope_theta=float(config.get("rope_theta", rope.get("rope_theta", 10000.0))), rope=rope,
        vocab_size=config["vocab_size"],
    )  # fmt: skip
    if hp.rope_type not in ROPE_TYPES:
        raise ConvertError(f"rope_type {hp.rope_type!r} has no GGUF equivalent that llama.cpp reads",
                           hint=f"supported rope types: {', '.join(ROPE_TYPES)}")
    return hp


def attention_warnings(config: dict) -> list[str]:
    """Settings the GGUF cannot carry: llama.cpp's llama and qwen2 graphs attend to everything."""
    window = config.get("sliding_window")
    sliding = config.get("use_sliding_window", config.get("model_type") == "mistral")
    if sliding and isinstance(window, int) and window < config.get("max_position_embeddings", 0):
        return [f"sliding_window={window} is not in the GGUF: llama.cpp attends to the whole context, "
                f"so outputs differ from transformers beyond {window} tokens"]
    return []


def add_hparams(writer, hp: Hparams, file_type: int, name: str) -> None:
    """Write the general.* and <arch>.* keys llama.cpp reads for these architectures."""
    gguf = require_gguf()

    writer.add_name(name)
    writer.add_vocab_size(hp.vocab_size)
    writer.add_context_length(hp.n_ctx)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layers)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_count(hp.head_dim)
    if hp.head_dim_in_config:  # head_dim may differ from hidden / heads; say so explicitly
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    if hp.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(hp.rope["factor"]))
    elif hp.rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(hp.rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(hp.rope.get("original_max_position_embeddings", hp.n_ctx)))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def llama3_rope_factors(hp: Hparams) -> list[float]:
    """Per-frequency divisors of Llama 3.1 rope scaling, which llama.cpp reads from a
    `rope_freqs` tensor (the same formula as transformers' _compute_llama3_parameters)."""
    factor = float(hp.rope.get("factor", 8.0))
    low, high = float(hp.rope.get("low_freq_factor", 1.0)), float(hp.rope.get("high_freq_factor", 4.0))
    old_ctx = float(hp.rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for i in range(0, hp.head_dim, 2):
        wavelen = 2 * math.pi * hp.rope_theta ** (i / hp.head_dim)  # 2*pi / inverse frequency
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors

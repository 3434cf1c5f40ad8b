"""GGUF model metadata from a Hugging Face config.json, as llama.cpp's convert_hf_to_gguf.py
writes it: the keys every architecture shares here, the family-only ones from gguf_families."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from modelsurgeon.convert.gguf_families import FAMILIES, GgufFamily, gemma_scale_warning
from modelsurgeon.errors import CheckpointError, ConvertError

ROPE_TYPES = ("default", "linear", "yarn", "llama3")
# Each GGUF field and the config.json keys it may come from, first match wins (GPT-2 has its own names).
# hand-laid table: two keys per row (fmt: skip below)
KEYS = {
    "n_layers": ("num_hidden_layers", "n_layer"), "n_ctx": ("max_position_embeddings", "n_positions"),
    "n_embd": ("hidden_size", "n_embd"), "n_head": ("num_attention_heads", "n_head"),
    "norm_eps": ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"), "vocab_size": ("vocab_size",),
}  # fmt: skip


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
    norm_eps: float  # RMSNorm's or LayerNorm's, as the family uses
    rope_theta: float
    n_rot: int = 0  # rotated dimensions per head (partial rotary: phi3, gpt_neox)
    rope: dict = field(default_factory=dict)  # the scaling parameters, rope_type included
    vocab_size: int = 0

    @property
    def rope_type(self) -> str:
        return str(self.rope.get("rope_type", self.rope.get("type", "default")))

    @property
    def spec(self) -> GgufFamily:
        return FAMILIES[self.family]


def require_gguf():
    """The gguf module (an optional dependency), or a ConvertError saying how to install it."""
    try:
        import gguf
    except ImportError as exc:  # not installed, or one of its own imports is missing
        raise ConvertError(
            f"GGUF export needs the gguf package, which could not be imported ({exc})",
            hint="pip install gguf (the package's 'gguf' extra)",
        ) from None
    return gguf


def _rope_params(config: dict) -> dict:
    """Rope settings from either transformers 5 `rope_parameters` or older `rope_scaling`."""
    params = dict(config.get("rope_parameters") or {})
    if "rope_type" not in params and isinstance(params.get("full_attention"), dict):
        params = dict(params["full_attention"])  # per-layer-type parameters; full attention is the base
    return {**(config.get("rope_scaling") or {}), **params}


def _value(config: dict, field_name: str) -> int | float | None:
    return next((config[k] for k in KEYS[field_name] if isinstance(config.get(k), (int, float))), None)


def _rotary_fraction(config: dict, rope: dict) -> float:
    """The fraction of each head that rope rotates (transformers 5 keeps it in rope_parameters)."""
    return float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", config.get("rotary_pct", 1.0))))


def read_hparams(config: dict) -> Hparams:
    """Raises ConvertError for a family or rope type GGUF export does not support, and
    CheckpointError for a config.json without the sizes the metadata needs."""
    family = str(config.get("model_type"))
    if family not in FAMILIES:
        raise ConvertError(
            f"GGUF export does not support model_type {family!r}", hint=f"supported families: {', '.join(FAMILIES)}"
        )
    values = {k: _value(config, k) for k in KEYS}
    missing = [KEYS[k][0] for k, v in values.items() if v is None]
    if missing:
        raise CheckpointError(
            f"config.json lacks {', '.join(missing)}, needed for the GGUF metadata", hint="fix or re-export config.json"
        )
    rope = _rope_params(config)
    n_embd, n_head = int(values["n_embd"]), int(values["n_head"])
    head_dim = config.get("head_dim") or n_embd // n_head
    # GPT-2 leaves n_inner unset for its usual 4x MLP.
    n_ff = config.get("intermediate_size") or config.get("n_inner") or 4 * n_embd
    hp = Hparams(
        family=family,
        arch=FAMILIES[family].arch,
        n_layers=int(values["n_layers"]),
        n_ctx=int(values["n_ctx"]),
        n_embd=n_embd,
        n_ff=n_ff,
        n_head=n_head,
        n_head_kv=config.get("num_key_value_heads") or n_head,
        head_dim=head_dim,
        head_dim_in_config=config.get("head_dim") is not None,
        norm_eps=float(values["norm_eps"]),
        rope_theta=float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
        n_rot=int(_rotary_fraction(config, rope) * head_dim),
        rope=rope,
        vocab_size=int(values["vocab_size"]),
    )
    if hp.spec.rope and hp.rope_type not in ROPE_TYPES:
        raise ConvertError(
            f"rope_type {hp.rope_type!r} has no GGUF equivalent that llama.cpp reads",
            hint=f"supported rope types: {', '.join(ROPE_TYPES)}",
        )
    return hp


def _sliding_window(config: dict) -> int | None:
    """The window transformers applies to some layers, or None when every layer sees everything."""
    window = config.get("sliding_window")
    if not isinstance(window, int) or window >= config.get("max_position_embeddings", 0):
        return None
    types = config.get("layer_types")
    if isinstance(types, list):
        return window if "sliding_attention" in types else None
    return window if config.get("use_sliding_window", config.get("model_type") in ("mistral", "phi3")) else None


def attention_warnings(config: dict, hp: Hparams) -> list[str]:
    """Settings the GGUF cannot carry for this family."""
    warnings = gemma_scale_warning(config, hp)
    window = _sliding_window(config)
    if window is not None and not hp.spec.sliding:
        warnings.append(
            f"sliding_window={window} is not in the GGUF: llama.cpp's {hp.arch.lower()} graph attends "
            f"to the whole context, so outputs differ from transformers beyond {window} tokens"
        )
    return warnings


def _add_rope(writer, hp: Hparams) -> None:
    gguf = require_gguf()

    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_rope_dimension_count(hp.n_rot)
    if hp.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(hp.rope["factor"]))
    elif hp.rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(hp.rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(hp.rope.get("original_max_position_embeddings", hp.n_ctx)))


def add_hparams(writer, hp: Hparams, config: dict, file_type: int, name: str) -> None:
    """Write the general.* and <arch>.* keys llama.cpp reads for the family."""
    gguf = require_gguf()

    writer.add_name(name)
    writer.add_vocab_size(hp.vocab_size)
    writer.add_context_length(hp.n_ctx)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layers)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    if hp.spec.rms_norm:
        writer.add_layer_norm_rms_eps(hp.norm_eps)
    else:
        writer.add_layer_norm_eps(hp.norm_eps)
    if hp.spec.rope:
        _add_rope(writer, hp)
    if hp.head_dim_in_config:  # head_dim may differ from hidden / heads; say so explicitly
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    if hp.spec.extra is not None:
        hp.spec.extra(writer, config, hp)
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

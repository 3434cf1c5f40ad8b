"""What GGUF export knows about each Hugging Face family, as data: the llama.cpp architecture it
becomes, how its tensors must change on the way (llama.cpp's convert_hf_to_gguf.py does the
same per family), and the family-only metadata keys llama.cpp reads for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# llama.cpp sizes Gemma's attention scale by the model it recognises from the layer count:
# its 27B models use 1/sqrt(hidden / heads), every other size 1/sqrt(head_dim).
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3_text": 62}


@dataclass(frozen=True)
class GgufFamily:
    arch: str  # the gguf MODEL_ARCH member
    rms_norm: bool = True  # False: LayerNorm, whose epsilon has another key
    rope: bool = True  # False: learned positions (GPT-2)
    # llama.cpp's llama graph applies rope to interleaved (x0, x1) pairs while HF rotates halves
    # (x_i, x_{i+d/2}), so q/k rows are reordered per head; the other graphs use HF's layout.
    permute_qk: bool = False
    norm_shift: bool = False  # Gemma stores RMSNorm gains as offsets w (y = norm(x) * (1 + w))
    transposed: tuple[str, ...] = ()  # GPT-2's Conv1D weights are stored (in, out)
    qkv_by_head: str | None = None  # GPT-NeoX's fused qkv rows go [head][q k v]; llama.cpp wants [q; k; v]
    skipped: tuple[str, ...] = ()  # buffers some checkpoints carry that llama.cpp recomputes
    sliding: bool = False  # llama.cpp runs this family's sliding-window layers as HF does
    extra: Callable[[object, dict, object], None] | None = None  # (writer, config, Hparams): family keys


def _layer_pattern(config: dict, n_layers: int, every: int) -> list[bool]:
    """Which layers use the sliding window: config.json's layer_types, else the family's
    period (all but every `every`-th layer)."""
    types = config.get("layer_types")
    if isinstance(types, list) and len(types) == n_layers:
        return [t == "sliding_attention" for t in types]
    return [(i + 1) % every != 0 for i in range(n_layers)]


def _gemma(writer, config: dict, hp, every: int) -> None:
    if config.get("attn_logit_softcapping"):
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    window, pattern = config.get("sliding_window"), _layer_pattern(config, hp.n_layers, every)
    if window and any(pattern):
        writer.add_sliding_window(int(window))
        writer.add_sliding_window_pattern(pattern)
    elif hp.family == "gemma2":  # llama.cpp's gemma2 always slides (default 4096): make the window the context
        writer.add_sliding_window(hp.n_ctx)


def _gemma2(writer, config: dict, hp) -> None:
    _gemma(writer, config, hp, every=2)


def _gemma3(writer, config: dict, hp) -> None:
    _gemma(writer, config, hp, every=6)
    local = (config.get("rope_parameters") or {}).get("sliding_attention", {}).get("rope_theta")
    local = local or config.get("rope_local_base_freq", 10000.0)
    writer.add_rope_freq_base_swa(float(local))  # sliding layers rotate with their own base


def _phi3(writer, config: dict, hp) -> None:
    writer.add_rope_scaling_orig_ctx_len(int(config.get("original_max_position_embeddings") or hp.n_ctx))
    writer.add_sliding_window(int(config.get("sliding_window") or 0))  # llama.cpp reads 0 as "none"


def _gpt_neox(writer, config: dict, hp) -> None:
    writer.add_parallel_residual(bool(config.get("use_parallel_residual", True)))


# hand-laid table: one family per row (fmt: skip below)
FAMILIES: dict[str, GgufFamily] = {
    # llama.cpp has no separate architecture for dense Mistral models: its converter writes them as llama.
    "llama": GgufFamily("LLAMA", permute_qk=True),
    "mistral": GgufFamily("LLAMA", permute_qk=True),
    "qwen2": GgufFamily("QWEN2"),
    "qwen3": GgufFamily("QWEN3"),
    "gemma2": GgufFamily("GEMMA2", norm_shift=True, sliding=True, extra=_gemma2),
    "gemma3_text": GgufFamily("GEMMA3", norm_shift=True, sliding=True, extra=_gemma3),
    "phi3": GgufFamily("PHI3", extra=_phi3),
    "olmo2": GgufFamily("OLMO2"),
    "gpt2": GgufFamily("GPT2", rms_norm=False, rope=False, transposed=("c_attn.weight", "c_proj.weight", "c_fc.weight"),
                       skipped=(".attn.bias", ".attn.masked_bias")),
    "gpt_neox": GgufFamily("GPTNEOX", rms_norm=False, qkv_by_head="query_key_value", extra=_gpt_neox,
                           skipped=(".attention.bias", ".attention.masked_bias")),
}  # fmt: skip


def gemma_scale_warning(config: dict, hp) -> list[str]:
    """llama.cpp cannot be told query_pre_attn_scalar; say so when it would use another one."""
    if hp.family not in GEMMA_27B_LAYERS:
        return []
    used = hp.n_embd // hp.n_head if hp.n_layers == GEMMA_27B_LAYERS[hp.family] else hp.head_dim
    wanted = config.get("query_pre_attn_scalar", used)
    if wanted == used:
        return []
    why = f"llama.cpp scales attention by 1/sqrt({used}) for a {hp.n_layers}-layer {hp.family}"
    return [f"query_pre_attn_scalar={wanted} is not in the GGUF: {why}, so its outputs differ from transformers"]

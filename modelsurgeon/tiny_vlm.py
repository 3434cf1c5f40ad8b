"""Tiny vision-language checkpoints (Qwen2-VL, Qwen2.5-VL, Gemma 3, LLaVA) built from
transformers' config classes, for tests: text tower hidden 32, a one-block vision tower, random
weights from one seeded generator, special image tokens inside the 256-token vocabulary."""

from __future__ import annotations

from pathlib import Path

import torch

from modelsurgeon.tiny import _no_progress_bars, _randomise, tiny_tokenizer

VLM_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "gemma3", "llava")
IMAGE, START, END = 250, 251, 252  # image placeholder, vision start / begin-of-image, end-of-image
PATCH = 14
IMAGE_SIDE = 28  # 2 x 2 patches


def _text(n_layers: int, hidden: int) -> dict:
    return dict(
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def tiny_vlm_config(family: str, n_layers: int = 2, hidden: int = 32):
    from transformers import Gemma3Config, LlavaConfig, Qwen2_5_VLConfig, Qwen2VLConfig

    text = _text(n_layers, hidden)
    quarter = hidden // 32  # head_dim / 8: the section sums to head_dim / 2 (4 heads)
    mrope = {"rope_type": "default", "mrope_section": [quarter, quarter, 2 * quarter]}
    qwen = dict(image_token_id=IMAGE, vision_start_token_id=START, vision_end_token_id=END, video_token_id=253)
    if family == "qwen2_vl":
        vision = dict(depth=1, embed_dim=16, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=PATCH)
        return Qwen2VLConfig(text_config={**text, "rope_parameters": mrope}, vision_config=vision, **qwen)
    if family == "qwen2_5_vl":
        vision = dict(
            depth=1,
            hidden_size=16,
            out_hidden_size=hidden,
            intermediate_size=32,
            num_heads=2,
            patch_size=PATCH,
            fullatt_block_indexes=[0],
        )
        return Qwen2_5_VLConfig(text_config={**text, "rope_parameters": mrope}, vision_config=vision, **qwen)
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIDE,
        patch_size=PATCH,
    )
    if family == "gemma3":
        text.update(head_dim=hidden // 4, query_pre_attn_scalar=hidden // 4, sliding_window=4)
        return Gemma3Config(
            text_config=text,
            vision_config=vision,
            mm_tokens_per_image=4,
            image_token_index=IMAGE,
            boi_token_index=START,
            eoi_token_index=END,
        )
    if family == "llava":
        return LlavaConfig(
            text_config={**text, "model_type": "llama"},
            vision_config={**vision, "model_type": "clip_vision_model"},
            image_token_index=IMAGE,
            image_seq_length=4,
        )
    raise ValueError(f"unknown vision-language family {family!r}; expected one of {', '.join(VLM_FAMILIES)}")


def build_tiny_vlm(
    family: str, out_dir: str | Path, n_layers: int = 2, hidden: int = 32, seed: int = 0, with_tokenizer: bool = True
) -> Path:
    """Write a random tiny `family` vision-language checkpoint to `out_dir` and return its path."""
    from transformers import AutoModelForImageTextToText

    out = Path(out_dir)
    # Seeded, so the same arguments give the same bytes: the vision tower and an untied head
    # keep transformers' own random init (tiny._randomise has no rule for the tower's
    # convolutions and probes, and sees only the text model, not the head beside it).
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(tiny_vlm_config(family, n_layers, hidden))
    # The text tower as every tiny model; the projector, which some families initialise to
    # zeros, is re-drawn so that image features reach the stream.
    _randomise(model.model.language_model, "gemma3_text" if family == "gemma3" else "llama", seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in (
            model.model.multi_modal_projector.parameters()
            if family in ("gemma3", "llava")
            else model.model.visual.merger.parameters()
        ):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 and family != "gemma3" else 0.0))
    with _no_progress_bars():
        model.save_pretrained(out)
    if with_tokenizer:  # ids below IMAGE only: text never contains an image placeholder
        tiny_tokenizer(IMAGE).save_pretrained(out)
    return out


def image_inputs(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """One 28x28 image and a prompt around its placeholder tokens, as the family's forward takes them."""
    g = torch.Generator().manual_seed(seed)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        # 2x2 patches of 3 x (2 frames) x 14 x 14 values, merged 2x2 into one image token.
        pixels = torch.randn(4, 3 * 2 * PATCH * PATCH, generator=g)
        ids = [5, 17, START, IMAGE, END, 33, 7]
        ids = torch.tensor([ids])
        return {
            "input_ids": ids,
            "pixel_values": pixels,
            "image_grid_thw": torch.tensor([[1, 2, 2]]),
            "mm_token_type_ids": (ids == IMAGE).long(),
        }
    ids = [5, 17, START, *[IMAGE] * 4, END, 33, 7] if family == "gemma3" else [5, 17, *[IMAGE] * 4, 33, 7]
    return {"input_ids": torch.tensor([ids]), "pixel_values": torch.randn(1, 3, IMAGE_SIDE, IMAGE_SIDE, generator=g)}

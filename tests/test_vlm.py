"""Vision-language models grow their text tower: depth and width ops apply to the language
model's layers, the vision tower is byte-copied, the projector's output side widens with the
text hidden size, nested text_config counts and lists are remapped; exact ops keep the logits on
text-only and image inputs (tiny models from transformers' config classes)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from modelsurgeon.errors import CheckpointError
from modelsurgeon.grow.engine import grow, prepare
from modelsurgeon.plan import parse_plan
from modelsurgeon.tiny_vlm import VLM_FAMILIES, build_tiny_vlm, image_inputs

DEEP = "name: deep\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n"
WIDE = (
    "name: wide\nsteps:\n  - op: widen\n    hidden: 2x\n    ffn: 2x\n    heads: 2x\n  - op: stack\n"
    "    factor: 2\n    new: zero\n"
)
TEXT = {"input_ids": torch.tensor([[5, 17, 33, 2, 100, 7, 9]])}
VISION_PREFIX = {
    "qwen2_vl": "visual.blocks.",
    "qwen2_5_vl": "visual.blocks.",
    "gemma3": "vision_tower.",
    "llava": "vision_tower.",
}


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    cache = {}

    def make(family: str):
        if family not in cache:
            cache[family] = build_tiny_vlm(family, tmp_path_factory.mktemp(family) / "model")
        return cache[family]

    return make


def _logits(path, inputs) -> torch.Tensor:
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("plan", [DEEP, WIDE], ids=["interpolate-zero", "widen-2x-then-stack-zero"])
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_exact_growth_of_the_text_tower_keeps_the_logits(vlm, tmp_path, family, plan):
    src = vlm(family)
    prep = grow(src, parse_plan(plan), tmp_path / "out")
    assert prep.equivalence == "exact" and len(prep.layer_map) == 4
    _, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    for inputs in (TEXT, image_inputs(family)):
        before, after = _logits(src, inputs), _logits(tmp_path / "out", inputs)
        assert (after - before).abs().max().item() <= 1e-5 * max(1.0, before.abs().max().item())


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vision_tower_is_copied_and_text_config_remapped(vlm, tmp_path, family):
    src = vlm(family)
    grow(src, parse_plan(WIDE), tmp_path / "out")
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    vision = [k for k in a if k.startswith(VISION_PREFIX[family])]
    assert vision and all(torch.equal(a[k], b[k]) for k in vision)
    before = json.loads((src / "config.json").read_text())
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    text = cfg["text_config"]
    assert text["num_hidden_layers"] == 4 and text["hidden_size"] == 64 and text["num_attention_heads"] == 8
    if "layer_types" in before["text_config"]:
        assert len(text["layer_types"]) == 4
    assert cfg["vision_config"] == {**before["vision_config"], **_hidden_copies(family, 64)}


def _hidden_copies(family: str, hidden: int) -> dict:
    return {"qwen2_vl": {"hidden_size": hidden}, "qwen2_5_vl": {"out_hidden_size": hidden}}.get(family, {})


def test_projector_output_side_is_widened(vlm, tmp_path):
    src = vlm("llava")
    grow(src, parse_plan(WIDE), tmp_path / "out")
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    p = "multi_modal_projector."
    assert torch.equal(
        b[p + "linear_1.weight"], a[p + "linear_1.weight"].repeat(2, 1)
    )  # rows tiled, vision inputs kept
    assert torch.equal(b[p + "linear_2.weight"], a[p + "linear_2.weight"].repeat(2, 2) / 2)  # inputs split, rows tiled


def test_a_text_tower_outside_the_table_is_refused(vlm, tmp_path):
    src = vlm("llava")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in src.iterdir():
        (bad / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"]["model_type"] = "falcon"
    (bad / "config.json").unlink()
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="text tower is a 'falcon'"):
        prepare(bad, parse_plan(DEEP))

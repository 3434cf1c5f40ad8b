"""Behavioural proof of surgery, for every family: grown models are loaded with transformers
and compared with the source model, or with an independent hooked reference (reference.py)."""

from __future__ import annotations

import json

import pytest
import torch
from reference import logits, prompt_ids, reference_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan


def load(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def plan(yaml_steps: str):
    return parse_plan(f"name: t\nsteps:\n{yaml_steps}")


# (plan steps, expected source of each output layer, expected branch scale) on a 4-layer model,
# written out by hand so that the test does not reuse the tool's own layer-map logic.
# hand-laid table: each plan above its expected map and scales (fmt: skip below)
CASES = {
    "interpolate-zero": ("  - op: interpolate\n    factor: 2\n    new: zero\n",
                         [0, 0, 1, 1, 2, 2, 3, 3], [1, 0, 1, 0, 1, 0, 1, 0]),
    "scale-zero-map": ("  - op: layers\n    map: [0, {layer: 0, scale: 0}, 1, 2, {layer: 2, scale: 0.0}, 3]\n",
                       [0, 0, 1, 2, 2, 3], [1, 0, 1, 1, 0, 1]),
    "mixed-scales": ("  - op: layers\n    map: [0, {layer: 0, scale: 0.5}, {layer: 1, scale: 0.25}, 2, "
                     "{layer: 1, scale: 1.5}, 3]\n",
                     [0, 0, 1, 2, 1, 3], [1, 0.5, 0.25, 1, 1.5, 1]),
    "interpolate-split": ("  - op: interpolate\n    factor: 2\n    layers: [1, 2]\n    branch_scale: split\n",
                          [0, 1, 1, 2, 2, 3], [1, 0.5, 0.5, 0.5, 0.5, 1]),
    "stack-sqrt": ("  - op: stack\n    factor: 2\n    layers: {from: 1, to: 3}\n    branch_scale: sqrt\n",
                   [0, 1, 2, 1, 2, 3], [1] + [2 ** -0.5] * 4 + [1]),
    "splice-then-drop": ("  - op: splice\n    trim: 1\n  - op: drop\n    layers: [0]\n",
                         [1, 2, 1, 2, 3], [1, 1, 1, 1, 1]),
    "two-steps-compose": ("  - op: interpolate\n    factor: 2\n    branch_scale: 0.5\n    layers: [3]\n"
                          "  - op: layers\n    map: [0, 1, 2, 3, {layer: 4, scale: 0.5}]\n",
                          [0, 1, 2, 3, 3], [1, 1, 1, 0.5, 0.25]),
}  # fmt: skip
EXACT = ("interpolate-zero", "scale-zero-map")


@pytest.mark.parametrize("case", list(CASES))
def test_grown_model_matches_hooked_reference(tiny, family, tmp_path, case):
    steps, sources, scales = CASES[case]
    src_dir = tiny(family)
    grow(src_dir, plan(steps), tmp_path / "out")
    source, grown = load(src_dir), load(tmp_path / "out")
    ids = prompt_ids(source.config.vocab_size)
    want = logits(reference_model(source, family, sources, scales), ids)
    got = logits(grown, ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    if case in EXACT:  # identity layers: the source's own logits, to float32 precision
        assert (got - logits(source, ids)).abs().max().item() <= 1e-5
    else:  # the check can fail: ignoring the scales (or the new layer order) gives another model
        scaled = any(s != 1.0 for s in scales)
        other = reference_model(source, family, sources, [1.0] * len(sources)) if scaled else source
        assert (got - logits(other, ids)).abs().max().item() > 1e-3


def test_per_layer_config_lists_follow_the_map(tiny, family, tmp_path):
    steps, sources, _ = CASES["splice-then-drop"]
    src_dir = tiny(family)
    grow(src_dir, plan(steps), tmp_path / "out")
    before = json.loads((src_dir / "config.json").read_text())
    after = json.loads((tmp_path / "out" / "config.json").read_text())
    key = "n_layer" if family == "gpt2" else "num_hidden_layers"
    assert after[key] == len(sources)
    if "layer_types" in before:
        assert len(set(before["layer_types"])) > 1, "fixture should mix attention kinds"
        assert after["layer_types"] == [before["layer_types"][s] for s in sources]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copied_tensors_are_bit_identical(tiny, family, tmp_path, dtype):
    steps, sources, scales = CASES["mixed-scales"]
    src_dir = tiny(family, dtype=dtype)
    prep = grow(src_dir, plan(steps), tmp_path / "out")
    prefix = prep.spec.layer_prefix
    branch_modules = {br.module for br in prep.spec.branches.values()}
    src_tensors = {n: prep.ckpt.load(n) for n in prep.ckpt.names}
    out = {}
    for f in (tmp_path / "out").glob("*.safetensors"):
        with safe_open(f, "pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    assert set(out) == {t.name for t in prep.tensors}
    checked = 0
    for name, value in out.items():
        if not name.startswith(prefix):
            assert torch.equal(value.view(torch.uint8), src_tensors[name].view(torch.uint8)), name
            continue
        j, suffix = name[len(prefix) :].split(".", 1)
        j = int(j)
        original = src_tensors[f"{prefix}{sources[j]}.{suffix}"]
        assert value.dtype == original.dtype == dtype
        if scales[j] == 1.0 or suffix.rsplit(".", 1)[0] not in branch_modules:
            assert torch.equal(value.view(torch.uint8), original.view(torch.uint8)), name
            checked += 1
        else:
            assert not torch.equal(value, original), f"{name} should carry scale {scales[j]}"
    assert checked > 0


def test_input_checkpoint_is_not_modified(tiny, tmp_path):
    import hashlib

    src_dir = tiny("llama")
    digest = lambda: {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(src_dir.iterdir())}
    before = digest()
    grow(src_dir, plan(CASES["mixed-scales"][0]), tmp_path / "out")
    assert digest() == before

"""Every shipped plan validates, documents its command, and grows a real tiny model that
transformers loads, with the equivalence class its header comment claims."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference import logits, prompt_ids
from transformers import AutoModelForCausalLM

from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import load_plan

PLANS = sorted((Path(__file__).parent.parent / "plans").glob("*.yaml"))


def test_the_five_plans_are_shipped():
    assert {p.stem for p in PLANS} >= {"double", "llama-pro", "solar", "stack4", "midas", "hypercloning-2x"}


def _other_models(loaded, tiny, tmp_path, monkeypatch, source: str) -> int:
    """A multi-model plan names its other models relative to the working directory: make each a
    32-layer model (the shipped two-model plan's size) of another seed there; 8 layers otherwise."""
    if not loaded.plan.models:
        return 8
    for i, name in enumerate(loaded.plan.models):
        (tmp_path / name).symlink_to(tiny(source, n_layers=32, seed=i + 1), target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return 32


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.stem)
def test_shipped_plan(path, tiny, tmp_path, monkeypatch):
    text = path.read_text()
    assert text.startswith(f"# plans/{path.name}: surgeon grow MODEL --plan plans/{path.name} -o OUT")
    claimed = (
        next(line for line in text.splitlines() if "Equivalence:" in line)
        .split("Equivalence:")[1]
        .split()[0]
        .strip(".;(")
    )
    # A plan for another family names it ("Source: mixtral"); the rest run on Llama.
    source = next(
        (line.split("Source:")[1].split()[0].strip(".;") for line in text.splitlines() if "Source:" in line), "llama"
    )
    loaded = load_plan(path)
    src = tiny(source, n_layers=_other_models(loaded, tiny, tmp_path, monkeypatch, source))
    prep = grow(src, loaded, tmp_path / "out")
    assert prep.equivalence == claimed
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert model.config.num_hidden_layers == len(prep.layer_map) >= 8
    assert prep.params_out > prep.params_in  # every shipped plan grows the model
    ids = prompt_ids(model.config.vocab_size)
    if claimed == "exact":
        source = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        assert (logits(model, ids) - logits(source, ids)).abs().max().item() <= 1e-5
    assert torch.isfinite(logits(model, ids)).all()

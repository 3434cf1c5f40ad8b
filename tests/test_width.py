"""Width growth by behaviour, for every family: the widened checkpoint, loaded with
transformers, gives the source's logits; noise breaks the twins' symmetry without changing them."""

from __future__ import annotations

import json

import pytest
import torch
from reference import logits, prompt_ids
from transformers import AutoModelForCausalLM

from modelsurgeon.errors import PlanError
from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan

# Families whose head_dim is derived as hidden/heads must grow heads with hidden.
DERIVED_HEAD_DIM = {"gpt2", "gpt_neox"}


def widen(**fields) -> str:
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items())
    return f"  - op: widen\n{body}"


def grown_logits(src, out, steps):
    prep = grow(src, parse_plan(f"name: w\nsteps:\n{steps}"), out)
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return prep, model.eval()


def assert_same_function(src, grown_model):
    source = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = prompt_ids(source.config.vocab_size)
    want, got = logits(source, ids), logits(grown_model, ids)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


CASES = {
    "ffn2x": {"ffn": "2x"},
    "heads2x": {"heads": "2x"},
    "hidden2x": {"hidden": "2x"},
    "all2x": {"hidden": "2x", "ffn": "2x", "heads": "2x"},
    "all2x-noise": {"hidden": "2x", "ffn": "2x", "heads": "2x", "noise": "{snr_db: 30, seed: 0}"},
    "hidden3x-ffn-uneven": {"hidden": "3x", "ffn": 133, "heads": "3x"},  # 133: no multiple of 96 or 128
}


@pytest.mark.parametrize("case", list(CASES))
def test_widen_preserves_logits(tiny, family, tmp_path, case):
    fields = dict(CASES[case])
    src = tiny(family)
    if family in DERIVED_HEAD_DIM and case == "heads2x":  # head_dim = hidden/heads would change
        with pytest.raises(PlanError, match="grow hidden and heads by the same factor"):
            grow(src, parse_plan(f"name: w\nsteps:\n{widen(**fields)}"), tmp_path / "out")
        return
    if family in DERIVED_HEAD_DIM and case == "hidden2x":
        fields["heads"] = "2x"
    prep, model = grown_logits(src, tmp_path / "out", widen(**fields))
    assert prep.equivalence == "exact"
    src_cfg = json.loads((src / "config.json").read_text())
    d = prep.width.src
    assert model.config.hidden_size == d.hidden * int(str(fields.get("hidden", "1x"))[0])
    assert prep.params_out > prep.params_in
    assert_same_function(src, model)
    if "tie_word_embeddings" in src_cfg:  # tied stays tied (compensated in the final norm)
        assert model.config.tie_word_embeddings == src_cfg["tie_word_embeddings"]


def test_widen_then_deepen_is_exact(tiny, family, tmp_path):
    extra = {"heads": "2x"} if family in DERIVED_HEAD_DIM else {}
    steps = widen(hidden="2x", ffn="2x", **extra) + "  - op: interpolate\n    factor: 2\n    new: zero\n"
    prep, model = grown_logits(tiny(family), tmp_path / "out", steps)
    assert prep.equivalence == "exact" and len(prep.layer_map) == 8
    assert_same_function(tiny(family), model)


@pytest.mark.parametrize("family_", ["llama", "gemma2", "qwen3"])
def test_uneven_hidden_is_approx_and_unties(tiny, tmp_path, family_):
    src = tiny(family_)
    prep, model = grown_logits(src, tmp_path / "out", widen(hidden=40))
    assert prep.equivalence == "approx" and model.config.hidden_size == 40
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    if json.loads((src / "config.json").read_text()).get("tie_word_embeddings"):
        assert cfg["tie_word_embeddings"] is False and any("untied" in w for w in prep.warnings)
    source = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    ids = prompt_ids(source.config.vocab_size)
    a, b = logits(source, ids), logits(model, ids)
    assert torch.isfinite(b).all()
    # approximate: the top token mostly survives an uneven 32 -> 40 replication
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.5


def _twin_gap(model, d: int) -> tuple[float, float]:
    """Largest difference between hidden-unit twins (j, j+d) in the embedding and in q_proj's
    input columns."""
    emb = model.get_input_embeddings().weight
    q = model.model.layers[0].self_attn.q_proj.weight
    return (emb[:, :d] - emb[:, d:]).abs().max().item(), (q[:, :d] - q[:, d:]).abs().max().item()


@pytest.mark.parametrize("noise", [False, True])
def test_noise_breaks_twin_symmetry_under_training(tiny, tmp_path, noise):
    fields = {"hidden": "2x", "ffn": "2x"}
    if noise:
        fields["noise"] = "{snr_db: 20, seed: 3}"
    src = tiny("llama")
    _, model = grown_logits(src, tmp_path / "out", widen(**fields))
    d = 32
    emb_gap, q_gap = _twin_gap(model, d)
    assert emb_gap == 0.0  # embeddings are tiled exactly: noise only goes on split inputs
    assert (q_gap > 1e-3) if noise else (q_gap == 0.0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = prompt_ids(model.config.vocab_size, n=24)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    emb_gap, _ = _twin_gap(model, d)
    if noise:
        assert emb_gap > 1e-4  # twins received different gradients
    else:
        assert emb_gap <= 1e-6  # identical twins stay identical (up to float rounding)


def test_noise_is_deterministic(tiny, tmp_path):
    steps = widen(hidden="2x", noise="{std: 0.01, seed: 7}")
    src = tiny("llama")
    for out in ("a", "b"):
        grow(src, parse_plan(f"name: w\nsteps:\n{steps}"), tmp_path / out)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "family_, fields, msg",
    [
        ("gpt2", {"hidden": "2x"}, "derives head_dim as hidden/heads"),
        ("gpt_neox", {"hidden": 48}, "heads: 1.5x"),
        ("llama", {"ffn": 10}, "smaller than the current"),
        ("llama", {"hidden": "0.5x"}, "widen never shrinks"),
        ("llama", {"heads": "1.5x"}, "integer multiple"),
        ("llama", {"noise": "{snr_db: 10}"}, "at least one of hidden, ffn, heads"),
    ],
)
def test_bad_widen(tiny, tmp_path, family_, fields, msg):
    with pytest.raises(PlanError, match=msg):
        grow(tiny(family_), parse_plan(f"name: w\nsteps:\n{widen(**fields)}"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_family_cannot_widen(tiny, tmp_path):
    import shutil

    src = tmp_path / "m"
    shutil.copytree(tiny("llama"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "my_custom_lm"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PlanError, match="lacks in the table"):
        grow(src, parse_plan(f"name: w\nsteps:\n{widen(ffn='2x')}"), tmp_path / "out")

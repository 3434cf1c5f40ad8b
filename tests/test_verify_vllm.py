"""surgeon verify --engine vllm: grown checkpoints load in vLLM (in its own venv, in a
subprocess) and generate what transformers generates. Slow (about 30-40 s per vLLM start on
CPU); .ci/run installs vLLM with scripts/setup_vllm_cpu.sh and runs these in their own step."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan
from modelsurgeon.verify import verify_checkpoint
from modelsurgeon.verify.vllm_engine import NO_VLLM, vllm_python_or_none

pytestmark = [pytest.mark.slow, pytest.mark.skipif(vllm_python_or_none() is None, reason=NO_VLLM)]
# vLLM's CPU attention rejects the tiny models' head_dim of 8 ("Unsupported CPU attention
# configuration: head_dim=8"); hidden 256 over 4 heads gives head_dim 64, which it accepts.
VLLM_SIZE = dict(hidden=256, heads=4, kv_heads=2)
# vLLM refuses Qwen3 with some-but-not-all sliding layers ("Sliding window for some but all
# layers is not supported"), so its Qwen3 is all full attention; gemma2 covers per-layer kinds.
MODELS = {
    "llama": {},
    "gemma2": {},
    "qwen3": dict(use_sliding_window=False, layer_types=["full_attention"] * 4),
}
INTERPOLATE_ZERO = parse_plan("name: interpolate-zero\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n")


def _grown(tiny, tmp_path, family):
    src = tiny(family, **VLLM_SIZE, **MODELS[family])
    grow(src, INTERPOLATE_ZERO, tmp_path / "grown")
    return src, tmp_path / "grown"


def _show(report) -> None:
    v = report.vllm
    print(
        f"\n[vllm {v['version']}] {report.grown}: load {v['load_s']:.1f}s, {v['tokens_per_s']:.1f} tokens/s, "
        f"greedy agreement vs grown {v['agreement_vs_grown']:.3f}, vs source "
        f"{v.get('agreement_vs_source', float('nan')):.3f}, "
        f"max |dlogprob| {v['max_logprob_delta_vs_grown']:.2e}"
    )


@pytest.mark.parametrize("family", list(MODELS))
def test_vllm_generates_what_transformers_generates(tiny, tmp_path, family):
    src, out = _grown(tiny, tmp_path, family)
    report = verify_checkpoint(src, out, engine="both")
    _show(report)
    assert report.passed, [c for c in report.checks if not c.passed]
    assert report.vllm["agreement_vs_grown"] == 1.0 and report.vllm["agreement_vs_source"] == 1.0
    assert report.vllm["max_logprob_delta_vs_source"] < 1e-3


def test_vllm_reads_the_remapped_layer_types(tiny, tmp_path):
    """vLLM follows config.json's layer_types: with the list left un-remapped (tiled), its
    prompt log-probs match transformers on GROWN but not the source."""
    src, out = _grown(tiny, tmp_path, "gemma2")
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    before = json.loads((src / "config.json").read_text())["layer_types"]
    cfg = json.loads((bad / "config.json").read_text())
    cfg["layer_types"] = [before[j % len(before)] for j in range(len(cfg["layer_types"]))]
    (bad / "config.json").write_text(json.dumps(cfg))
    report = verify_checkpoint(src, bad, engine="vllm")
    _show(report)
    failed = {c.name for c in report.failures}
    assert failed == {"config lists follow the layer map", "vLLM prompt log-probs = transformers on SOURCE"}


def test_vllm_cli_bfloat16(tiny, tmp_path):
    src, out = _grown(tiny, tmp_path, "llama")
    path = tmp_path / "report.json"
    result = CliRunner().invoke(
        app, ["verify", str(src), str(out), "--engine", "vllm", "--dtype", "bfloat16", "--json", str(path)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    assert data["vllm"]["ok"] and data["vllm"]["agreement_vs_grown"] == 1.0 and data["passed"]

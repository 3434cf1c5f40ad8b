"""One verify path: `grow --dry-run --drift`, `demo` and scripts/real_model_drift.py report what
`surgeon verify` reports on the same grown model (one prompt set, one comparator, one set of
checks), and a demo whose growth is broken fails with verify's own message."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from test_cli import run

from modelsurgeon import demo
from modelsurgeon.errors import VerifyError
from modelsurgeon.plan import load_plan, parse_plan
from modelsurgeon.verify import verify_checkpoint
from modelsurgeon.verify.drift import measure_drift

ROOT = Path(__file__).parent.parent
DOUBLE = ROOT / "plans" / "double.yaml"  # approx: the logits move, so equal numbers are not equal zeros


def test_dry_run_drift_reports_verify_on_the_grown_model(tiny, tmp_path):
    src = tiny("llama")
    dry = run("grow", src, "--plan", DOUBLE, "--dry-run", "--drift")
    assert dry.exit_code == 0, dry.output
    assert run("grow", src, "--plan", DOUBLE, "-o", tmp_path / "out").exit_code == 0
    report = verify_checkpoint(src, tmp_path / "out")
    assert report.metrics["logits"]["mean_kl"] > 0.01 and report.metrics["logits"]["top1"] < 1
    assert f"measured drift (surgeon verify on a temporary grown copy): {report.drift_line()}" in dry.output
    assert "approx checks: pass" in dry.output
    verified = json.loads(run("verify", src, tmp_path / "out", "--json", "-").stdout)
    _, drift = measure_drift(src, load_plan(DOUBLE))
    assert verified["metrics"]["logits"] == json.loads(json.dumps(drift.to_dict()))["metrics"]["logits"]


def test_drift_of_an_uneven_widen_compares_logits_only(tiny):
    """bert2BERT widths (32 -> 40) cannot be read back at the source width: verify compares the
    logits, says why the per-layer checks are skipped, and does not fail the approx class."""
    prep, report = measure_drift(tiny("llama"), parse_plan("name: w\nsteps:\n  - op: widen\n    hidden: 40\n"))
    assert prep.equivalence == "approx" and report.passed, report.failures
    assert 0 < report.metrics["logits"]["mean_kl"] < 0.5 and report.metrics["layer_drift"] == []
    assert any("hidden_size 32 -> 40 is not a multiple" in n for n in report.notes)


def test_demo_shows_verify_reports(tmp_path):
    console = Console(record=True, width=200)
    results = demo.run_demo(tmp_path, console)
    shown = console.export_text()
    for r in results:
        again = verify_checkpoint(tmp_path / "tiny-llama", r["out"])
        assert r["report"].metrics["logits"] == again.metrics["logits"]
        assert f"surgeon verify: {r['out']} " in shown
        assert f"KL(source || grown) │ {again.metrics['logits']['mean_kl']:.4g} nats/token" in shown
    assert [r["plan"] for r in results] == list(demo.DEMO_PLANS) and shown.count("checks: PASS") == len(results)


def test_demo_fails_with_verify_message(tmp_path, monkeypatch):
    """An identity layer that is not an identity: demo stops with verify's diagnosis."""
    grow = demo.grow

    def broken_grow(model, plan, out, **kw):
        prep = grow(model, plan, out, **kw)
        for f in out.glob("*.safetensors"):
            tensors = load_file(f)
            o_proj = tensors["model.layers.4.self_attn.o_proj.weight"]  # zero in llama-pro's identity copy
            o_proj += 0.1 * torch.randn_like(o_proj)
            save_file(tensors, f, metadata={"format": "pt"})
        return prep

    monkeypatch.setattr(demo, "grow", broken_grow)
    result = run("demo", "--workdir", tmp_path)
    assert result.exit_code == VerifyError.exit_code
    assert "fails" in result.output and "exact check(s)" in result.output and "grown layer 4" in result.output


def test_real_model_drift_script_runs(tiny, capsys, monkeypatch):
    model = tiny("llama", n_layers=8)
    argv = ["real_model_drift.py", "--model", str(model), "--plans", str(ROOT / "plans" / "llama-pro.yaml")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "scripts" / "real_model_drift.py"), run_name="__main__")
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| llama-pro (8 -> 10 layers") and "| exact | 0 | 0.000 | 1.000 |" in row

"""The CLI end to end: grow writes a complete, loadable output directory with provenance;
--dry-run writes nothing; inspect and plan check report from headers."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import PlanError

PLANS = Path(__file__).parent.parent / "plans"
LLAMA_PRO = PLANS / "llama-pro.yaml"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_grow_writes_complete_output(tiny, tmp_path):
    src = tiny("qwen3", n_layers=8)
    out = tmp_path / "grown"
    result = run("grow", src, "--plan", LLAMA_PRO, "-o", out, "--max-shard-size", "30KB")
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "surgeon.json",
        "README.md",
        "generation_config.json",
        "model.safetensors.index.json",
    } <= names
    assert {p.name for p in src.iterdir() if "token" in p.name} <= names  # tokenizer files copied
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    m = json.loads((out / "surgeon.json").read_text())
    assert m["equivalence"] == "exact" and m["plan"]["text"] == LLAMA_PRO.read_text()
    assert [e["source"] for e in m["layer_map"]] == [0, 1, 2, 3, 3, 4, 5, 6, 7, 7]
    assert m["source"]["num_layers"] == 8 and len(m["source"]["headers_sha256"]) == 64
    assert m["output"]["tensors"] == len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])
    assert m["config_lists_remapped"] == ["layer_types"] and m["lineage"][-1]["plan"] == "llama-pro"
    assert "Growth with modelsurgeon" in (out / "README.md").read_text()


def test_lineage_accumulates(tiny, tmp_path):
    run("grow", tiny("llama", n_layers=8), "--plan", LLAMA_PRO, "-o", tmp_path / "a")
    assert run("grow", tmp_path / "a", "--plan", PLANS / "double.yaml", "-o", tmp_path / "b").exit_code == 0
    lineage = json.loads((tmp_path / "b" / "surgeon.json").read_text())["lineage"]
    assert [s["plan"] for s in lineage] == ["llama-pro", "double"] and lineage[1]["layers"] == [10, 20]


def test_dry_run_prints_map_and_writes_nothing(tiny, tmp_path):
    result = run("grow", tiny("gemma2", n_layers=8), "--plan", PLANS / "solar.yaml", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "8 -> 12 layers" in result.output and "none" in result.output and "parameters" in result.output
    assert list(tmp_path.iterdir()) == []


def test_inspect_json(tiny):
    result = run("inspect", tiny("gemma2"), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["model_type"] == "gemma2" and info["num_layers"] == 4 and info["tie_word_embeddings"] is True
    assert info["lm_head_stored"] is False and len(info["per_layer_config_lists"]["layer_types"]) == 4
    assert run("inspect", tiny("gpt2")).exit_code == 0


def test_plan_check(tiny):
    assert run("plan", "check", PLANS / "double.yaml").exit_code == 0
    ok = run("plan", "check", PLANS / "midas.yaml", "--model", tiny("llama", n_layers=8))
    assert ok.exit_code == 0 and "8 -> 12 layers" in ok.output
    bad = run("plan", "check", PLANS / "midas.yaml", "--model", tiny("llama", n_layers=2))
    assert bad.exit_code == PlanError.exit_code and "middle: 4 is more than the 2 layers" in bad.output


def test_mergekit_config_through_cli(tiny, tmp_path):
    cfg = tmp_path / "mk.yml"
    cfg.write_text(
        "merge_method: passthrough\nslices:\n  - sources: [{model: x, layer_range: [0, 3]}]\n"
        "  - sources: [{model: x, layer_range: [1, 4]}]\n"
    )
    result = run("grow", tiny("llama"), "--plan", cfg, "-o", tmp_path / "out")
    assert result.exit_code == 0 and "translated mergekit passthrough" in result.output
    m = json.loads((tmp_path / "out" / "surgeon.json").read_text())
    assert [e["source"] for e in m["layer_map"]] == [0, 1, 2, 1, 2, 3]


def test_bad_size_flag(tiny, tmp_path):
    result = run("grow", tiny("llama"), "--plan", LLAMA_PRO, "-o", tmp_path / "o", "--max-shard-size", "lots")
    assert result.exit_code == 2 and "not a size" in result.output


def test_demo(tmp_path):
    result = run("demo", "--workdir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "llama-pro" in result.output and "exact" in result.output and "approx" in result.output
    assert json.loads((tmp_path / "tiny-llama-llama-pro" / "surgeon.json").read_text())["equivalence"] == "exact"


def test_accounting_counts_dropped_layers(tiny, tmp_path):
    plan = tmp_path / "drop.yaml"
    plan.write_text("name: d\nsteps:\n  - op: drop\n    layers: [1, 2]\n")
    assert run("grow", tiny("llama"), "--plan", plan, "-o", tmp_path / "out").exit_code == 0
    acc = json.loads((tmp_path / "out" / "surgeon.json").read_text())["input_tensors"]
    assert acc == {"copied": 3, "in_mapped_layers": 18, "dropped_with_layers": 18}

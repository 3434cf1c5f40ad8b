"""Multi-model splices: layers, embeddings and head from several checkpoints of one family,
checked from headers before writing, recorded in surgeon.json, and bit-identical to mergekit's
passthrough on the same two-model config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from modelsurgeon.errors import PlanError
from modelsurgeon.grow.engine import grow, prepare
from modelsurgeon.io.hf_files import headers_sha256
from modelsurgeon.io.reader import open_checkpoint
from modelsurgeon.manifest import lineage_layer_map, read_manifest
from modelsurgeon.plan import parse_plan
from modelsurgeon.verify.api import verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MERGEKIT = Path(os.environ.get("SURGEON_MERGEKIT", ROOT / "bench_out" / "mergekit-venv" / "bin" / "mergekit-yaml"))


def tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture
def pair(tiny):
    """Two untied llamas of one width, different weights and depths (4 and 6 layers)."""
    return tiny("llama", 4), tiny("llama", 6, seed=1)


def plan_for(b: Path, extra: str = "", map_tail: str = "") -> str:
    return (
        f"name: two\n{extra}steps:\n  - op: layers\n    map:\n      - {{from: 0, to: 2}}\n"
        f"      - {{model: '{b}', from: 2, to: 6}}\n      - {{model: '{b}', layer: 1, scale: 0.5}}\n{map_tail}"
    )


def test_splice_takes_each_layer_from_its_model(pair, tmp_path):
    a, b = pair
    prep = grow(a, parse_plan(plan_for(b, f"head_from: '{b}'\n")), tmp_path / "out")
    assert [(e.model, e.source, e.scale) for e in prep.layer_map] == [
        (0, 0, 1.0),
        (0, 1, 1.0),
        (1, 2, 1.0),
        (1, 3, 1.0),
        (1, 4, 1.0),
        (1, 5, 1.0),
        (1, 1, 0.5),
    ]
    assert prep.equivalence == "none"
    out, ta, tb = tensors(tmp_path / "out"), tensors(a), tensors(b)
    p = "model.layers."
    assert torch.equal(out[f"{p}1.self_attn.q_proj.weight"], ta[f"{p}1.self_attn.q_proj.weight"])
    assert torch.equal(out[f"{p}2.mlp.up_proj.weight"], tb[f"{p}2.mlp.up_proj.weight"])
    assert torch.equal(out[f"{p}5.mlp.down_proj.weight"], tb[f"{p}5.mlp.down_proj.weight"])
    assert torch.equal(out[f"{p}6.mlp.down_proj.weight"], 0.5 * tb[f"{p}1.mlp.down_proj.weight"])
    assert torch.equal(out["model.embed_tokens.weight"], ta["model.embed_tokens.weight"])  # MODEL by default
    for name in ("model.norm.weight", "lm_head.weight"):
        assert torch.equal(out[name], tb[name])
    assert prep.accounting["replaced"] == 2 and prep.accounting["copied"] == 1
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_manifest_records_every_source_fingerprint(pair, tmp_path):
    a, b = pair
    grow(a, parse_plan(plan_for(b)), tmp_path / "out")
    m = read_manifest(tmp_path / "out")
    assert m.multi_model and [Path(r.path) for r in m.models] == [b.resolve()]
    assert m.models[0].headers_sha256 == headers_sha256(open_checkpoint(b).files) != m.source.headers_sha256
    assert m.models[0].config_sha256 and m.models[0].num_layers == 6
    assert m.lineage[-1].models == m.models
    assert [r.model for r in m.layer_map] == [0, 0, 1, 1, 1, 1, 1]
    raw = json.loads((tmp_path / "out" / "surgeon.json").read_text())
    assert "model" not in raw["layer_map"][0] and raw["layer_map"][2]["model"] == 1  # MODEL's layers as before
    # A layer of another model has no ancestor in MODEL: no lineage map across the splice.
    assert lineage_layer_map(m, m.source.headers_sha256, 7) is None
    assert "of `" in (tmp_path / "out" / "README.md").read_text()


def test_a_cast_reads_each_layer_from_its_own_model(pair, tmp_path):
    """A mergekit dtype casts every tensor; layer 2 of `b` must not be read as MODEL's layer 2."""
    a, b = pair
    config = tmp_path / "mk.yml"
    config.write_text(
        f"merge_method: passthrough\ndtype: bfloat16\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n"
        f"  - sources: [{{model: {b}, layer_range: [2, 4]}}]\n"
    )
    grow(a, config, tmp_path / "out")
    out, tb = tensors(tmp_path / "out"), tensors(b)
    name = "model.layers.2.mlp.up_proj.weight"
    assert out[name].dtype == torch.bfloat16 and torch.equal(out[name], tb[name].to(torch.bfloat16))
    assert torch.equal(out["lm_head.weight"], tb["lm_head.weight"].to(torch.bfloat16))


def test_embeddings_from_another_model(pair, tmp_path):
    a, b = pair
    grow(a, parse_plan(plan_for(b, f"embeddings_from: '{b}'\n")), tmp_path / "out")
    out, ta, tb = tensors(tmp_path / "out"), tensors(a), tensors(b)
    assert torch.equal(out["model.embed_tokens.weight"], tb["model.embed_tokens.weight"])
    assert torch.equal(out["lm_head.weight"], ta["lm_head.weight"])


def test_mismatched_models_are_refused_with_every_problem_before_writing(tiny, tmp_path):
    a = tiny("llama", 4)
    wide = tiny("llama", 6, hidden=64, seed=2)
    with pytest.raises(PlanError) as exc:
        grow(a, parse_plan(plan_for(wide)), tmp_path / "out")
    msg = str(exc.value)
    assert "hidden_size = 64, MODEL has 32" in msg and "intermediate_size = 192, MODEL has 96" in msg
    assert "one family and width" in msg
    assert not (tmp_path / "out").exists()


def test_a_layer_shaped_unlike_models_layers_is_named(tiny, tmp_path):
    """Same config widths, different tensors (a bias the other model lacks): caught from headers."""
    a = tiny("llama", 4)
    biased = tiny("llama", 6, seed=3, attention_bias=True)
    with pytest.raises(PlanError, match=r"layer 2: extra \['self_attn.k_proj.bias'"):
        prepare(a, parse_plan(plan_for(biased)))


def test_missing_models_are_all_listed(tiny, tmp_path):
    a = tiny("llama", 4)
    text = (
        f"name: x\nembeddings_from: {tmp_path / 'nope'}\nsteps:\n  - op: layers\n    map:\n"
        f"      - {{model: org/hub-model, from: 0, to: 2}}\n"
    )
    with pytest.raises(PlanError) as exc:
        prepare(a, parse_plan(text))
    assert "'org/hub-model': org/hub-model: not a directory" in str(exc.value)
    assert "nope: not a directory" in str(exc.value) and "download hub models first" in str(exc.value)


def test_out_of_range_layer_of_another_model_names_it(pair):
    a, b = pair
    text = f"name: x\nsteps:\n  - op: layers\n    map:\n      - {{model: '{b}', from: 4, to: 9}}\n"
    with pytest.raises(PlanError, match=r"map\[0\]: range \{from: 4, to: 9\} is out of range for 6 layers \(model"):
        prepare(a, parse_plan(text))


def test_tied_head_must_follow_the_embeddings(tiny):
    a, b = tiny("llama", 4, tie_word_embeddings=True), tiny("llama", 4, seed=1, tie_word_embeddings=True)
    with pytest.raises(PlanError, match="embeddings_from and head_from must name the same model"):
        prepare(a, parse_plan(f"name: x\nhead_from: '{b}'\nsteps:\n  - op: layers\n    map: [0, 1]\n"))


def test_upcycling_a_splice_is_refused_for_now(pair):
    a, b = pair
    text = plan_for(b, map_tail="  - op: upcycle\n    experts: 2\n    top_k: 1\n")
    with pytest.raises(PlanError, match="upcycle after layers from other models is not supported yet"):
        prepare(a, parse_plan(text))


def test_naming_model_itself_is_the_plain_map(pair):
    a, _ = pair
    prep = prepare(
        a, parse_plan(f"name: x\nsteps:\n  - op: layers\n    map:\n      - {{model: '{a}', from: 0, to: 4}}\n")
    )
    assert prep.equivalence == "exact" and len(prep.sources) == 1


@pytest.mark.slow
def test_verify_reports_what_a_splice_cannot_check(pair, tmp_path):
    a, b = pair
    grow(a, parse_plan(plan_for(b)), tmp_path / "out")
    report = verify_checkpoint(a, tmp_path / "out", max_new_tokens=2)
    assert report.equivalence == "none" and report.passed
    assert any("not checkable against one SOURCE" in n for n in report.notes)


@pytest.mark.slow
@pytest.mark.skipif(
    not MERGEKIT.is_file(), reason=f"mergekit not installed at {MERGEKIT} (scripts/setup_mergekit_venv.sh)"
)
def test_two_model_passthrough_is_bit_identical_to_mergekit(pair, tmp_path):
    a, b = pair
    config = tmp_path / "frank.yml"
    config.write_text(f"""merge_method: passthrough
dtype: float32
slices:
  - sources: [{{model: {a}, layer_range: [0, 3]}}]
  - sources: [{{model: {b}, layer_range: [1, 6]}}]
  - sources: [{{model: {a}, layer_range: [3, 4]}}]
  - sources: [{{model: {b}, layer_range: [5, 6]}}]
""")
    prep = grow(a, config, tmp_path / "ours")
    assert prep.loaded.plan.head_from == str(b)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run(
        [str(MERGEKIT), str(config), str(tmp_path / "mk"), "--no-copy-tokenizer"],
        check=True,
        env=env,
        capture_output=True,
    )
    ours, theirs = tensors(tmp_path / "ours"), tensors(tmp_path / "mk")
    assert set(ours) == set(theirs)
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)
    cfg = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("ours", "mk")]
    assert cfg[0]["num_hidden_layers"] == cfg[1]["num_hidden_layers"] == 10
    shutil.rmtree(tmp_path / "mk")

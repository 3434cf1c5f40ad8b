"""surgeon verify as a gate: exact growth passes for every family and exact operator; a
corrupted output fails, and the message names the cause (which check, which grown layer)."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import MissingManifestError, VerifyError
from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan
from modelsurgeon.verify import verify_checkpoint
from modelsurgeon.verify.compare import alignment

EXACT_OPS = {
    "interpolate-zero": "  - op: interpolate\n    factor: 2\n    new: zero\n",
    "stack-zero": "  - op: stack\n    factor: 2\n    layers: {from: 1, to: 3}\n    new: zero\n",
    "layers-scale0": "  - op: layers\n    map: [0, {layer: 0, scale: 0}, 1, 2, {layer: 3, scale: 0}, 3]\n",
}
# interpolate-zero on 4 layers: grown layers 0..7 are copies of [0, 0, 1, 1, 2, 2, 3, 3], odd ones identities.
FAST = dict(max_new_tokens=4)


def grown(tiny, tmp_path, family="llama", op="interpolate-zero", name="out"):
    out = tmp_path / name
    grow(tiny(family), parse_plan(f"name: {op}\nsteps:\n{EXACT_OPS[op]}"), out)
    return out


def layer_prefix(family: str) -> str:
    return {"gpt2": "transformer.h.", "gpt_neox": "gpt_neox.layers."}.get(family, "model.layers.")


def rewrite_tensors(directory, edit) -> None:
    """Apply edit(dict of tensors) -> dict to every safetensors file (tiny outputs are one file)."""
    for f in directory.glob("*.safetensors"):
        save_file(edit(load_file(f)), f, metadata={"format": "pt"})


def perturb(directory, name: str) -> None:
    def edit(tensors):
        g = torch.Generator().manual_seed(0)
        x = tensors[name]
        tensors[name] = x + 0.5 * (x.std() + 0.1) * torch.randn(x.shape, generator=g, dtype=x.dtype)
        return tensors

    rewrite_tensors(directory, edit)


def swap_layers(directory, prefix: str, a: int, b: int) -> None:
    def rename(k: str) -> str:
        for x, y in ((a, b), (b, a)):
            if k.startswith(f"{prefix}{x}."):
                return f"{prefix}{y}." + k[len(f"{prefix}{x}.") :]
        return k

    rewrite_tensors(directory, lambda t: {rename(k): v for k, v in t.items()})


def failure(report) -> str:
    with pytest.raises(VerifyError) as info:
        report.raise_if_failed()
    return str(info.value)


@pytest.mark.parametrize("op", list(EXACT_OPS))
def test_exact_growth_passes(tiny, family, tmp_path, op):
    report = verify_checkpoint(tiny(family), grown(tiny, tmp_path, family, op), **FAST)
    assert report.equivalence == "exact" and report.origin == "surgeon.json"
    assert report.passed, [c for c in report.checks if not c.passed]
    assert report.metrics["logits"]["max_abs"] <= 1e-5 and report.metrics["greedy"]["identical"] == report.prompts
    assert len(report.metrics["layer_drift"]) == 1 + len(
        json.loads((tmp_path / "out" / "surgeon.json").read_text())["layer_map"]
    )


def test_perturbed_tensor_names_the_first_diverging_layer(tiny, family, tmp_path):
    out = grown(tiny, tmp_path, family)
    victim = next(
        k
        for k in sorted(load_file(next(out.glob("*.safetensors"))))
        if k.startswith(f"{layer_prefix(family)}2.") and k.endswith("weight")
    )
    perturb(out, victim)
    message = failure(verify_checkpoint(tiny(family), out, **FAST))
    assert "max |dlogit|" in message and "first at prompt" in message
    assert "grown layer 2 (copy of source layer 1, branch scale 1) is the first whose output differs" in message


def test_perturbed_identity_layer_is_caught(tiny, tmp_path):
    out = grown(tiny, tmp_path, "llama")
    perturb(out, "model.layers.3.self_attn.o_proj.weight")  # zero in an identity layer: now it is not one
    message = failure(verify_checkpoint(tiny("llama"), out, **FAST))
    assert "grown layer 3 (copy of source layer 1, branch scale 0)" in message


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_swapped_layers_are_located(tiny, tmp_path, family):
    out = grown(tiny, tmp_path, family)
    swap_layers(out, layer_prefix(family), 2, 4)  # live copies of source layers 1 and 2
    message = failure(verify_checkpoint(tiny(family), out, **FAST))
    assert "grown layer 2 (copy of source layer 1, branch scale 1) is the first" in message
    assert "greedy tokens" in message or "top-1" in message


@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_config_list_not_remapped_same_length(tiny, tmp_path, family):
    """The source pattern tiled to the new depth, as a naive tool would write it."""
    src, out = tiny(family), grown(tiny, tmp_path, family)
    before = json.loads((src / "config.json").read_text())["layer_types"]
    cfg = json.loads((out / "config.json").read_text())
    cfg["layer_types"] = [before[j % len(before)] for j in range(len(cfg["layer_types"]))]
    (out / "config.json").write_text(json.dumps(cfg))
    message = failure(verify_checkpoint(src, out, **FAST))
    assert "config.json 'layer_types' differs at grown layers [1, 2, 5, 6]" in message and "not remapped" in message
    assert "max |dlogit|" in message  # and the outputs really differ (prompts exceed the sliding window)
    assert "is the first whose output differs" in message


def test_config_list_not_remapped_wrong_length(tiny, tmp_path):
    src, out = tiny("qwen3"), grown(tiny, tmp_path, "qwen3")
    cfg = json.loads((out / "config.json").read_text())
    cfg["layer_types"] = json.loads((src / "config.json").read_text())["layer_types"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        VerifyError, match=r"does not load in transformers(.|\n)*'layer_types' has 4 entries, expected 8"
    ):
        verify_checkpoint(src, out, **FAST)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_width_growth_is_exact(tiny, tmp_path, family):
    """hidden 2x tiles the stream [x, x]: layer outputs compare at source width (mean of copies)."""
    out = tmp_path / "wide"
    grow(tiny(family), parse_plan("name: w\nsteps:\n  - op: widen\n    hidden: 2x\n    ffn: 2x\n    heads: 2x\n"), out)
    report = verify_checkpoint(tiny(family), out, **FAST)
    assert report.passed and report.metrics["layer_drift"], [c for c in report.checks if not c.passed]


def test_no_manifest_needs_expect(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny("mistral"), copy)
    with pytest.raises(MissingManifestError, match="no surgeon.json") as info:
        verify_checkpoint(tiny("mistral"), copy, **FAST)
    assert "--expect" in info.value.hint
    report = verify_checkpoint(tiny("mistral"), copy, expect="exact", **FAST)
    assert report.passed and report.origin == "--expect" and report.metrics["layer_drift"]  # identity map assumed


def test_expect_overrides_manifest_and_none_only_reports(tiny, tmp_path):
    out = grown(tiny, tmp_path)
    swap_layers(out, "model.layers.", 2, 4)
    report = verify_checkpoint(tiny("llama"), out, expect="none", **FAST)
    assert report.passed and "surgeon.json says exact" in report.origin
    assert any(not c.passed and not c.gating for c in report.checks)  # differences are shown, not fatal


def test_approx_bounds(tiny, tmp_path):
    out = grown(tiny, tmp_path)
    assert verify_checkpoint(tiny("llama"), out, expect="approx", **FAST).passed
    for j in (0, 2, 4, 6):  # every live layer's MLP scrambled: far outside approx bounds
        perturb(out, f"model.layers.{j}.mlp.down_proj.weight")
    message = failure(verify_checkpoint(tiny("llama"), out, expect="approx", **FAST))
    assert "GROWN = layer map run on SOURCE" in message and "grown layer 0 (copy of source layer 0" in message
    strict = failure(verify_checkpoint(tiny("llama"), out, expect="approx", strict=True, **FAST))
    assert "top-1 agreement" in strict and "largest drift increase" in strict


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "gpt_neox", "olmo2"])
def test_approx_growth_equals_its_program(tiny, tmp_path, family):
    """x + F/2 + F/2 moves the model, by design; it must still compute exactly what the map says."""
    out = tmp_path / "double"
    grow(
        tiny(family), parse_plan("name: d\nsteps:\n  - op: interpolate\n    factor: 2\n    branch_scale: split\n"), out
    )
    report = verify_checkpoint(tiny(family), out, **FAST)
    assert report.equivalence == "approx" and report.passed, [c for c in report.checks if not c.passed]
    assert report.metrics["program"]["max_abs"] < 1e-4 < report.metrics["logits"]["max_abs"]
    up = {"gpt2": "mlp.c_fc.weight", "gpt_neox": "mlp.dense_h_to_4h.weight"}.get(family, "mlp.up_proj.weight")
    perturb(out, f"{layer_prefix(family)}5.{up}")
    message = failure(verify_checkpoint(tiny(family), out, **FAST))
    assert "GROWN = layer map run on SOURCE" in message
    assert (
        "grown layer 5 (copy of source layer 2, branch scale 0.5) is the first whose output differs from the program"
        in message
    )


def test_none_class_reports_the_program(tiny, tmp_path):
    out = tmp_path / "solar"
    grow(tiny("qwen3"), parse_plan("name: s\nsteps:\n  - op: splice\n    trim: 1\n"), out)
    report = verify_checkpoint(tiny("qwen3"), out, **FAST)
    check = next(c for c in report.checks if c.name == "GROWN = layer map run on SOURCE")
    assert report.equivalence == "none" and report.passed and check.passed and not check.gating


def test_strict_fails_on_load_warnings(tiny, tmp_path):
    out = grown(tiny, tmp_path)
    rewrite_tensors(out, lambda t: {**t, "model.stray.weight": torch.zeros(2)})
    relaxed = verify_checkpoint(tiny("llama"), out, **FAST)
    assert (
        relaxed.passed and "model.stray.weight" in next(c for c in relaxed.checks if "load warnings" in c.name).detail
    )
    assert "transformers load warnings" in failure(verify_checkpoint(tiny("llama"), out, strict=True, **FAST))


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt_neox"])
def test_layerwise_matches_whole_model(tiny, tmp_path, family):
    out = grown(tiny, tmp_path, family)
    whole = verify_checkpoint(tiny(family), out, **FAST)
    layered = verify_checkpoint(tiny(family), out, layerwise=True, **FAST)
    assert layered.passed and layered.layerwise
    assert layered.metrics["greedy"] == whole.metrics["greedy"]
    for key in ("max_abs", "mean_kl", "top1", "logit_scale"):
        assert layered.metrics["logits"][key] == pytest.approx(whole.metrics["logits"][key], abs=1e-5)
    assert layered.metrics["perplexity"] == pytest.approx(whole.metrics["perplexity"], rel=1e-5)


def test_layerwise_diagnoses_too(tiny, tmp_path):
    out = grown(tiny, tmp_path, "qwen2")
    swap_layers(out, "model.layers.", 2, 4)
    message = failure(verify_checkpoint(tiny("qwen2"), out, layerwise=True, **FAST))
    assert "grown layer 2 (copy of source layer 1, branch scale 1) is the first" in message


def test_prompt_files(tiny, tmp_path):
    out = grown(tiny, tmp_path)
    lines = tmp_path / "prompts.txt"
    lines.write_text("The sum 1 + 2 + 3 equals\n\nQuestion: what is 12 * 12? Answer:\n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"text": "The derivative of x^2 is"}\n{"text": "sqrt(16) = 4, 2^10 ="}\n')
    assert verify_checkpoint(tiny("llama"), out, prompts=lines, **FAST).prompts == 2
    assert verify_checkpoint(tiny("llama"), out, prompts=jsonl, **FAST).prompts == 2
    jsonl.write_text('{"prompt": "x"}\n')
    with pytest.raises(VerifyError, match="prompts.jsonl:1: not a JSON object with a 'text' field"):
        verify_checkpoint(tiny("llama"), out, prompts=jsonl, **FAST)


def test_alignment_follows_the_layer_map():
    exact = [(0, 1.0), (0, 0.0), (1, 1.0), (1, 0.0)]
    assert alignment(exact, 2) == [(-1, -1), (0, 0), (1, 0), (2, 1), (3, 1)]
    identity_first = [(0, 0.0), (0, 1.0), (1, 1.0)]
    assert alignment(identity_first, 2) == [(-1, -1), (0, -1), (1, 0), (2, 1)]
    split = [(0, 0.5), (0, 0.5), (1, 0.5), (1, 0.5)]
    assert alignment(split, 2) == [(-1, -1), (1, 0), (3, 1)]
    duplicated = [(0, 1.0), (0, 1.0), (1, 1.0)]  # class none: after the duplicate nothing aligns
    assert alignment(duplicated, 2) == [(-1, -1), (0, 0)]


def test_cli_exit_codes_and_json(tiny, tmp_path):
    out = grown(tiny, tmp_path)
    report_path = tmp_path / "report.json"
    ok = CliRunner().invoke(
        app, ["verify", str(tiny("llama")), str(out), "--max-new-tokens", "4", "--json", str(report_path)]
    )
    assert ok.exit_code == 0, ok.output
    data = json.loads(report_path.read_text())
    assert data["passed"] is True and data["equivalence"] == "exact" and "checks: PASS" in ok.output
    swap_layers(out, "model.layers.", 2, 4)
    bad = CliRunner().invoke(app, ["verify", str(tiny("llama")), str(out), "--max-new-tokens", "4", "--json", "-"])
    assert bad.exit_code == VerifyError.exit_code
    assert "grown layer 2 (copy of source layer 1" in bad.output
    assert json.loads(bad.stdout[: bad.stdout.rindex("}") + 1])["passed"] is False


def test_vllm_failures_are_reported(tiny, tmp_path):
    """The subprocess protocol, with a stand-in for vLLM's python that logs a dropped weight."""
    fake = tmp_path / "fake-python"
    fake.write_text(
        "#!/bin/sh\ncat > /dev/null\n"
        "echo 'WARNING [loader.py:1] Following weights were not initialized from checkpoint: {lm_head.weight}'\n"
        'echo \'SURGEON_VLLM_RESULT {"vllm_version": "0", "load_s": 1.0, "generate_s": 1.0, "tokens_per_s": 4.0, '
        '"tokens": [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]], "prompt_logprobs": [[null, -1.0], [null], [null]]}\'\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    report = verify_checkpoint(tiny("llama"), grown(tiny, tmp_path), engine="both", vllm_python=fake, **FAST)
    message = failure(report)
    assert "vLLM loads GROWN" in message and "were not initialized" in message
    assert "vLLM greedy = transformers greedy on GROWN" in message and report.vllm["tokens_per_s"] == 4.0
    assert "vLLM prompt log-probs = transformers on GROWN" in message  # positions vLLM did not score count as different
    with pytest.raises(VerifyError, match="not an executable file"):
        verify_checkpoint(tiny("llama"), tmp_path / "out", engine="vllm", vllm_python=tmp_path / "missing")


def test_grow_verify_flag(tiny, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"name: interpolate-zero\nsteps:\n{EXACT_OPS['interpolate-zero']}")
    ok = CliRunner().invoke(
        app, ["grow", str(tiny("qwen3")), "--plan", str(plan), "-o", str(tmp_path / "o"), "--verify"]
    )
    assert ok.exit_code == 0, ok.output
    assert "checks: PASS" in ok.output and "greedy tokens" in ok.output
    bad = CliRunner().invoke(app, ["grow", str(tiny("qwen3")), "--plan", str(plan), "--dry-run", "--verify"])
    assert bad.exit_code != 0 and "--verify" in bad.output

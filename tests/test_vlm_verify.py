"""`surgeon verify` on grown vision-language models: the whole model (AutoModelForImageTextToText)
runs text-only prompts, exact growth passes `exact`, a perturbed text-tower weight fails naming
the grown layer, and a perturbed vision-tower weight, which text prompts never reach, fails the
byte check naming the tensor."""

from __future__ import annotations

import json
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import VerifyError
from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import load_plan, parse_plan
from modelsurgeon.tiny_vlm import VLM_FAMILIES, build_tiny_vlm
from modelsurgeon.verify import verify_checkpoint
from modelsurgeon.verify.claims import read_structure
from modelsurgeon.verify.vllm_engine import SETUP

DEEP = "name: deep\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n"
WIDE = (
    "name: wide\nsteps:\n  - op: widen\n    hidden: 2x\n    ffn: 2x\n    heads: 2x\n  - op: stack\n"
    "    factor: 2\n    new: zero\n"
)
PLANS = {"interpolate-zero": DEEP, "widen-2x-then-stack-zero": WIDE}


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """grown(family, plan) -> (source dir, grown dir), each built once per module."""
    cache: dict[tuple[str, str], tuple] = {}

    def make(family: str, plan: str):
        if (family, plan) not in cache:
            root = tmp_path_factory.mktemp(f"{family}-{plan}")
            src = build_tiny_vlm(family, root / "src")
            text = PLANS.get(plan)
            grow(src, parse_plan(text) if text else load_plan(plan), root / "out")
            cache[family, plan] = src, root / "out"
        return cache[family, plan]

    return make


def _check(report, name: str):
    return next(c for c in report.checks if c.name == name)


def _perturbed(out, tmp_path, pick) -> tuple:
    """A copy of `out` with the tensor `pick(structure)` names moved by 0.05 (at most)."""
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    name = pick(read_structure(bad))
    tensors = load_file(bad / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    tensors[name] = tensors[name] + 0.05 * torch.rand(tensors[name].shape, generator=g)
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    return bad, name


@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_exact_growth_passes_exact(grown, family, plan):
    src, out = grown(family, plan)
    report = verify_checkpoint(src, out)
    assert report.equivalence == "exact" and report.passed, [c for c in report.checks if not c.passed]
    assert report.metrics["logits"]["max_abs"] <= 1e-5
    assert report.metrics["program"]["max_abs"] <= 1e-5  # the layer map ran on SOURCE's text tower
    assert len(report.metrics["layer_drift"]) == 5  # embeddings + every grown layer aligned
    assert _check(report, "vision tower and projector copied").passed
    assert _check(report, "transformers load warnings").value == "0"  # vision tower and projector loaded


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_layerwise_mode_runs_the_text_tower_one_layer_at_a_time(grown, family):
    """--layerwise builds the whole model on meta and loads the text decoder's layers from the
    checkpoint's legacy names: the same numbers as the whole-model run."""
    src, out = grown(family, "widen-2x-then-stack-zero")
    whole, layerwise = verify_checkpoint(src, out), verify_checkpoint(src, out, layerwise=True)
    assert layerwise.passed, [c for c in layerwise.checks if not c.passed]
    assert layerwise.metrics["logits"] == whole.metrics["logits"]
    assert _check(layerwise, "transformers load warnings").value == "0"


def test_approx_growth_equals_its_layer_map_program(grown):
    """Gemma 3's text tower has per-layer attention kinds: the program check runs SOURCE with
    the grown layer_types, and the approx model (split branches) equals it to rounding."""
    src, out = grown("gemma3", "double")
    report = verify_checkpoint(src, out)
    assert report.equivalence == "approx" and report.passed, [c for c in report.checks if not c.passed]
    assert report.metrics["program"]["max_abs"] <= 1e-4
    assert report.metrics["logits"]["max_abs"] > 1e-3  # it did move: the program check is the gate


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_a_perturbed_text_tower_weight_fails_naming_the_layer(grown, tmp_path, family):
    src, out = grown(family, "interpolate-zero")
    # Grown layer 2 copies source layer 1 (layers 1 and 3 are the zero-branch new ones; Gemma
    # zeroes those through a norm gain, so a weight before it would not show).
    bad, _ = _perturbed(out, tmp_path, lambda s: s.layout.layers[2]["mlp.down_proj.weight"])
    report = verify_checkpoint(src, bad)
    failed = {c.name: c for c in report.checks if not c.passed}
    assert {"max |dlogit|", "hidden states per layer", "GROWN = layer map run on SOURCE"} <= set(failed)
    assert "grown layer 2 (copy of source layer 1" in failed["hidden states per layer"].detail
    assert "vision tower and projector copied" not in failed
    with pytest.raises(VerifyError):
        report.raise_if_failed()


def _vision_tensor(s) -> str:
    return sorted(n for n in s.layout.others if s.spec.global_role(n) == "vision")[0]


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_a_perturbed_vision_tower_weight_fails_the_byte_check(grown, tmp_path, family):
    src, out = grown(family, "widen-2x-then-stack-zero")
    bad, name = _perturbed(out, tmp_path, _vision_tensor)
    report = verify_checkpoint(src, bad)
    failed = [c for c in report.checks if not c.passed]
    assert [c.name for c in failed] == ["vision tower and projector copied"]  # text prompts never see it
    assert name in failed[0].detail and "max |diff|" in failed[0].detail


def test_cli_verify_exit_code_and_report(grown, tmp_path):
    src, out = grown("qwen2_5_vl", "interpolate-zero")
    ok = CliRunner().invoke(app, ["verify", str(src), str(out), "--expect", "exact"])
    assert ok.exit_code == 0, ok.output
    bad, _ = _perturbed(out, tmp_path, lambda s: s.layout.layers[0]["self_attn.o_proj.weight"])
    fail = CliRunner().invoke(app, ["verify", str(src), str(bad), "--expect", "exact"])
    assert fail.exit_code != 0
    assert "grown layer 0 (copy of source layer 0" in " ".join(fail.output.split())


def test_vllm_runs_vision_language_models_text_only(grown, tmp_path):
    """The worker is asked for a text-only run (no vision tower, no image profiling), and a vLLM
    venv without torchvision, whose error vLLM buries in a subprocess traceback, is named with
    the fix. A stand-in for vLLM's python records the request and logs that error."""
    request = tmp_path / "request.json"
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!/bin/sh\ncat > {request}\n"
        'echo "ERROR [registry.py:1] subprocess.CalledProcessError: Command returned non-zero exit status 1."\n'
        "echo \"ERROR [registry.py:1] ModuleNotFoundError: No module named 'torchvision'\"\n"
        "exit 1\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    src, out = grown("llava", "interpolate-zero")
    report = verify_checkpoint(src, out, engine="vllm", vllm_python=fake, max_new_tokens=2)
    assert json.loads(request.read_text())["text_only"] is True
    loads = _check(report, "vLLM loads GROWN")
    assert not loads.passed and "cannot import torchvision" in loads.detail and SETUP in loads.detail

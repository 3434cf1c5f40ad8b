"""Bad input to surgeon convert: each case gets a clear error naming the input, a non-zero exit
from the CLI, and leaves nothing behind (no output, no temporary directory)."""

from __future__ import annotations

import collections
import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import CheckpointError, ConvertError, OutputError


class Payload:
    """Stands for any object a pickle may smuggle in (weights_only must refuse to build it)."""

    def __reduce__(self):
        return (print, ("unpickled!",))


class Plain:
    """A custom class instance, as a training script might pickle next to the weights."""


def run(*args):
    return CliRunner().invoke(app, ["convert", *[str(a) for a in args]])


@pytest.fixture
def model(tiny, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny("llama", n_layers=2), dst)
    return dst


def bin_model(model, state) -> None:
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")


def fails(tmp_path, model, expect: str, code: int, *flags) -> str:
    out = tmp_path / "out"
    result = run(model, "-o", out, *flags)
    assert result.exit_code == code, result.output
    assert expect in " ".join(result.output.split()), result.output
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []
    return result.output


@pytest.mark.parametrize("obj, named", [(Payload(), "GLOBAL print"), (Plain(), "Plain")], ids=["reduce", "instance"])
def test_bin_with_a_pickled_object_is_refused(tmp_path, model, capfd, obj, named):
    bin_model(model, {"model.embed_tokens.weight": torch.zeros(2, 2), "extra": obj})
    out = fails(
        tmp_path, model, "refused to unpickle it: it holds objects other than tensors", CheckpointError.exit_code
    )
    assert "weights_only" in out and named in out
    assert "unpickled!" not in capfd.readouterr().out  # the payload never ran


def test_training_checkpoint_is_not_a_state_dict(tmp_path, model):
    state = load_file(model / "model.safetensors")
    bin_model(model, {"state_dict": collections.OrderedDict(state), "epoch": 3})
    fails(tmp_path, model, "not a flat state dict of tensors", CheckpointError.exit_code)


def test_untied_names_sharing_storage_are_refused(tmp_path, model):
    state = load_file(model / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # config says not tied
    bin_model(model, state)
    fails(tmp_path, model, "share storage as one tensor under several names; config.json does not tie", 3)


def test_views_of_one_buffer_are_refused(tmp_path, model):
    state = load_file(model / "model.safetensors")
    fused = torch.cat(
        [state["model.layers.0.self_attn.q_proj.weight"], state["model.layers.0.self_attn.k_proj.weight"]]
    )
    state["model.layers.0.self_attn.q_proj.weight"] = fused[:32]
    state["model.layers.0.self_attn.k_proj.weight"] = fused[32:]
    bin_model(model, state)
    fails(tmp_path, model, "share storage as different views of one buffer", 3)


def test_truncated_bin(tmp_path, model):
    bin_model(model, load_file(model / "model.safetensors"))
    f = model / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:2000])
    fails(tmp_path, model, "not a readable PyTorch file", 3)


def test_unsupported_family_for_gguf_names_the_supported(tmp_path, model):
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "bloom"}))
    out = fails(tmp_path, model, "GGUF export does not support model_type 'bloom'", 7, "--to", "gguf")
    assert "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, olmo2, gpt2, gpt_neox" in " ".join(out.split())


def test_gguf_without_the_gguf_package(tmp_path, model, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # what `import gguf` sees when it is not installed
    out = fails(tmp_path, model, "GGUF export needs the gguf package", ConvertError.exit_code, "--to", "gguf")
    assert "pip install gguf" in out


def test_sentencepiece_style_tokenizer_is_refused_for_gguf(tmp_path, model):
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["model"]["byte_fallback"] = True
    (model / "tokenizer.json").write_text(json.dumps(tok))
    fails(tmp_path, model, "GGUF export writes byte-level BPE (GPT-2 style) vocabularies only", 7, "--to", "gguf")


@pytest.mark.parametrize(
    "flags, expect",
    [
        (("--dtype", "float8"), "unknown dtype 'float8'"),
        (("--dtype", "fp8"), "use one of: float32 (fp32), bfloat16 (bf16), float16 (fp16)"),
        (("--to", "onnx"), "unknown output format 'onnx'"),
    ],
)
def test_bad_option_values(tmp_path, model, flags, expect):
    fails(tmp_path, model, expect, ConvertError.exit_code, *flags)


def test_existing_output_needs_force(tmp_path, model):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = run(model, "-o", out)
    assert result.exit_code == OutputError.exit_code and "already exists" in result.output
    assert (out / "keep.txt").is_file()
    assert run(model, "-o", out, "--force").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_output_inside_the_model_is_refused(model):
    result = run(model, "-o", model / "converted")
    assert result.exit_code == OutputError.exit_code and "overlaps the input" in result.output


def test_float16_overflow_fails_midway_and_leaves_nothing(tmp_path, model):
    state = load_file(model / "model.safetensors")
    state["model.norm.weight"][3] = 1e6  # beyond float16's 65504
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    out = fails(
        tmp_path, model, "tensor 'model.norm.weight' overflows float16", ConvertError.exit_code, "--dtype", "float16"
    )
    assert "1e+06" in out


def test_nan_in_the_source_is_named(tmp_path, model):
    state = load_file(model / "model.safetensors")
    state["model.norm.weight"][0] = float("nan")
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    fails(tmp_path, model, "source tensor 'model.norm.weight' already holds NaN", 3, "--dtype", "bfloat16")


def test_no_weights_at_all(tmp_path, model):
    (model / "model.safetensors").unlink()
    (model / "training_args.bin").write_bytes(b"x")
    fails(tmp_path, model, "no pytorch_model.bin or pytorch_model.bin.index.json (found training_args.bin)", 3)

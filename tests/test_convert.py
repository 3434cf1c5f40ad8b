"""surgeon convert between .bin and safetensors, dtypes and shard sizes: every output is read
back and compared with the input tensor by tensor (bit-identical, or exactly `tensor.to`), and
with transformers' own logits where the model is loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.convert import convert, prepare_conversion
from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan

FAMILIES = ("llama", "qwen2", "gpt2")
DOUBLE = "name: d\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n"


def st_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def bin_tensors(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("pytorch_model*.bin")):
        out.update(torch.load(f, weights_only=True))
    return out


def write_bin(src: Path, dst: Path, state: dict[str, torch.Tensor] | None = None, shards: int = 1) -> Path:
    """A .bin copy of a tiny checkpoint (torch.save, as transformers 4 wrote them)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors*"))
    state = st_tensors(src) if state is None else state
    names = list(state)
    if shards == 1:
        torch.save(state, dst / "pytorch_model.bin")
        return dst
    weight_map = {}
    for i in range(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, dst / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (dst / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def load_model(path: Path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    return model(ids).logits


def assert_index_consistent(out: Path, prefix: str, suffix: str, index_name: str, tensors: dict) -> None:
    index = json.loads((out / index_name).read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n > 1
    assert files == [f"{prefix}-{i + 1:05d}-of-{n:05d}{suffix}" for i in range(n)]
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_bin_to_safetensors_to_bin_is_bit_identical(tiny, tmp_path, family):
    src = write_bin(tiny(family, n_layers=2), tmp_path / "bin", shards=2)
    original = bin_tensors(src)
    convert(src, tmp_path / "st")
    convert(tmp_path / "st", tmp_path / "bin2", to="bin", max_shard_size=8_000)
    back = bin_tensors(tmp_path / "bin2")
    assert list(back) == list(original)  # same names, same order
    for name, t in original.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    assert_index_consistent(tmp_path / "bin2", "pytorch_model", ".bin", "pytorch_model.bin.index.json", back)
    lineage = json.loads((tmp_path / "bin2" / "surgeon.json").read_text())["lineage"]
    assert [(s["kind"], s["from"], s["to"]) for s in lineage] == [
        ("convert", "bin", "safetensors"),
        ("convert", "safetensors", "bin"),
    ]
    assert (tmp_path / "bin2" / "tokenizer.json").is_file()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_dtype_conversion_is_tensor_to(tiny, tmp_path, dtype):
    src = tmp_path / "src"
    shutil.copytree(tiny("qwen2", n_layers=2, dtype=torch.bfloat16 if dtype == "float32" else torch.float32), src)
    tensors = st_tensors(src)
    tensors["extra.position_ids"] = torch.arange(7, dtype=torch.int64)  # integers are never cast
    tensors["extra.mask"] = torch.tensor([True, False])
    (src / "model.safetensors").unlink()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    convert(src, tmp_path / "out", dtype=dtype)
    got = st_tensors(tmp_path / "out")
    want_dtype = getattr(torch, dtype)
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        want = t.to(want_dtype) if t.is_floating_point() else t
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == dtype


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_reshard_keeps_logits_and_index(tiny, tmp_path, family):
    src = tiny(family, n_layers=2)
    convert(src, tmp_path / "out", max_shard_size=20_000)
    got = st_tensors(tmp_path / "out")
    assert_index_consistent(tmp_path / "out", "model", ".safetensors", "model.safetensors.index.json", got)
    with safe_open(src / "model.safetensors", framework="pt") as fh:  # byte copies: identical
        assert all(torch.equal(fh.get_tensor(n), got[n]) for n in fh.keys())
    assert torch.equal(logits(load_model(src)), logits(load_model(tmp_path / "out")))


def test_float32_bfloat16_round_trip_logits(tiny, tmp_path):
    src = tiny("llama", n_layers=2, dtype=torch.bfloat16)
    convert(src, tmp_path / "f32", dtype="float32")
    convert(tmp_path / "f32", tmp_path / "bf16", dtype="bfloat16")
    a, b = st_tensors(src), st_tensors(tmp_path / "bf16")
    assert all(torch.equal(a[n], b[n]) for n in a)  # bf16 -> f32 is exact, so back is too
    assert torch.equal(logits(load_model(src)), logits(load_model(tmp_path / "f32")))


def test_legacy_non_zip_bin_is_read_without_mmap(tiny, tmp_path):
    src = tiny("llama", n_layers=2)
    dst = write_bin(src, tmp_path / "bin")
    state = torch.load(dst / "pytorch_model.bin", weights_only=True)
    torch.save(state, dst / "pytorch_model.bin", _use_new_zipfile_serialization=False)  # torch < 1.6 format
    convert(dst, tmp_path / "out")
    got = st_tensors(tmp_path / "out")
    assert set(got) == set(state) and all(torch.equal(got[n], t) for n, t in state.items())


def test_tied_bin_writes_the_embedding_once(tiny, tmp_path):
    src = tiny("llama", n_layers=2, tie_word_embeddings=True)
    model = load_model(src)
    state = model.state_dict()  # lm_head.weight and embed_tokens.weight share one storage
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    convert(write_bin(src, tmp_path / "bin", state), tmp_path / "out")
    out = st_tensors(tmp_path / "out")
    assert "lm_head.weight" not in out and set(out) == set(state) - {"lm_head.weight"}
    assert torch.equal(logits(model), logits(load_model(tmp_path / "out")))
    manifest = json.loads((tmp_path / "out" / "surgeon.json").read_text())
    assert manifest["lineage"][-1]["dropped"] == ["lm_head.weight"]


def test_grown_manifest_keeps_its_fields(tiny, tmp_path):
    grow(tiny("llama", n_layers=2), parse_plan(DOUBLE), tmp_path / "grown")
    convert(tmp_path / "grown", tmp_path / "out", dtype="bfloat16")
    before = json.loads((tmp_path / "grown" / "surgeon.json").read_text())
    after = json.loads((tmp_path / "out" / "surgeon.json").read_text())
    assert {k: v for k, v in after.items() if k != "lineage"} == {k: v for k, v in before.items() if k != "lineage"}
    assert [s["kind"] for s in after["lineage"]] == ["grow", "convert"]
    assert after["lineage"][-1]["dtype"] == "bfloat16" and after["lineage"][-1]["created"]
    assert (tmp_path / "out" / "README.md").read_text() == (tmp_path / "grown" / "README.md").read_text()


def test_dry_run_prints_plan_and_writes_nothing(tiny, tmp_path):
    out = tmp_path / "out"
    args = [
        str(tiny("llama", n_layers=2)),
        "-o",
        str(out),
        "--to",
        "bin",
        "--dtype",
        "float16",
        "--max-shard-size",
        "30KB",
        "--dry-run",
    ]
    result = CliRunner().invoke(app, ["convert", *args])
    assert result.exit_code == 0, result.output
    assert "F32 -> F16" in result.output and "pytorch_model-00001-of-0000" in result.output
    assert "dry run: nothing written" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_plan_counts_shards_like_the_writer(tiny, tmp_path):
    conv = prepare_conversion(tiny("llama", n_layers=2), max_shard_size=20_000)
    convert(tiny("llama", n_layers=2), tmp_path / "out", max_shard_size=20_000)
    planned = [(name, count) for name, count, _ in conv.shards()]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    written = sorted((f, list(index.values()).count(f)) for f in set(index.values()))
    assert planned == written

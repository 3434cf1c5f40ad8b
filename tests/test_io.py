"""The streaming writer round-trips bytes, names shards like Hugging Face, and its files read
back with the safetensors library; the header reader rejects what the library would."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modelsurgeon.errors import CheckpointError
from modelsurgeon.io import writer
from modelsurgeon.io.layout import shard_groups
from modelsurgeon.io.reader import open_checkpoint
from modelsurgeon.io.st_format import read_header
from modelsurgeon.io.writer import OutTensor, write_shards


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(64, 32, generator=g),
        "b.weight": torch.randn(100, generator=g).to(torch.bfloat16),
        "c.scalar": torch.tensor(3.5),
        "d.ids": torch.arange(10, dtype=torch.int64),
        "e.empty": torch.zeros(0, 4),
    }


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    save_file(tensors(), src / "model.safetensors")
    (src / "config.json").write_text("{}")
    return open_checkpoint(src)


def plan_copy(ckpt, computed=()):
    out = []
    for name, info in ckpt.tensors.items():
        if name in computed:
            out.append(
                OutTensor(
                    name, info.dtype, info.shape, info.nbytes, compute=lambda a, b, n=name: ckpt.load(n, (a, b)) * 2
                )
            )
        else:
            out.append(OutTensor(name, info.dtype, info.shape, info.nbytes, source=info))
    return out


def read_all(directory):
    got = {}
    for f in directory.glob("*.safetensors"):
        with safe_open(f, "pt") as fh:
            got.update({k: fh.get_tensor(k) for k in fh.keys()})
    return got


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_round_trip_sharded(tmp_path, source, monkeypatch, kernel_copy):
    if not kernel_copy:  # e.g. across file systems: the read/write fallback must give the same bytes

        def no_copy(*a, **k):
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", no_copy)
    out = tmp_path / "out"
    out.mkdir()
    weight_map = write_shards(out, plan_copy(source, computed={"a.weight"}), max_shard_size=4000)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == weight_map and set(weight_map) == set(tensors())
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in source.tensors.values())
    got, want = read_all(out), tensors()
    for name, value in want.items():
        expected = value * 2 if name == "a.weight" else value
        assert got[name].dtype == expected.dtype and torch.equal(got[name], expected), name
    for f in out.glob("*.safetensors"):  # headers are 8-byte aligned like the library's own
        n = int.from_bytes(f.read_bytes()[:8], "little")
        assert n % 8 == 0


def test_single_shard_is_model_safetensors(tmp_path, source):
    out = tmp_path / "out"
    out.mkdir()
    write_shards(out, plan_copy(source), max_shard_size=10**9)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes()[-100:] == (source.path / "model.safetensors").read_bytes()[-100:]


def test_computed_tensors_stream_in_bounded_row_blocks(tmp_path, source, monkeypatch):
    monkeypatch.setattr(writer, "CHUNK_ELEMENTS", 100)
    assert writer.row_blocks((64, 32), 100) == [(i, i + 3) for i in range(0, 63, 3)] + [(63, 64)]
    calls = []

    def compute(a, b):
        calls.append((a, b))
        return source.load("a.weight", (a, b)) * 2

    info = source.tensors["a.weight"]
    out = tmp_path / "out"
    out.mkdir()
    write_shards(out, [OutTensor("a.weight", "F32", info.shape, info.nbytes, compute=compute)], 10**9)
    assert len(calls) == 22 and max(b - a for a, b in calls) == 3
    assert torch.equal(read_all(out)["a.weight"], tensors()["a.weight"] * 2)


def test_oversized_tensor_gets_its_own_shard():
    ts = [OutTensor(n, "F32", (s,), s * 4) for n, s in (("a", 10), ("b", 1000), ("c", 10), ("d", 10))]
    assert [[t.name for t in g] for g in shard_groups(ts, 100)] == [["a"], ["b"], ["c", "d"]]


def test_computed_tensor_is_checked(tmp_path, source):
    info = source.tensors["a.weight"]
    bad = [
        OutTensor(
            "a.weight", "F32", info.shape, info.nbytes, compute=lambda a, b: torch.full((b - a, 32), float("nan"))
        )
    ]
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Exception, match="NaN or inf"):
        write_shards(out, bad, 10**9)
    wrong = [OutTensor("a.weight", "BF16", info.shape, info.nbytes // 2, compute=lambda a, b: torch.zeros(info.shape))]
    with pytest.raises(Exception, match="planned BF16"):
        writer._checked(wrong[0], torch.zeros(info.shape))


def test_header_offsets_must_match_dtype_and_shape(tmp_path, source):
    f = source.path / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["a.weight"]["shape"] = [64, 33]
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    f.write_bytes(len(body).to_bytes(8, "little") + body + data[8 + n :])
    with pytest.raises(CheckpointError, match="do not span"):
        read_header(f)

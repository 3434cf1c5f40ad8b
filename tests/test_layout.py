"""The aligned shard layout puts every byte-copied run at its source offset modulo the block size,
so a copy-on-write filesystem can share it; its output is the packed writer's, tensor by tensor,
and loads like any checkpoint. Shown here without such a filesystem: offsets from the headers,
the kernel calls the writer makes, and FICLONERANGE refusals falling back to copies."""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.grow.engine import prepare
from modelsurgeon.io import kcopy, layout
from modelsurgeon.io.layout import BLOCK, plan_layout
from modelsurgeon.io.reader import open_checkpoint
from modelsurgeon.io.st_format import read_header
from modelsurgeon.io.writer import OutTensor, write_shards

PLANS = Path(__file__).parent.parent / "plans"
SIZES = [10**9, 60_000, 20_000]  # one shard per run; runs split; runs split at nearly every tensor


@pytest.fixture
def every_run(monkeypatch):
    """Tiny tensors: give every run a shard of its own, as 1 MB runs get in real checkpoints."""
    monkeypatch.setattr(layout, "MIN_RUN", 0)


@pytest.fixture
def model(tiny):
    return tiny("llama", n_layers=8, hidden=64)


def write(prep, out: Path, max_shard_size: int, kind: str) -> Path:
    out.mkdir()
    write_shards(out, prep.tensors, max_shard_size, layout=plan_layout(prep.tensors, max_shard_size, kind))
    return out


def read_all(directory: Path) -> dict[str, torch.Tensor]:
    got: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        got.update(load_file(f))  # the safetensors library's own validation of the header
    return got


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.reshape(-1).view(torch.uint8).equal(b.reshape(-1).view(torch.uint8))
    )


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("plan", ["solar.yaml", "stack4.yaml", "llama-pro.yaml"])
def test_byte_copies_sit_at_their_source_offset_modulo_the_block(model, tmp_path, every_run, plan, size):
    prep = prepare(model, PLANS / plan, size)
    assert prep.shards.kind == "aligned"
    out = write(prep, tmp_path / "out", size, "aligned")
    source = {t.name: t.source for t in prep.tensors if t.source is not None}
    for f in out.glob("*.safetensors"):
        found, _ = read_header(f)
        in_file = sorted(found.values(), key=lambda i: i.offset)
        run = [i for i in in_file if i.name in source]
        for info in run:  # every byte copy is congruent with where it came from
            assert (info.offset - source[info.name].offset) % BLOCK == 0, (f.name, info.name)
        for a, b in itertools.pairwise(run):  # runs are contiguous and in source order
            if b.offset == a.offset + a.nbytes and source[a.name].path == source[b.name].path:
                assert source[b.name].offset - source[a.name].offset == b.offset - a.offset
        assert in_file[-1].offset + in_file[-1].nbytes == f.stat().st_size  # no hole, no trailing bytes
    # only the partial blocks at each run's two ends are copied (many, with 16 KB tensors and 20 KB shards)
    copied = sum(t.nbytes for t in prep.tensors if t.source is not None)
    assert prep.shards.shareable >= 0.8 * copied > plan_layout(prep.tensors, size, "packed").shareable


@pytest.mark.parametrize("size", SIZES)
def test_aligned_output_equals_packed_output_and_loads(model, tmp_path, every_run, size):
    from transformers import AutoModelForCausalLM

    prep = prepare(model, PLANS / "solar.yaml", size)
    aligned = write(prep, tmp_path / "aligned", size, "aligned")
    packed = write(prep, tmp_path / "packed", size, "packed")
    a, p = read_all(aligned), read_all(packed)
    assert a.keys() == p.keys() == {t.name for t in prep.tensors}
    assert all(same_bits(a[n], p[n]) for n in a)
    (aligned / "config.json").write_text(json.dumps(prep.config))  # a loadable checkpoint
    grown = AutoModelForCausalLM.from_pretrained(aligned)
    state = grown.state_dict()
    assert all(same_bits(state[n], p[n]) for n in p)
    assert torch.isfinite(grown(torch.tensor([[1, 5, 9, 3]])).logits).all()


def test_adjacent_ranges_are_one_kernel_copy(model, tmp_path, every_run, monkeypatch):
    calls = []
    real = os.copy_file_range

    def spy(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", spy)
    monkeypatch.setattr(kcopy.Copier, "_clone", lambda *a: False)  # count only copies
    prep = prepare(model, PLANS / "solar.yaml", 10**9)
    write(prep, tmp_path / "out", 10**9, "aligned")
    segments = [p for s in prep.shards.shards for p in s.pieces() if isinstance(p, layout.Segment)]
    copies = sum(t.source is not None for t in prep.tensors)
    # one head, middle and tail per segment at most, against one call per tensor before
    assert len(segments) <= len(prep.shards.shards) + 2 and len(calls) <= 3 * len(segments) < copies


@pytest.mark.parametrize("refusal", [errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL])
def test_clone_is_tried_on_aligned_blocks_then_falls_back(model, tmp_path, every_run, monkeypatch, refusal):
    clones = []

    def refuse(fd, request, arg):
        assert request == kcopy.FICLONERANGE
        clones.append(struct.unpack("qQQQ", arg))
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(fcntl, "ioctl", refuse)
    prep = prepare(model, PLANS / "solar.yaml", 10**9)
    out = write(prep, tmp_path / "out", 10**9, "aligned")
    assert len(clones) == 1  # refused once: never asked again for this write
    _, offset, length, dst_offset = clones[0]
    assert offset % BLOCK == length % BLOCK == dst_offset % BLOCK == 0 and length > 0
    packed = read_all(write(prep, tmp_path / "packed", 10**9, "packed"))
    assert all(same_bits(v, packed[n]) for n, v in read_all(out).items())


def test_cloned_ranges_cover_exactly_the_aligned_blocks(model, tmp_path, every_run, monkeypatch):
    """A stand-in FICLONERANGE that copies what it is asked to share: the output is right only if
    the clones plus the copied edges are exactly the run."""
    asked = []

    def fake_clone(fd, request, arg):
        src, offset, length, dst_offset = struct.unpack("qQQQ", arg)
        asked.append(length)
        done = 0
        while done < length:
            done += os.copy_file_range(src, fd, length - done, offset + done, dst_offset + done)

    monkeypatch.setattr(fcntl, "ioctl", fake_clone)
    prep = prepare(model, PLANS / "solar.yaml", 60_000)
    aligned = write(prep, tmp_path / "aligned", 60_000, "aligned")
    packed = write(prep, tmp_path / "packed", 60_000, "packed")
    a, p = read_all(aligned), read_all(packed)
    assert a.keys() == p.keys() and all(same_bits(a[n], p[n]) for n in a)
    assert sum(asked) == prep.shards.shareable > 0


def test_auto_layout_falls_back_when_runs_are_fragmented(tmp_path):
    from modelsurgeon.io.st_format import TensorInfo

    src = tmp_path / "src.safetensors"
    infos = [TensorInfo(f"t{i}", src, "F32", (1024,), 4096 + 4096 * i, 4096) for i in range(64)]
    # every other source tensor, reversed: 64 runs of one 4 KB tensor each
    shuffled = [OutTensor(f"o{i}", "F32", (1024,), 4096, source=infos[i]) for i in range(63, -1, -2)]
    assert plan_layout(shuffled, 10**9).kind == "packed"
    assert plan_layout(shuffled, 10**9, "aligned").kind == "aligned"
    in_order = [OutTensor(f"o{i}", "F32", (1024,), 4096, source=info) for i, info in enumerate(infos)]
    assert plan_layout(in_order, 10**9).kind == "packed"  # 256 KB: shorter than MIN_RUN
    big = [TensorInfo(f"t{i}", src, "F32", (1 << 18,), 4096 + (1 << 20) * i, 1 << 20) for i in range(4)]
    auto = plan_layout([OutTensor(f"o{i}", "F32", (1 << 18,), 1 << 20, source=b) for i, b in enumerate(big)], 10**9)
    assert auto.kind == "aligned" and auto.share == 1.0 and len(auto.shards) == 1
    computed = [OutTensor("c", "F32", (1 << 18,), 1 << 20, compute=lambda a, b: None)]
    assert plan_layout(computed, 10**9).kind == "packed"


def test_dry_run_reports_the_shareable_share(model, every_run):
    result = CliRunner().invoke(
        app, ["grow", str(model), "--plan", str(PLANS / "solar.yaml"), "--dry-run"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    prep = prepare(model, PLANS / "solar.yaml")
    assert f"{100 * prep.shards.share:.0f}% of the bytes" in result.output and prep.shards.share > 0.9


def test_a_failing_shard_stops_the_others_and_raises(model, tmp_path, every_run, monkeypatch):
    real = kcopy.Copier.copy
    seen = []

    def fail_second(self, src, dst, offset, n, dst_offset):
        seen.append(dst)
        if len(set(seen)) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, src, dst, offset, n, dst_offset)

    monkeypatch.setattr(kcopy.Copier, "copy", fail_second)
    prep = prepare(model, PLANS / "solar.yaml", 20_000)
    assert len(prep.shards.shards) > 2
    with pytest.raises(OSError, match="No space"):
        write(prep, tmp_path / "out", 20_000, "aligned")


def test_safe_open_reads_padded_headers(model, tmp_path, every_run):
    prep = prepare(model, PLANS / "solar.yaml", 10**9)
    out = write(prep, tmp_path / "out", 10**9, "aligned")
    for f in out.glob("*.safetensors"):
        n = int.from_bytes(f.read_bytes()[:8], "little")
        assert f.read_bytes()[8 + n - 1 : 8 + n] in (b" ", b"}")  # padding is spaces after the JSON
        with safe_open(f, "pt") as fh:
            assert fh.metadata() == {"format": "pt"}


def test_convert_reshard_is_aligned_and_plans_what_it_writes(model, tmp_path, every_run):
    from modelsurgeon.convert.engine import convert, prepare_conversion

    conv = prepare_conversion(model, max_shard_size=60_000)
    convert(model, tmp_path / "out", max_shard_size=60_000)
    planned = [(name, count) for name, count, _ in conv.shards()]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    assert planned == sorted((f, list(index.values()).count(f)) for f in set(index.values()))
    assert plan_layout(conv.tensors, 60_000).kind == "aligned"
    source = {i.name: i for i in open_checkpoint(model).tensors.values()}
    for f in (tmp_path / "out").glob("*.safetensors"):
        found, _ = read_header(f)
        assert all((i.offset - source[n].offset) % BLOCK == 0 for n, i in found.items())


def test_pure_copy_grow_never_imports_torch_or_transformers(model, tmp_path):
    """Importing them costs seconds of CPU, more than copying a small model: a depth growth made
    only of byte copies must not pay it (its config is checked structurally instead)."""
    import subprocess
    import sys

    code = (
        f"import sys; from modelsurgeon.grow.engine import grow; grow({str(model)!r}, {str(PLANS / 'solar.yaml')!r}, "
        f"{str(tmp_path / 'out')!r}); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 12

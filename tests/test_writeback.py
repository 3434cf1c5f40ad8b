"""Early writeback in the shard writer: every copied byte range is handed to the kernel's
writeback (sync_file_range) as soon as it is copied, while the rest of the shard is still being
copied, and the shard is fsynced only after that; where the call is refused nothing changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from modelsurgeon.grow.engine import prepare
from modelsurgeon.io import kcopy, layout
from modelsurgeon.io.writer import write_shards

PLANS = Path(__file__).parent.parent / "plans"


@pytest.fixture
def prep(tiny, monkeypatch):
    monkeypatch.setattr(layout, "MIN_RUN", 0)  # tiny runs get shards of their own, as 1 MB runs do
    return prepare(tiny("llama", n_layers=8, hidden=64), PLANS / "solar.yaml", 10**9)


def record_io(monkeypatch) -> list[tuple[str, str, int, int]]:
    """(event, shard file name, offset, nbytes) in call order, across the writer threads."""
    events: list[tuple[str, str, int, int]] = []
    name = lambda fd: os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    real_wb, real_copy, real_fsync = kcopy.start_writeback, os.copy_file_range, os.fsync

    def writeback(fd, offset, n):
        events.append(("writeback", name(fd), offset, n))
        real_wb(fd, offset, n)

    def copy(src, dst, count, offset_src=None, offset_dst=None):
        done = real_copy(src, dst, count, offset_src, offset_dst)
        events.append(("copy", name(dst), offset_dst, done))
        return done

    def fsync(fd):
        events.append(("fsync", name(fd), 0, 0))
        real_fsync(fd)

    monkeypatch.setattr(kcopy, "start_writeback", writeback)
    monkeypatch.setattr(os, "copy_file_range", copy)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(kcopy.Copier, "_clone", lambda *a: False)  # every byte copied, on any filesystem
    monkeypatch.setattr(kcopy, "KERNEL_CHUNK", 8192)  # several kernel copies per run, as 256 MB gives 1B models
    return events


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to name the shard of an fd")
def test_each_copied_range_is_written_back_at_once_and_fsynced_after(prep, tmp_path, monkeypatch):
    events = record_io(monkeypatch)
    write_shards(tmp_path, prep.tensors, 10**9, layout=prep.shards)
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 1
    for shard in shards:
        mine = [e for e in events if e[1] == shard]
        copies = [e[2:] for e in mine if e[0] == "copy"]
        writebacks = [e[2:] for e in mine if e[0] == "writeback"]
        assert len(copies) > 2 and writebacks == copies  # each copy's own range, nothing else
        # each range right after its copy (not all at the end), and the fsync after the last one
        kinds = [e[0] for e in mine]
        assert kinds == ["copy", "writeback"] * len(copies) + ["fsync"], shard
        header = (tmp_path / shard).stat().st_size - sum(n for _, n in copies)
        assert sorted(copies)[0][0] == header  # the ranges cover the data exactly
        assert all(a + n == b for (a, n), (b, _) in zip(sorted(copies), sorted(copies)[1:]))


def test_output_is_the_same_where_writeback_is_refused(prep, tmp_path, monkeypatch):
    """A pipe cannot be written back (ESPIPE) and a platform may lack the call: both are ignored."""
    read, write = os.pipe()
    try:
        kcopy.start_writeback(write, 0, 4096)
    finally:
        os.close(read), os.close(write)
    (tmp_path / "with").mkdir()
    write_shards(tmp_path / "with", prep.tensors, 10**9, layout=prep.shards)
    monkeypatch.setattr(kcopy, "_sync_file_range", lambda: None)
    (tmp_path / "without").mkdir()
    write_shards(tmp_path / "without", prep.tensors, 10**9, layout=prep.shards)
    for f in (tmp_path / "with").glob("*.safetensors"):
        assert f.read_bytes() == (tmp_path / "without" / f.name).read_bytes()
        assert load_file(f)  # a valid safetensors file

"""On a real copy-on-write filesystem (XFS with reflink=1, on a loop-mounted image), a depth
growth shares the source's blocks: the filesystem's used space grows by a small fraction of the
output's size, and the output is the packed writer's, tensor by tensor, and loads in transformers.

Needs root, mkfs.xfs (xfsprogs) and loop devices; skipped, with the reason, where any is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelsurgeon.grow.engine import grow, prepare
from modelsurgeon.io.layout import plan_layout
from modelsurgeon.io.writer import write_shards
from modelsurgeon.tiny import build_tiny

pytestmark = pytest.mark.slow
PLAN = Path(__file__).parent.parent / "plans" / "solar.yaml"


def _why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "XFS loop images need Linux"
    if os.geteuid() != 0:
        return "mounting a loop image needs root"
    if shutil.which("mkfs.xfs") is None:
        return "mkfs.xfs not installed (apt-get install xfsprogs)"
    return None


@pytest.fixture
def xfs(tmp_path):
    """A freshly made 512 MB XFS with reflink, mounted; unmounted and removed afterwards."""
    if (why := _why_not()) is not None:
        pytest.skip(why)
    image, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(512 * 1024 * 1024)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount here (container without loop devices?): {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def used_bytes(path: Path) -> int:
    os.sync()  # XFS allocates at writeback: count blocks only once they are allocated
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def tensors_of(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in directory.glob("*.safetensors"):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("max_shard_size", [5 * 10**9, 8 * 10**6])
def test_depth_growth_shares_the_source_blocks(xfs, tmp_path, max_shard_size):
    from transformers import AutoModelForCausalLM

    model = build_tiny("llama", xfs / "model", n_layers=8, hidden=256, vocab=4096)  # ~30 MB, 3 MB layers
    prep = prepare(model, PLAN, max_shard_size)
    assert prep.shards.kind == "aligned" and prep.shards.share > 0.99
    before = used_bytes(xfs)
    grow(model, PLAN, xfs / "grown", max_shard_size=max_shard_size)
    new = used_bytes(xfs) - before
    assert new < 0.10 * prep.bytes_out, f"{new} new bytes for a {prep.bytes_out}-byte output"

    packed = tmp_path / "packed"  # today's writer, on the test's own filesystem
    packed.mkdir()
    write_shards(packed, prep.tensors, max_shard_size, layout=plan_layout(prep.tensors, max_shard_size, "packed"))
    grown, want = tensors_of(xfs / "grown"), tensors_of(packed)
    assert grown.keys() == want.keys()
    assert all(torch.equal(grown[n].view(torch.uint8), want[n].view(torch.uint8)) for n in want)
    loaded = AutoModelForCausalLM.from_pretrained(xfs / "grown").state_dict()
    assert all(torch.equal(loaded[n], want[n]) for n in want)
    del loaded

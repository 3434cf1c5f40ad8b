"""What the benchmark scripts share: a synthetic llama checkpoint generated tensor by tensor
(cached under the work directory), the helper that runs one job and measures it, and the
measurement of how busy the machine was."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# Runs one job and reports it. A fresh, small helper per job matters: RUSAGE_CHILDREN's
# ru_maxrss is the peak of the largest waited-for descendant, and it is sticky for the life of
# the waiting process, so measuring from the benchmark process itself would let an earlier
# (bigger) job leak into a later job's number. Time is taken around the child only (the
# helper's own start-up is excluded), then again after os.sync() so jobs that fsync (surgeon)
# and jobs that leave dirty pages behind (cp, mergekit) can be compared on durable output too.
RSS_HELPER = r"""
import json, os, resource, subprocess, sys, time
result, log, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(log, "wb") as fh:
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    t1 = time.perf_counter()
os.sync()
t2 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
with open(result, "w") as fh:
    json.dump({"rc": rc, "wall_s": t1 - t0, "durable_s": t2 - t0, "peak_rss": ru.ru_maxrss * unit,
               "cpu_s": ru.ru_utime + ru.ru_stime}, fh)
"""

SYNTH_VERSION = 1  # bump when the generator changes, so stale caches are regenerated
LAYER_PARTS = (
    "input_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "post_attention_layernorm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def synth_spec(
    hidden: int,
    layers: int,
    intermediate: int,
    vocab: int,
    heads: int | None = None,
    kv_heads: int | None = None,
    shards: int = 2,
) -> dict:
    """A synthetic llama's description; it is also the cache key of the generated checkpoint."""
    heads = heads or max(1, hidden // 64)  # head_dim 64, as in Llama 3.2 1B
    kv_heads = kv_heads or max(1, heads // 4)
    return {
        "hidden": hidden,
        "layers": layers,
        "intermediate": intermediate,
        "heads": heads,
        "kv_heads": kv_heads,
        "vocab": vocab,
        "tied": True,
        "dtype": "bfloat16",
        "shards": shards,
        "seed": 0,
        "version": SYNTH_VERSION,
    }


def synth_dir(workdir: Path, spec: dict) -> Path:
    s = spec
    name = f"llama-h{s['hidden']}-l{s['layers']}-i{s['intermediate']}-v{s['vocab']}-s{s['shards']}"
    return workdir / "synthetic" / name


def layer_shapes(spec: dict, i: int) -> list[tuple[str, tuple[int, ...]]]:
    h, inter = spec["hidden"], spec["intermediate"]
    hd = h // spec["heads"]
    q, kv = spec["heads"] * hd, spec["kv_heads"] * hd
    shapes = [(h,), (q, h), (kv, h), (kv, h), (h, q), (h,), (inter, h), (inter, h), (h, inter)]
    return [(f"model.layers.{i}.{p}.weight", s) for p, s in zip(LAYER_PARTS, shapes)]


def llama_shapes(spec: dict, layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes exactly as LlamaForCausalLM's state dict (no lm_head when tied)."""
    out = [("model.embed_tokens.weight", (spec["vocab"], spec["hidden"]))]
    for i in range(layers):
        out += layer_shapes(spec, i)
    out.append(("model.norm.weight", (spec["hidden"],)))
    if not spec["tied"]:
        out.append(("lm_head.weight", (spec["vocab"], spec["hidden"])))
    return out


def nbytes(shape: tuple[int, ...]) -> int:
    n = 2  # bf16
    for d in shape:
        n *= d
    return n


def assign_shards(shapes: list, n: int) -> list[list]:
    """Split in order into n groups of about equal bytes (by each tensor's start offset)."""
    target = sum(nbytes(s) for _, s in shapes) / n
    groups: list[list] = [[] for _ in range(n)]
    offset = 0
    for name, shape in shapes:
        groups[min(int(offset // target), n - 1)].append((name, shape))
        offset += nbytes(shape)
    return [g for g in groups if g]


def random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    # randn straight in bf16 is ~2.5x faster than float32 + cast and can never give NaN/inf.
    t = torch.randn(shape, generator=gen, dtype=torch.bfloat16).mul_(0.02)
    return t.add_(1.0) if name.endswith("norm.weight") else t  # RMSNorm gains sit near 1


def write_config(directory: Path, spec: dict) -> None:
    from transformers import LlamaConfig  # only needed here; keeps --help fast

    LlamaConfig(
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        vocab_size=spec["vocab"],
        tie_word_embeddings=spec["tied"],
        architectures=["LlamaForCausalLM"],
        dtype=spec["dtype"],
    ).save_pretrained(directory)


def write_shards(directory: Path, spec: dict) -> None:
    """One shard in memory at a time: generate its tensors, save, drop."""
    gen = torch.Generator().manual_seed(spec["seed"])
    groups = assign_shards(llama_shapes(spec, spec["layers"]), spec["shards"])
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: random_tensor(name, shape, gen) for name, shape in group}
        save_file(tensors, directory / fname, metadata={"format": "pt"})
        del tensors
        weight_map.update({name: fname for name, _ in group})
        total += sum(nbytes(s) for _, s in group)
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def ensure_synthetic(workdir: Path, spec: dict) -> tuple[Path, float | None]:
    """Return the model directory, generating it unless a matching one is cached."""
    model = synth_dir(workdir, spec)
    # The stamp lives beside the model, not in it: the model dir stays a plain HF checkpoint
    # (tools copy unknown side files into their outputs).
    stamp = model.with_name(model.name + ".json")
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return model, None
    tmp = model.with_name(model.name + ".tmp")  # generate aside so a Ctrl-C never leaves a half cache
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    write_config(tmp, spec)
    write_shards(tmp, spec)
    stamp.unlink(missing_ok=True)
    shutil.rmtree(model, ignore_errors=True)
    os.replace(tmp, model)
    stamp.write_text(json.dumps(spec, indent=2) + "\n")  # last: only a complete model is stamped
    return model, time.perf_counter() - t0


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def cpu_times() -> tuple[int, int] | None:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None  # not Linux: no background measurement
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def background_busy(seconds: float = 1.0) -> float | None:
    """CPU share used by other processes while this benchmark sits idle: on a shared machine,
    a busy neighbour inflates every time in the table, so it is measured and shown, not guessed."""
    a = cpu_times()
    time.sleep(seconds)
    b = cpu_times()
    if a is None or b is None or b[1] == a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


# ----------------------------------------------------------------------------- XFS with reflink


def xfs_unavailable() -> str | None:
    """Why an XFS loop image cannot be made here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "XFS loop images need Linux"
    if os.geteuid() != 0:
        return "mounting a loop image needs root"
    if shutil.which("mkfs.xfs") is None:
        return "mkfs.xfs not installed (apt-get install xfsprogs)"
    return None


@contextlib.contextmanager
def xfs_volume(image: Path, mountpoint: Path, size: int):
    """A fresh, sparse XFS image with reflink=1, loop-mounted at `mountpoint` for the block;
    unmounted and deleted afterwards. Raises RuntimeError when mounting fails."""
    image.unlink(missing_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(size)
    try:
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
        mounted = subprocess.run(
            ["mount", "-o", "loop", str(image), str(mountpoint)], check=False, capture_output=True, text=True
        )
        if mounted.returncode != 0:
            raise RuntimeError(f"cannot loop-mount {image}: {mounted.stderr.strip()}")
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        image.unlink(missing_ok=True)


def used_bytes(path: Path) -> int:
    """Bytes allocated on the filesystem holding `path`, after writeback (XFS allocates then)."""
    os.sync()
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def fs_type(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], check=False, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"

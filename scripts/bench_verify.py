#!/usr/bin/env python3
"""Benchmark `surgeon verify` on a synthetic llama grown 2x, whole-model vs layer at a time.

    python scripts/bench_verify.py            # ~0.9B llama (hidden 2048, 16 layers) -> 32 layers
    python scripts/bench_verify.py --small    # quick run (hidden 1024, 8 layers)

The source is a random float32 llama built with modelsurgeon.tiny (with its small BPE
tokenizer), grown with `interpolate factor 2, new: zero` (exact, so both modes must pass).
Each verify runs in its own subprocess, which reports its wall time and its own peak RSS
(VmHWM of that process alone); a bare process that imports torch and transformers gives
the fixed overhead. Nothing here asserts on timings; the exit status is non-zero when a verify
fails or the two modes disagree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

GB = 1e9
# Peak RSS is VmHWM of the child's own address space: ru_maxrss would also count what the
# (large) parent had resident when it forked the child, which Linux carries across exec.
CHILD = r"""
import json, sys, time
def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
t0 = time.perf_counter()
import torch, transformers
args = json.loads(sys.argv[1])
report = None
if args["mode"] != "imports":
    from modelsurgeon.verify import verify_checkpoint
    report = verify_checkpoint(
        args["source"], args["grown"], max_new_tokens=args["tokens"], layerwise=args["mode"] == "layerwise"
    )
print(json.dumps({
    "wall_s": time.perf_counter() - t0,
    "peak_rss": peak_rss(),
    "passed": None if report is None else report.passed,
    "timings": None if report is None else report.timings,
    "logits": None if report is None else report.metrics["logits"],
    "greedy": None if report is None else report.metrics["greedy"]["first_divergence"],
}))
"""


def build(workdir: Path, hidden: int, layers: int, vocab: int) -> tuple[Path, Path]:
    from modelsurgeon.grow.engine import grow
    from modelsurgeon.plan import parse_plan
    from modelsurgeon.tiny import build_tiny

    tag = f"llama-h{hidden}-l{layers}-v{vocab}"
    src, out = workdir / tag, workdir / f"{tag}-x2"
    if not (src / "config.json").is_file():
        print(f"building {src} ...", flush=True)
        heads = max(hidden // 128, 4)  # head_dim 128 like real llamas (64 for the small run)
        build_tiny(
            "llama",
            src,
            n_layers=layers,
            hidden=hidden,
            heads=heads,
            kv_heads=max(heads // 4, 1),
            vocab=vocab,
            max_shard_size="2GB",
        )
    if not (out / "surgeon.json").is_file():
        print(f"growing {out} ...", flush=True)
        grow(src, parse_plan("name: x2\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n"), out, force=True)
    return src, out


def run(mode: str, src: Path, out: Path, tokens: int) -> dict:
    arg = json.dumps({"mode": mode, "source": str(src), "grown": str(out), "tokens": tokens})
    proc = subprocess.run([sys.executable, "-c", CHILD, arg], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def size(path: Path) -> float:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) / GB


def table(rows: list[tuple[str, dict]], src: Path, out: Path, tokens: int) -> str:
    lines = [
        f"source {src.name}: {size(src):.2f} GB float32; grown 2x: {size(out):.2f} GB; 3 built-in prompts, "
        f"{tokens} greedy tokens",
        "| mode | wall (s) | peak RSS (GB) | source load+run (s) | grown load+run (s) | passed | max abs dlogit |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in rows:
        t = r["timings"] or {}
        src_s = f"{t['source_load']:.1f}+{t['source_run']:.1f}" if t else "-"
        out_s = f"{t['grown_load']:.1f}+{t['grown_run']:.1f}" if t else "-"
        dl = f"{r['logits']['max_abs']:.1e}" if r["logits"] else "-"
        lines.append(
            f"| {mode} | {r['wall_s']:.1f} | {r['peak_rss'] / GB:.2f} | {src_s} | {out_s} | "
            f"{r['passed'] if r['passed'] is not None else '-'} | {dl} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="hidden 1024, 8 layers")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--workdir", type=Path, default=Path("bench_out") / "verify")
    a = p.parse_args()
    hidden, layers = (1024, 8) if a.small else (a.hidden, a.layers)
    src, out = build(a.workdir, hidden, layers, a.vocab)
    rows = [(mode, run(mode, src, out, a.max_new_tokens)) for mode in ("imports", "whole model", "layerwise")]
    print(table(rows, src, out, a.max_new_tokens))
    whole, layered = rows[1][1], rows[2][1]
    if not (whole["passed"] and layered["passed"]) or whole["greedy"] != layered["greedy"]:
        sys.exit("verify failed or the two modes disagree")


if __name__ == "__main__":
    main()

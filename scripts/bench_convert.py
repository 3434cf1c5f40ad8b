#!/usr/bin/env python3
"""Benchmark `surgeon convert` against `cp` of the same bytes, measured in the same run.

    python scripts/bench_convert.py            # 1B-class llama (hidden 2048, 16 layers, vocab 128256, tied, bf16)
    python scripts/bench_convert.py --small    # quick run (hidden 512, 4 layers, vocab 32000)

The synthetic checkpoint comes from scripts/benchlib.py (shared with bench_grow.py; generated
tensor by tensor once, cached under bench_out/synthetic/, no model instantiated).
Jobs: bf16 -> float32, float32 -> bf16 (back to the source), a bf16 reshard (pure byte copies),
bf16 -> .bin shards and bf16 -> GGUF, each in a fresh subprocess whose wall time and peak RSS
are reported; `cp -r` of the bf16 and of the float32 checkpoint are the baselines. Every job
starts with its inputs in the page cache. Outputs are checked afterwards: the round trip is
bit-identical to the source and float32 tensors equal `tensor.to(float32)`. The exit status is
non-zero only when a check fails; nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from benchlib import RSS_HELPER, background_busy, dir_bytes, ensure_synthetic, synth_spec  # scripts/ is on sys.path
from safetensors import safe_open

GB, MB = 1e9, 1e6
REPO = Path(__file__).resolve().parent.parent


def gguf_source(run: Path, model: Path) -> Path:
    """The synthetic model plus a tokenizer (GGUF carries one), its weights linked, not copied."""
    from modelsurgeon.tiny import tiny_tokenizer

    src = run / "gguf-src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for f in model.iterdir():
        (src / f.name).symlink_to(f.resolve())
    tiny_tokenizer(256).save_pretrained(src)  # ids 0..255; the rest of the vocabulary is padding
    return src


def weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))


def run_job(name: str, cmd: list[str], reads: list[Path], out: Path, logs: Path) -> dict:
    os.sync()  # no job pays for an earlier job's writeback
    subprocess.run(["cat", *map(str, reads)], stdout=subprocess.DEVNULL, check=True)  # warm inputs
    busy = background_busy()
    result, log = logs / f"{name}.json", logs / f"{name}.log"
    print(f"  {name}: {' '.join(cmd)}", flush=True)
    subprocess.run([sys.executable, "-c", RSS_HELPER, str(result), str(log), *cmd], check=True)
    job = {
        "name": name,
        **json.loads(result.read_text()),
        "in_bytes": sum(f.stat().st_size for f in reads),
        "busy": busy,
    }
    job["out_bytes"] = dir_bytes(out) if out.exists() else 0
    if job["rc"]:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
    return job


def surgeon(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "surgeon"
    return [
        str(exe) if exe.exists() else sys.executable,
        *([] if exe.exists() else ["-m", "modelsurgeon"]),
        "convert",
        *args,
    ]


def jobs(model: Path, run: Path, logs: Path) -> dict[str, dict]:
    o = {k: run / k for k in ("f32", "bf16", "reshard", "bin", "gguf", "cp")}
    for p in o.values():
        shutil.rmtree(p, ignore_errors=True)
    out = {"cp bf16": run_job("cp_bf16", ["cp", "-r", str(model), str(o["cp"])], weight_files(model), o["cp"], logs)}
    shutil.rmtree(o["cp"])
    out["bf16 -> float32"] = run_job(
        "to_f32", surgeon(str(model), "-o", str(o["f32"]), "--dtype", "float32"), weight_files(model), o["f32"], logs
    )
    out["cp float32"] = run_job(
        "cp_f32", ["cp", "-r", str(o["f32"]), str(o["cp"])], weight_files(o["f32"]), o["cp"], logs
    )
    shutil.rmtree(o["cp"])
    out["float32 -> bf16"] = run_job(
        "to_bf16",
        surgeon(str(o["f32"]), "-o", str(o["bf16"]), "--dtype", "bfloat16"),
        weight_files(o["f32"]),
        o["bf16"],
        logs,
    )
    out["bf16 reshard 1GB"] = run_job(
        "reshard",
        surgeon(str(model), "-o", str(o["reshard"]), "--max-shard-size", "1GB"),
        weight_files(model),
        o["reshard"],
        logs,
    )
    shutil.rmtree(o["reshard"])
    out["bf16 -> .bin 1GB"] = run_job(
        "to_bin",
        surgeon(str(model), "-o", str(o["bin"]), "--to", "bin", "--max-shard-size", "1GB"),
        weight_files(model),
        o["bin"],
        logs,
    )
    shutil.rmtree(o["bin"])
    try:
        import gguf  # noqa: F401  (the optional extra)

        src = gguf_source(run, model)
        out["bf16 -> gguf"] = run_job(
            "to_gguf", surgeon(str(src), "-o", str(o["gguf"]), "--to", "gguf"), weight_files(model), o["gguf"], logs
        )
        shutil.rmtree(o["gguf"])
    except ImportError:
        print("  (gguf not installed: GGUF job skipped)")
    return out


def check(model: Path, run: Path) -> list[str]:
    """The round trip is bit-identical; float32 tensors are exactly tensor.to(float32)."""
    problems = []
    index = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
    f32 = {n: f for f in (run / "f32").glob("*.safetensors") for n in safe_open(f, "pt").keys()}
    back = {n: f for f in (run / "bf16").glob("*.safetensors") for n in safe_open(f, "pt").keys()}
    if set(f32) != set(index) or set(back) != set(index):
        return ["tensor names differ from the source"]
    for name, fname in index.items():  # every tensor, one at a time
        src = safe_open(model / fname, "pt").get_tensor(name)
        if not torch.equal(safe_open(f32[name], "pt").get_tensor(name), src.to(torch.float32)):
            problems.append(f"{name}: float32 output is not tensor.to(float32)")
        rt = safe_open(back[name], "pt").get_tensor(name)
        if rt.dtype != src.dtype or not torch.equal(rt.view(torch.int16), src.view(torch.int16)):
            problems.append(f"{name}: round trip is not bit-identical")
    return problems


def median_of(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Median times over rounds; the largest peak RSS and background load."""
    out = {}
    for name, last in rounds[-1].items():
        runs = [r[name] for r in rounds]
        out[name] = {
            **last,
            **{k: statistics.median(j[k] for j in runs) for k in ("wall_s", "durable_s", "cpu_s")},
            "peak_rss": max(j["peak_rss"] for j in runs),
            "rc": max(j["rc"] for j in runs),
            "busy": max((j["busy"] for j in runs if j["busy"] is not None), default=None),
        }
    return out


def report(results: dict[str, dict], n_rounds: int) -> None:
    cp = {"bf16": results["cp bf16"], "float32": results["cp float32"]}
    base = {
        "bf16 -> float32": ("bf16", "float32"),
        "float32 -> bf16": ("float32", "bf16"),
        "bf16 reshard 1GB": ("bf16", "bf16"),
        "bf16 -> .bin 1GB": ("bf16", "bf16"),
        "bf16 -> gguf": ("bf16", "bf16"),
    }
    head = (
        f"{'job':<18}{'in GB':>7}{'out GB':>8}{'wall s':>8}{'+sync s':>9}{'peak RSS MB':>13}{'x cp(in)':>10}"
        f"{'x cp(out)':>11}{'bg CPU':>8}"
    )
    print(f"\nmedian of {n_rounds} round(s); peak RSS and bg CPU: the largest over rounds")
    print(head + "\n" + "-" * len(head))
    for name, j in results.items():
        ratios = ("", "")
        if name in base:
            a, b = (cp[k]["durable_s"] for k in base[name])
            ratios = (f"{j['durable_s'] / a:.2f}x", f"{j['durable_s'] / b:.2f}x")
        flag = "" if j["rc"] == 0 else f"  (exit {j['rc']})"
        busy = "n/a" if j["busy"] is None else f"{100 * j['busy']:.0f}%"
        print(
            f"{name:<18}{j['in_bytes'] / GB:>7.2f}{j['out_bytes'] / GB:>8.2f}{j['wall_s']:>8.2f}{j['durable_s']:>9.2f}"
            f"{j['peak_rss'] / MB:>13.0f}{ratios[0]:>10}{ratios[1]:>11}{busy:>8}{flag}"
        )
    print("\n+sync s: until the job exits and os.sync() returns (output on disk); ratios use it.")
    print("x cp(in)/x cp(out): against cp -r of a checkpoint the size of the job's input/output,")
    print("both measured in this run. Peak RSS: ru_maxrss of the job (mapped file pages included).")
    print("bg CPU: share of all CPUs other processes used in the second before the job started.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a small model for a quick run")
    ap.add_argument("--workdir", type=Path, default=REPO / "bench_out", help="cache and outputs (default bench_out/)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every job; report medians (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the float32 and round-trip outputs")
    args = ap.parse_args()
    spec = synth_spec(512, 4, 2048, 32000) if args.small else synth_spec(2048, 16, 8192, 128256)
    model, _ = ensure_synthetic(args.workdir, spec)
    run = args.workdir / "convert"
    logs = run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"model: {model} ({dir_bytes(model) / GB:.2f} GB), {os.cpu_count()} CPUs, torch {torch.__version__}")
    t0 = time.perf_counter()
    rounds = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        rounds.append(jobs(model, run, logs))
    results = median_of(rounds)
    report(results, args.rounds)
    problems = check(model, run) if all(j["rc"] == 0 for j in results.values()) else ["a job failed"]
    (run / "results.json").write_text(
        json.dumps({"model": str(model), "median": results, "rounds": rounds, "problems": problems}, indent=2)
    )
    print(
        f"\ncheck: {'PASS' if not problems else 'FAIL'} ({len(problems)} problem(s)) in "
        f"{time.perf_counter() - t0:.0f} s total"
    )
    for p in problems[:10]:
        print("  " + p)
    if not args.keep:
        for k in ("f32", "bf16", "gguf-src"):
            shutil.rmtree(run / k, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark `surgeon grow` (a SOLAR-style splice) against baselines measured in the same run.

    python scripts/bench_grow.py                # 1B-class llama, 16 -> 24 layers (~2.5 GB in)
    python scripts/bench_grow.py --small        # quick run (hidden 512, 8 layers, vocab 32000)
    python scripts/bench_grow.py --only splice  # just the ext4 ratio: the grow and cp -r of its output

A synthetic llama checkpoint with random bf16 weights is generated once (cached under
--workdir) and grown with `splice`. Every job runs as its own subprocess and reports wall time,
peak RSS and output bytes; ratios are taken against `cp` of the output bytes and, when
installed (scripts/setup_mergekit_venv.sh), mergekit passthrough with the equivalent config.
Where the machine can loop-mount an image (root, xfsprogs), the same grow also runs inside a
fresh XFS with reflink=1, against `cp -r --reflink=always` of its output: time and the new
blocks each allocates.
All jobs run --repeat rounds (median times reported); each starts from a warm page cache with
no dirty pages left by the job before it, and writes into a directory that does not exist yet
(as `cp -r` does: replacing an earlier output would time deleting it too). The outputs are then
spot-checked: same tensor names, sampled tensors bit-identical to each other and to the source
tensors they came from. Exit status is non-zero when a job fails or that check fails; nothing
here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from benchlib import (  # scripts/ is on sys.path when a script runs
    RSS_HELPER,
    background_busy,
    dir_bytes,
    ensure_synthetic,
    fs_type,
    layer_shapes,
    llama_shapes,
    synth_spec,
    used_bytes,
    xfs_unavailable,
    xfs_volume,
)
from safetensors import safe_open

GB = 1e9
MB = 1e6
RSS_METHOD = (
    "peak RSS = ru_maxrss of getrusage(RUSAGE_CHILDREN) in a fresh helper process per job "
    "(the largest single process of the job's tree, file-backed mmap pages included)"
)


# ----------------------------------------------------------------------------- jobs


@dataclass
class Job:
    name: str
    rc: int
    wall_s: float  # until the process exited
    durable_s: float  # until the process exited and os.sync() returned
    peak_rss: int
    cpu_s: float
    out_bytes: int
    log: str
    bg_busy: float | None = None  # share of all CPUs busy with other processes just before the job
    new_bytes: int | None = None  # blocks the job allocated (XFS jobs only)


def model_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def warm(paths: list[Path]) -> None:
    # Read the job's inputs once untimed so every job starts from a warm page cache (the input
    # is far smaller than RAM here); sync first so no job pays for an earlier job's writeback.
    os.sync()
    if paths:  # cat with no files would read stdin
        subprocess.run(["cat", *map(str, paths)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)


def run_job(name: str, cmd: list[str], out: Path, reads: list[Path], logs: Path, env=None) -> Job:
    warm(reads)
    bg = background_busy()
    slug = name.split(" (")[0].replace(" ", "_")
    result, log = logs / f"{slug}.json", logs / f"{slug}.log"
    print(f"  running {name}: {' '.join(cmd)}", flush=True)
    subprocess.run([sys.executable, "-c", RSS_HELPER, str(result), str(log), *cmd], check=True, env=env)
    r = json.loads(result.read_text())
    job = Job(name=name, out_bytes=dir_bytes(out) if out.exists() else 0, log=str(log), bg_busy=bg, **r)
    if job.rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        print(f"  {name} FAILED (exit {job.rc}); log tail:\n{tail}", file=sys.stderr)
    return job


def cp_job(name: str, src: Path, dst: Path, logs: Path) -> Job:
    shutil.rmtree(dst, ignore_errors=True)  # cp -r into an existing dir would nest the copy
    job = run_job(name, ["cp", "-r", str(src), str(dst)], dst, model_files(src), logs)
    shutil.rmtree(dst, ignore_errors=True)
    return job


def surgeon_cmd() -> list[str]:
    # Path(sys.executable) is not resolved: the venv's bin/ is where the console script lives.
    exe = Path(sys.executable).parent / "surgeon"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "modelsurgeon"]


def write_plans(run: Path, model: Path, layers: int, trim: int) -> tuple[Path, Path]:
    plan = run / "plan.yaml"
    plan.write_text(f"name: bench-splice\nsteps:\n  - op: splice\n    trim: {trim}\n")
    mk = run / "mergekit.yml"
    mk.write_text(
        "slices:\n"
        f"  - sources: [{{model: {model}, layer_range: [0, {layers - trim}]}}]\n"
        f"  - sources: [{{model: {model}, layer_range: [{trim}, {layers}]}}]\n"
        "merge_method: passthrough\ndtype: bfloat16\n"
    )
    return plan, mk


def mergekit_job(exe: Path, config: Path, model: Path, out: Path, logs: Path) -> Job:
    # --no-copy-tokenizer: the synthetic model has none. HF_HUB_OFFLINE: a local path must never
    # turn into a hub lookup (no internet here; a timeout would be billed to mergekit's wall).
    # Defaults otherwise (CPU, default shard size, no lazy unpickle: inputs are safetensors).
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [str(exe), str(config), str(out), "--no-copy-tokenizer"]
    return run_job("mergekit passthrough", cmd, out, model_files(model), logs, env=env)


# ----------------------------------------------------------------------------- correctness


def headers(directory: Path) -> dict[str, tuple[str, tuple[int, ...], Path]]:
    out = {}
    for f in model_files(directory):
        with safe_open(f, framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                sl = fh.get_slice(name)
                out[name] = (sl.get_dtype(), tuple(sl.get_shape()), f)
    return out


def load(heads: dict, name: str) -> torch.Tensor:
    with safe_open(heads[name][2], framework="pt") as fh:
        return fh.get_tensor(name)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    # Compare raw bytes, not values: NaN != NaN and -0.0 == 0.0 would both mislead.
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def sample_pairs(spec: dict, layers: int, trim: int) -> list[tuple[str, str]]:
    """(output name, source name) for embed, final norm and three layers on both sides of the seam."""
    keep = layers - trim
    src_of = lambda i: i if i < keep else i - keep + trim  # [0, keep) + [trim, layers)
    pairs = [("model.embed_tokens.weight",) * 2, ("model.norm.weight",) * 2]
    for i in (0, keep, 2 * keep - 1):
        for (o, _), (s, _) in zip(layer_shapes(spec, i), layer_shapes(spec, src_of(i))):
            pairs.append((o, s))
    return pairs


def check_outputs(model: Path, outs: dict[str, Path], spec: dict, trim: int) -> list[str]:
    """Return a list of problems (empty = PASS)."""
    layers, grown = spec["layers"], 2 * (spec["layers"] - trim)
    expected = {n: ("BF16", s) for n, s in llama_shapes(spec, grown)}
    src = headers(model)
    problems = []
    heads = {k: headers(v) for k, v in outs.items()}
    for k, h in heads.items():
        got = {n: (d, s) for n, (d, s, _) in h.items()}
        if got != expected:
            extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
            problems.append(f"{k}: tensors differ from a {grown}-layer llama: extra {extra[:5]}, missing {missing[:5]}")
        n = json.loads((outs[k] / "config.json").read_text()).get("num_hidden_layers")
        if n != grown:
            problems.append(f"{k}: config num_hidden_layers = {n}, expected {grown}")
    for out_name, src_name in sample_pairs(spec, layers, trim):
        ref = load(src, src_name)
        for k, h in heads.items():
            if out_name in h and not same_bits(load(h, out_name), ref):
                problems.append(f"{k}: {out_name} is not bit-identical to source {src_name}")
    return problems


# ----------------------------------------------------------------------------- report


def median_jobs(rounds: list[dict[str, Job]]) -> dict[str, Job]:
    """Median times and the largest peak RSS over rounds, per job present in every round."""
    keys = [k for k in rounds[0] if all(k in r for r in rounds)]
    med = lambda k, f: statistics.median(getattr(r[k], f) for r in rounds)
    return {
        k: Job(
            name=rounds[-1][k].name,
            rc=max(r[k].rc for r in rounds),
            wall_s=med(k, "wall_s"),
            durable_s=med(k, "durable_s"),
            peak_rss=max(r[k].peak_rss for r in rounds),
            cpu_s=med(k, "cpu_s"),
            out_bytes=rounds[-1][k].out_bytes,
            log=rounds[-1][k].log,
            bg_busy=max_or_none(r[k].bg_busy for r in rounds),
            new_bytes=max_or_none(r[k].new_bytes for r in rounds),
        )
        for k in keys
    }


def max_or_none(values) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def ratios(jobs: dict[str, Job]) -> dict[str, float | None]:
    s, cp, mk = jobs.get("surgeon"), jobs.get("cp_out"), jobs.get("mergekit")
    get = lambda j, f: getattr(j, f) if j else None
    return {
        "surgeon_wall_over_cp_output_wall": ratio(get(s, "wall_s"), get(cp, "wall_s")),
        "surgeon_durable_over_cp_output_durable": ratio(get(s, "durable_s"), get(cp, "durable_s")),
        "surgeon_wall_over_mergekit_wall": ratio(get(s, "wall_s"), get(mk, "wall_s")),
        "surgeon_durable_over_mergekit_durable": ratio(get(s, "durable_s"), get(mk, "durable_s")),
        "surgeon_rss_over_mergekit_rss": ratio(get(s, "peak_rss"), get(mk, "peak_rss")),
        "widen_wall_over_cp_output_wall": ratio(get(jobs.get("widen"), "wall_s"), get(jobs.get("cp_widen"), "wall_s")),
        "widen_durable_over_cp_output_durable": ratio(
            get(jobs.get("widen"), "durable_s"), get(jobs.get("cp_widen"), "durable_s")
        ),
    }


def fx(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def print_jobs(jobs: dict[str, Job], rounds: list[dict[str, Job]]) -> None:
    cols = (
        f"{'job':<22}{'wall s':>8}{'(min-max)':>15}{'+sync s':>9}{'peak RSS MB':>13}{'output GB':>11}"
        f"{'GB/s':>7}{'CPU s':>7}{'bg CPU':>8}"
    )
    print(f"\nmedian of {len(rounds)} round(s); peak RSS and bg CPU are the largest over rounds")
    print(cols + "\n" + "-" * len(cols))
    for k, j in jobs.items():
        walls = [rd[k].wall_s for rd in rounds]
        spread = f"({min(walls):.2f}-{max(walls):.2f})"
        gbps = j.out_bytes / GB / j.durable_s if j.durable_s else None
        status = "" if j.rc == 0 else f"  (exit {j.rc})"
        print(
            f"{j.name:<22}{j.wall_s:>8.2f}{spread:>15}{j.durable_s:>9.2f}{j.peak_rss / MB:>13.0f}"
            f"{j.out_bytes / GB:>11.3f}{fmt(gbps):>7}{j.cpu_s:>7.1f}{pct(j.bg_busy):>8}{status}"
        )
    print("\nwall s: until the process exits; +sync s: until it exits and os.sync() returns (output on")
    print("disk). surgeon fsyncs its output itself; cp and mergekit leave dirty pages. GB/s uses +sync s.")
    print("bg CPU: share of all CPUs used by other processes in the second before the job started.")
    busy = max_or_none(j.bg_busy for rd in rounds for j in rd.values())
    if busy is not None and busy > 0.10:
        print(f"WARNING: other processes used up to {pct(busy)} of the CPUs: times are inflated and noisy.")


def print_ratios(jobs: dict[str, Job], r: dict[str, float | None]) -> None:
    print("\nratios (lower is better for surgeon):")
    print(
        f"  surgeon / cp of output bytes   wall {fx(r['surgeon_wall_over_cp_output_wall'])}"
        f"   +sync {fx(r['surgeon_durable_over_cp_output_durable'])}   (target <= 1.2x)"
    )
    print(
        f"  surgeon / mergekit passthrough wall {fx(r['surgeon_wall_over_mergekit_wall'])}"
        f"   +sync {fx(r['surgeon_durable_over_mergekit_durable'])}"
    )
    print(f"  surgeon / mergekit peak RSS    {fx(r['surgeon_rss_over_mergekit_rss'])}")
    s = jobs.get("surgeon")
    if s:
        print(f"  surgeon peak RSS {s.peak_rss / MB:.0f} MB (target < 1000 MB)")
    w = jobs.get("widen")
    if w:
        print(
            f"  widen hidden 2x / cp of its output   wall {fx(r['widen_wall_over_cp_output_wall'])}"
            f"   +sync {fx(r['widen_durable_over_cp_output_durable'])}; peak RSS {w.peak_rss / MB:.0f} MB"
        )
    print_xfs(jobs)


def print_xfs(jobs: dict[str, Job]) -> None:
    g, c = jobs.get("xfs_surgeon"), jobs.get("xfs_cp")
    if g is None:
        return
    print("\nXFS with reflink (a fresh loop-mounted image): time until on disk, new blocks allocated")
    for j in (g, c):
        if j is not None and j.new_bytes is not None:
            share = j.new_bytes / j.out_bytes if j.out_bytes else None
            print(f"  {j.name:<22}{j.durable_s:>7.2f} s  {j.new_bytes / MB:>9.1f} MB new ({pct(share)} of its output)")


def env_info() -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "ram_gb": round(mem / GB, 1),
        "surgeon": " ".join(surgeon_cmd()),
        "workdir_fs": fs_type(Path("bench_out").resolve().parent),
        "loadavg": os.getloadavg(),
    }


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--intermediate", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--heads", type=int, default=None, help="default: hidden // 64")
    p.add_argument("--kv-heads", type=int, default=None, help="default: heads // 4")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--trim", type=int, default=None, help="splice trim (default: layers // 4)")
    p.add_argument("--small", action="store_true", help="hidden 512, 8 layers, intermediate 2048, vocab 32000")
    p.add_argument("--workdir", type=Path, default=Path("bench_out"))
    p.add_argument(
        "--mergekit",
        type=Path,
        default=None,
        help="mergekit-yaml to compare with (default: WORKDIR/mergekit-venv/bin/mergekit-yaml)",
    )
    p.add_argument("--no-mergekit", action="store_true", help="skip the mergekit job")
    p.add_argument("--no-widen", action="store_true", help="skip the hidden 2x widen job")
    p.add_argument("--no-xfs", action="store_true", help="skip the XFS reflink jobs")
    p.add_argument(
        "--only",
        choices=["splice"],
        default=None,
        help="splice: only the ext4 splice and cp -r of its output (no input copy, mergekit, XFS or widen jobs), "
        "the ext4 ratio in about a minute",
    )
    p.add_argument("--repeat", type=int, default=3, help="rounds of all jobs; times are medians (default 3)")
    p.add_argument("--keep", action="store_true", help="keep the grown outputs (the synthetic model is always cached)")
    p.add_argument("--json", type=Path, default=None, help="also save the numbers here")
    args = p.parse_args(argv)
    if args.small:
        args.hidden, args.layers, args.intermediate, args.vocab = 512, 8, 2048, 32000
    if args.only == "splice":
        args.no_mergekit = args.no_widen = args.no_xfs = True
    args.trim = args.layers // 4 if args.trim is None else args.trim
    if not 0 < args.trim < args.layers:
        p.error("--trim must be in (0, layers)")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def find_mergekit(args: argparse.Namespace) -> Path | None:
    if args.no_mergekit:
        return None
    exe = args.mergekit or args.workdir / "mergekit-venv" / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    print(f"note: mergekit not found at {exe}; skipping it (create it with scripts/setup_mergekit_venv.sh)")
    return None


def prepare(args: argparse.Namespace) -> tuple[dict, Path, float | None]:
    spec = synth_spec(args.hidden, args.layers, args.intermediate, args.vocab, args.heads, args.kv_heads, args.shards)
    print(f"synthetic llama: {spec}")
    model, gen_s = ensure_synthetic(args.workdir, spec)
    size = dir_bytes(model)
    if gen_s is None:
        print(f"  cached at {model} ({size / GB:.2f} GB)")
    else:
        peak = resource_peak_mb()
        print(
            f"  generated {model} ({size / GB:.2f} GB) in {gen_s:.1f} s; benchmark process peak RSS so far "
            f"{peak:.0f} MB"
        )
    return spec, model, gen_s


def resource_peak_mb() -> float:
    import resource

    unit = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / MB


def run_all(args, model: Path, run: Path, mk_exe: Path | None) -> tuple[dict[str, Job], dict[str, Path]]:
    logs = run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    plan, mk_cfg = write_plans(run, model, args.layers, args.trim)
    out_s, out_mk = run / "out-surgeon", run / "out-mergekit"
    jobs: dict[str, Job] = {}
    if args.only != "splice":
        jobs["cp_in"] = cp_job("cp input (reference)", model, run / "copy-input", logs)
    # Untimed, as cp_job does for its copy: `grow --force` over the previous round's output would
    # also time deleting it (3.4 GB: 0.3 s of system CPU, about 1 s of wall on the 2-core VM), which
    # made every round after the first one slower (1.67 s in round 1, 2.52 s in rounds 2 and 3).
    shutil.rmtree(out_s, ignore_errors=True)
    cmd = [*surgeon_cmd(), "grow", str(model), "--plan", str(plan), "-o", str(out_s)]
    jobs["surgeon"] = run_job("surgeon grow splice", cmd, out_s, model_files(model), logs)
    outs = {"surgeon": out_s} if jobs["surgeon"].rc == 0 else {}
    if outs:
        jobs["cp_out"] = cp_job("cp output (baseline)", out_s, run / "copy-output", logs)
    if mk_exe:
        jobs["mergekit"] = mergekit_job(mk_exe, mk_cfg, model, out_mk, logs)
        if jobs["mergekit"].rc == 0:
            outs["mergekit"] = out_mk
    if not args.no_xfs:
        run_xfs(model, run, logs, plan, jobs)
    if not args.no_widen:
        run_widen(model, run, logs, jobs)
    return jobs, outs


XFS_PROBLEMS: list[str] = []  # checks of the XFS output, made while its image is mounted


def run_xfs(model: Path, run: Path, logs: Path, plan: Path, jobs: dict[str, Job]) -> None:
    """The same grow inside a fresh XFS with reflink, against cp --reflink of its output; each
    job's new blocks are the filesystem's used bytes after it minus before it (after sync)."""
    why = xfs_unavailable()
    if why is not None:
        print(f"  XFS reflink jobs skipped: {why}")
        return
    size = 2 * dir_bytes(model) + 2 * 10**9  # room for an output that shares nothing
    with xfs_volume(run / "xfs.img", run / "xfs", size) as mnt:
        src, out, copy = mnt / "model", mnt / "out", mnt / "copy"
        shutil.copytree(model, src)  # untimed: the source must live on the same filesystem
        before = used_bytes(mnt)
        cmd = [*surgeon_cmd(), "grow", str(src), "--plan", str(plan), "-o", str(out)]
        jobs["xfs_surgeon"] = run_job("surgeon grow on XFS", cmd, out, model_files(src), logs)
        jobs["xfs_surgeon"].new_bytes = used_bytes(mnt) - before
        if jobs["xfs_surgeon"].rc:
            return
        before = used_bytes(mnt)
        jobs["xfs_cp"] = run_job(
            "cp --reflink on XFS", ["cp", "-r", "--reflink=always", str(out), str(copy)], copy, model_files(out), logs
        )
        jobs["xfs_cp"].new_bytes = used_bytes(mnt) - before
        ext4 = run / "out-surgeon"
        if ext4.exists():  # the XFS output must be the same checkpoint as the ext4 one
            a, b = headers(ext4), headers(out)
            if {n: v[:2] for n, v in a.items()} != {n: v[:2] for n, v in b.items()}:
                XFS_PROBLEMS.append("XFS output's tensors differ from the ext4 output's")
            else:
                XFS_PROBLEMS.extend(
                    f"XFS output: {n} differs from the ext4 output"
                    for n in list(a)[::7]
                    if not same_bits(load(a, n), load(b, n))
                )


def run_widen(model: Path, run: Path, logs: Path, jobs: dict[str, Job]) -> None:
    """Width growth: every tensor is computed (tiled, split), none is a byte copy; no peer tool
    does this, so the baseline is cp of the (twice as large) output."""
    plan = run / "widen.yaml"
    plan.write_text("name: bench-widen\nsteps:\n  - op: widen\n    hidden: 2x\n")
    out = run / "out-widen"
    shutil.rmtree(out, ignore_errors=True)  # left by an interrupted run: never time deleting it
    cmd = [*surgeon_cmd(), "grow", str(model), "--plan", str(plan), "-o", str(out)]
    jobs["widen"] = run_job("surgeon widen hidden 2x", cmd, out, model_files(model), logs)
    if jobs["widen"].rc == 0:
        jobs["cp_widen"] = cp_job("cp widen output", out, run / "copy-widen", logs)
        shutil.rmtree(out, ignore_errors=True)


def run_rounds(args, model: Path, run: Path, mk_exe: Path | None) -> tuple[list[dict[str, Job]], dict[str, Path]]:
    rounds: list[dict[str, Job]] = []
    for k in range(args.repeat):  # whole rounds, so slow drift of the VM hits every job alike
        print(f"round {k + 1}/{args.repeat}", flush=True)
        jobs, outs = run_all(args, model, run, mk_exe)
        rounds.append(jobs)
        if any(j.rc for j in jobs.values()):
            break  # the log tail is printed; more rounds would only repeat the failure
    return rounds, outs


def save_json(path: Path, args, spec: dict, gen_s, jobs, rounds, r, verdict: str, problems: list[str]) -> None:
    data = {
        "spec": spec,
        "trim": args.trim,
        "generation_s": gen_s,
        "env": env_info(),
        "rss_method": RSS_METHOD,
        "jobs": {k: asdict(j) for k, j in jobs.items()},
        "rounds": [{k: asdict(j) for k, j in rd.items()} for rd in rounds],
        "ratios": r,
        "check": verdict,
        "problems": problems,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"numbers saved to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    mk_exe = find_mergekit(args)
    spec, model, gen_s = prepare(args)
    run = args.workdir / "run"
    print(f"splice trim {args.trim}: {args.layers} -> {2 * (args.layers - args.trim)} layers")
    print(f"method: {RSS_METHOD}")
    print(f"output filesystem: {fs_type(args.workdir)}; load average before: {os.getloadavg()}")
    print("cache: each job's inputs are read once (cat > /dev/null) untimed right before it, after a sync,")
    print("       so every job starts warm and none pays for another's writeback.")
    rounds, outs = run_rounds(args, model, run, mk_exe)
    jobs = median_jobs(rounds)
    problems = [f"{j.name} exited {j.rc}" for j in jobs.values() if j.rc != 0]
    problems += check_outputs(model, outs, spec, args.trim) if outs else ["no output to check"]
    problems += XFS_PROBLEMS
    r = ratios(jobs)
    print_jobs(jobs, rounds)
    print_ratios(jobs, r)
    verdict = "PASS" if not problems else "FAIL"
    print(f"\ncorrectness ({', '.join(outs) or 'nothing'} vs source; names + sampled tensors bit-identical): {verdict}")
    for p in problems:
        print(f"  - {p}")
    if args.json:
        save_json(args.json, args, spec, gen_s, jobs, rounds, r, verdict, problems)
    if args.keep or problems:
        print(f"outputs and logs kept in {run}")
    else:
        shutil.rmtree(run, ignore_errors=True)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

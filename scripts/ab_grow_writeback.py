"""In-process A/B of the ext4 write path of `grow` (the README's early-writeback figures):
alternate variants, several rounds, each from a warm page cache.

    AB_MODEL=bench_out/synthetic/llama-h2048-l16-i8192-v128256-s2 AB_PLAN=bench_out/run/plan.yaml \
        NOCP=1 python scripts/ab_grow_writeback.py w4,w4+nosfr 8

(the model and the splice plan that scripts/bench_grow.py generates; NOCP=1 skips timing cp -r +
sync between rounds, whose column then reads 1.00.)
variants: fresh (grow into a new OUT), force (grow over an existing OUT: --force deletes the old),
          w1 w2 w4 w8 (writer threads), c<MB> (kernel copy chunk), nosfr (no early writeback:
          kcopy.start_writeback disabled)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from modelsurgeon.grow.engine import grow
from modelsurgeon.io import kcopy, writer

M = Path(os.environ.get("AB_MODEL", "bench_out/synthetic/llama-h2048-l16-i8192-v128256-s2"))
PLAN = Path(os.environ.get("AB_PLAN", "bench_out/run/plan.yaml"))
OUT = Path(os.environ.get("AB_OUT", "bench_out/ab-out"))
CP = Path(os.environ.get("AB_CP", "bench_out/ab-cp"))
ORIG_START = kcopy.start_writeback


FSYNC = [0.0]
_orig_fsync = os.fsync


def timed_fsync(fd):
    t = time.perf_counter()
    _orig_fsync(fd)
    FSYNC[0] += time.perf_counter() - t


os.fsync = timed_fsync


def warm(paths):
    os.sync()
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)


def timed(fn):
    t0, c0 = time.perf_counter(), os.times()
    fn()
    t1, c1 = time.perf_counter(), os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user)
    cpu += c1.children_system - c0.children_system
    return t1 - t0, cpu


def cp_sync():
    shutil.rmtree(CP, ignore_errors=True)
    warm(sorted(OUT.glob("*.safetensors")))

    def run():
        subprocess.run(["cp", "-r", str(OUT), str(CP)], check=True)
        os.sync()

    r = timed(run)
    shutil.rmtree(CP, ignore_errors=True)
    os.sync()
    return r


def grow_variant(v: str):
    kcopy.start_writeback = ORIG_START
    writer.WRITERS = 4
    kcopy.KERNEL_CHUNK = 256 * 1024 * 1024
    if v != "force":
        shutil.rmtree(OUT, ignore_errors=True)
    for part in v.split("+"):
        if part.startswith("w"):
            writer.WRITERS = int(part[1:])
        if part.startswith("c"):
            kcopy.KERNEL_CHUNK = int(part[1:]) * 1024 * 1024
        if part == "nosfr":
            kcopy.start_writeback = lambda *a: None
    warm(sorted(M.glob("*.safetensors")))
    FSYNC[0] = 0.0
    r = timed(lambda: grow(M, PLAN, OUT, force=True))
    print(f"   {v}: fsync total {FSYNC[0]:.2f} s (summed over threads)", flush=True)
    return r


def main():
    variants = sys.argv[1].split(",")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    if not OUT.exists():
        grow(M, PLAN, OUT)
    res: dict[str, list] = {v: [] for v in ["cp+sync", *variants]}
    for r in range(rounds):
        for v in variants:
            res["cp+sync"].append(cp_sync() if os.environ.get("NOCP") is None else (1.0, 0.0))
            res[v].append(grow_variant(v))
            wall, cpu = res[v][-1]
            load = os.getloadavg()[0]
            print(
                f"round {r} {v}: {wall:.2f} s (cpu {cpu:.2f}); cp+sync {res['cp+sync'][-1][0]:.2f} s  load {load:.1f}"
            )
    cpmed = statistics.median(w for w, _ in res["cp+sync"])
    for v, xs in res.items():
        walls = [w for w, _ in xs]
        print(
            f"{v:>12}: median {statistics.median(walls):.2f} s  ({' '.join(f'{w:.2f}' for w in walls)})"
            f"  cpu median {statistics.median(c for _, c in xs):.2f}  ratio {statistics.median(walls) / cpmed:.2f}"
        )


if __name__ == "__main__":
    main()

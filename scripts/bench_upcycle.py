"""Benchmark `op: upcycle`: the 1B-class synthetic llama (benchlib) upcycled to 8 experts, top-2
(about 14 GB out in bfloat16). Reports wall time, peak RSS and the ratio to `cp` of the output's
bytes (the floor for writing that much). Outputs are deleted afterwards.

    python scripts/bench_upcycle.py --workdir bench_out
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from bench_grow import GB, MB, cp_job, model_files, run_job, surgeon_cmd  # scripts/ is on sys.path
from benchlib import dir_bytes, ensure_synthetic, synth_spec

PLAN = "name: upcycle-bench\nsteps:\n  - op: upcycle\n    experts: 8\n    top_k: 2\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("bench_out"))
    p.add_argument("--keep-model", action="store_true", help="keep the cached synthetic source model")
    args = p.parse_args()
    run = args.workdir / "upcycle"
    run.mkdir(parents=True, exist_ok=True)
    model, _ = ensure_synthetic(args.workdir, synth_spec(2048, 16, 8192, 128256))
    plan, out = run / "plan.yaml", run / "out"
    plan.write_text(PLAN)
    shutil.rmtree(out, ignore_errors=True)
    grow = run_job(
        "surgeon upcycle",
        [*surgeon_cmd(), "grow", str(model), "--plan", str(plan), "-o", str(out)],
        out,
        model_files(model),
        run,
    )
    cp = cp_job("cp output", out, run / "cp", run)
    print(f"source {dir_bytes(model) / GB:.2f} GB -> output {grow.out_bytes / GB:.2f} GB")
    print(f"surgeon: {grow.wall_s:.1f} s wall ({grow.durable_s:.1f} s durable), peak RSS {grow.peak_rss / MB:.0f} MB")
    print(f"cp of the output: {cp.wall_s:.1f} s wall ({cp.durable_s:.1f} s durable)")
    print(f"ratio surgeon / cp: wall {grow.wall_s / cp.wall_s:.2f}, durable {grow.durable_s / cp.durable_s:.2f}")
    shutil.rmtree(out, ignore_errors=True)
    if not args.keep_model:
        shutil.rmtree(model, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a handbook chapter's cost.md: the `/usr/bin/time -v` tail(s) of the chapter's sweep,
verbatim from its log (one per piece when the sweep was stopped and continued with --resume),
and the sum of every run's own wall clock from the run directories (which a piece's elapsed
time does not cover when the sweep ran in several pieces).

    python scripts/handbook_cost.py runs/handbook/ch2 runs/handbook/ch2.log -o docs/handbook/ch2/cost.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TIME_HEAD = "Command being timed:"
TIME_FIELDS = ("User time", "System time", "Percent of CPU", "Elapsed (wall clock)", "Maximum resident", "Exit status")


def time_blocks(log: str) -> list[list[str]]:
    """Every `/usr/bin/time -v` report in a log, trimmed to the lines that cost is read from."""
    lines = log.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if TIME_HEAD in line:
            block = [line.strip()]
            for nxt in lines[i + 1 : i + 30]:
                if any(f in nxt for f in TIME_FIELDS):
                    block.append(nxt.strip())
                if "Exit status" in nxt:
                    break
            blocks.append(block)
    return blocks


def run_walls(sweep_dir: Path) -> dict[str, float]:
    """Each finished run's (and tuning run's) own wall clock, from its summary.json."""
    out = {}
    for path in sorted(sweep_dir.glob("*/**/summary.json")):
        rel = path.parent.relative_to(sweep_dir)
        if rel.parts[0] not in ("runs", "tuning"):
            continue
        wall = json.loads(path.read_text()).get("runs", {}).get("progressive", {}).get("wall_s")
        if wall is not None:
            out[str(rel)] = float(wall)
    return out


def render(sweep_dir: Path, logs: list[Path]) -> str:
    walls = run_walls(sweep_dir)
    blocks = [b for log in logs for b in time_blocks(log.read_text(errors="replace"))]
    runs = sum(w for k, w in walls.items() if k.startswith("runs"))
    tuning = sum(w for k, w in walls.items() if k.startswith("tuning"))
    out = [
        "# Cost of this chapter's sweep",
        "",
        "Written by `scripts/handbook_cost.py` from the sweep directory and its log (2 workers, 1 torch",
        "thread each, on the project's shared 2-core machine).",
        "",
        f"Runs' own wall clocks (training, load, save and surgery; not the test-set scoring), summed: "
        f"{runs:.1f} s over {sum(k.startswith('runs') for k in walls)} runs, "
        f"{tuning:.1f} s over {sum(k.startswith('tuning') for k in walls)} tuning runs; "
        f"{(runs + tuning) / 2 / 60:.1f} min of 2 workers.",
        "",
        f"`/usr/bin/time -v` of the sweep command ({len(blocks)} piece(s); a piece stopped by the end of a",
        "session has none, and `--resume` continued it):",
        "",
    ]
    for block in blocks:
        out += ["```", *block, "```", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("logs", type=Path, nargs="+")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    args.output.write_text(render(args.sweep_dir, args.logs))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

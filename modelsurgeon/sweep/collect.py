"""One finished `surgeon progressive` run directory -> the numbers a sweep aggregates: its
summary.json (written last, so it marks the run finished), the eval-loss curve on the FLOP axis
from each stage's metrics.jsonl, and the final model's per-problem results."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from modelsurgeon.progressive.evals import PROBLEMS_FILE
from modelsurgeon.progressive.monitor import read_jsonl

DONE = "summary.json"


class RunResult(BaseModel):
    """What the sweep reads from one run (one row of results.csv, plus the curve and problems)."""

    model_config = ConfigDict(frozen=True)

    arm: str
    seed: int
    dir: str
    flops: int
    tokens: int
    wall_s: float
    layers: int
    params: int
    final_train_loss: float | None
    final_eval_loss: float | None
    accuracy: dict[str, float]  # "bench:set" -> exact match
    n: dict[str, int]
    curve: list[tuple[float, float]]  # (cumulative FLOPs, eval loss) at every evaluation
    wall_curve: list[tuple[float, float]] = []  # (cumulative wall seconds, eval loss), same points
    growth_jumps: list[float] = []  # eval loss right after each growth minus right before it
    correct: dict[str, dict[str, int]]  # "bench:set" -> problem id -> 0/1
    lengths: dict[str, dict[str, int]]  # "bench:set" -> problem id -> chain length
    nll: dict[str, dict[str, float]] = {}  # "bench:set" -> problem id -> answer loss (runs before it: none)

    @property
    def answer_loss(self) -> dict[str, float]:
        """ "bench:set" -> mean teacher-forced answer loss over its problems."""
        return {k: sum(v.values()) / len(v) for k, v in self.nll.items() if v}


def is_done(run_dir: Path) -> bool:
    return (run_dir / DONE).is_file()


def _curves(run_dir: Path, stages: list[dict]) -> tuple[list, list]:
    """The eval-loss curve on the FLOP axis and on the wall-clock axis. Wall time counts every
    earlier stage's own time (training with its load and save, and the surgery of each growth)
    plus the time into the current stage, but not the test-set scoring between stages, which is
    measurement, not training, and which a grown run does once per stage."""
    points, wall, offset = [], [], 0.0
    for s in stages:
        if s["kind"] == "train":
            start = s["cum_flops"] - s["flops"]
            for row in read_jsonl(run_dir / s["model"] / "metrics.jsonl"):
                if "eval_loss" in row:
                    points.append((float(start + row["tokens"] * s["flops_per_token"]), float(row["eval_loss"])))
                    wall.append((offset + float(row.get("elapsed_s", 0.0)), float(row["eval_loss"])))
        offset += float(s.get("wall_s", 0.0))
    return points, wall


def _growth_jumps(stages: list[dict]) -> list[float]:
    """How much each growth cost: the grown model's eval loss before it trains (its stage's
    step-0 evaluation) minus the parent's at the end of its training, on the same held-out text."""
    jumps, before, grew = [], None, False
    for s in stages:
        if s["kind"] == "grow":
            grew = True
        elif s["kind"] == "train":
            after = s.get("initial_eval_loss")
            if grew and before is not None and after is not None:
                jumps.append(float(after) - float(before))
            before, grew = s.get("final_eval_loss"), False
    return jumps


def _problems(run_dir: Path, stages: list[dict]) -> tuple[dict, dict, dict]:
    trains = [s for s in stages if s["kind"] == "train"]
    correct: dict[str, dict[str, int]] = {}
    lengths: dict[str, dict[str, int]] = {}
    nll: dict[str, dict[str, float]] = {}
    if trains:
        for row in read_jsonl((run_dir / trains[-1]["model"]).parent / PROBLEMS_FILE):
            key = f"{row['bench']}:{row['set']}"
            correct.setdefault(key, {})[row["id"]] = int(row["correct"])
            lengths.setdefault(key, {})[row["id"]] = int(row["length"]) if row.get("length") is not None else -1
            if row.get("answer_nll") is not None:
                nll.setdefault(key, {})[row["id"]] = float(row["answer_nll"])
    return correct, lengths, nll


def read_run(run_dir: Path, arm: str, seed: int, rel: str) -> RunResult | None:
    """The run's results, or None while it has not finished."""
    if not is_done(run_dir):
        return None
    summary = json.loads((run_dir / DONE).read_text())
    run, stages = summary["runs"]["progressive"], summary["stages"]
    correct, lengths, nll = _problems(run_dir, stages)
    curve, wall_curve = _curves(run_dir, stages)
    return RunResult(
        arm=arm,
        seed=seed,
        dir=rel,
        flops=run["flops"],
        tokens=run["tokens"],
        wall_s=run["wall_s"],
        layers=run["layers"],
        params=run["params"],
        final_train_loss=run["final_train_loss"],
        final_eval_loss=run["final_eval_loss"],
        accuracy={k: sum(v.values()) / len(v) for k, v in correct.items() if v},
        n={k: len(v) for k, v in correct.items()},
        curve=curve,
        wall_curve=wall_curve,
        growth_jumps=_growth_jumps(stages),
        correct=correct,
        lengths=lengths,
        nll=nll,
    )

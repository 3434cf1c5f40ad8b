"""`surgeon demo`: build a tiny Llama locally (no download), grow it with two shipped plans,
and check each result against the source's logits."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from modelsurgeon.grow.engine import grow
from modelsurgeon.errors import VerifyError
from modelsurgeon.plan import load_plan
from modelsurgeon.units import human_count
from modelsurgeon.verify.logits import compare_logits

DEMO_PLANS = ("llama-pro", "double")
EXACT_TOL = 1e-5  # float32 max |delta logits| allowed for an exact plan
PLAN_DIR = Path(__file__).resolve().parent / "plans"


def shipped_plan(name: str) -> Path:
    return PLAN_DIR / f"{name}.yaml"


def _row(name: str, prep, report, seconds: float) -> list[str]:
    return [
        name, f"{prep.layout.num_layers}->{len(prep.layer_map)}", human_count(prep.params_out),
        prep.equivalence, f"{report.max_abs:.1e}", f"{report.mean_kl:.3f}", f"{report.top1:.2f}", f"{seconds:.1f}s",
    ]  # fmt: skip


def _table(name: str, prep) -> Table:
    table = Table(title=f"surgeon demo: growing {name} ({human_count(prep.params_in)} params)")
    # max |delta logit|, KL(source || grown) per token, next-token agreement, time to grow
    for col in ("plan", "layers", "params", "class", "max dlogit", "KL", "top-1", "grow"):
        table.add_column(col, justify="right")
    return table


def run_demo(workdir: Path | None, console: Console, model: Path | None = None) -> list[dict]:
    """Grow `model` (default: a tiny Llama built here) with the demo plans; raise VerifyError
    when an exact plan does not reproduce the source's logits."""
    from modelsurgeon.tiny import build_tiny

    workdir = Path(workdir or tempfile.mkdtemp(prefix="surgeon-demo-"))
    if model is None:
        model = build_tiny("llama", workdir / "tiny-llama", n_layers=8, hidden=64)
        console.print(f"built a tiny 8-layer Llama (random weights, seed 0) in {model}")
    table = None
    results = []
    for name in DEMO_PLANS:
        out = workdir / f"{model.name}-{name}"
        start = time.perf_counter()
        prep = grow(model, load_plan(shipped_plan(name)), out, force=True)
        seconds = time.perf_counter() - start
        table = table or _table(model.name, prep)
        report = compare_logits(model, out)
        if prep.equivalence == "exact" and report.max_abs > EXACT_TOL:
            raise VerifyError(f"{out}: plan {name} is exact but logits differ by {report.max_abs:.2e}", hint="please report this")
        table.add_row(*_row(name, prep, report, seconds))
        results.append({"plan": name, "out": str(out), "equivalence": prep.equivalence, **report.__dict__})
    console.print(table)
    console.print("exact plans reproduce the source's logits; approx/none plans need training to recover (see README)")
    return results

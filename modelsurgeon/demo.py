"""`surgeon demo`: build a tiny Llama locally (no download), grow it with two shipped plans,
and run `surgeon verify`'s checks on each result."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from modelsurgeon.grow.engine import Prepared, grow
from modelsurgeon.plan import load_plan
from modelsurgeon.tiny import build_tiny
from modelsurgeon.units import human_count
from modelsurgeon.verify.api import verify_and_show
from modelsurgeon.verify.report import VerifyReport

DEMO_PLANS = ("llama-pro", "double")
PLAN_DIR = Path(__file__).resolve().parent / "plans"


def shipped_plan(name: str) -> Path:
    return PLAN_DIR / f"{name}.yaml"


def _row(name: str, prep: Prepared, report: VerifyReport, seconds: float) -> list[str]:
    lg = report.metrics["logits"]
    return [
        name,
        f"{prep.layout.num_layers}->{len(prep.layer_map)}",
        human_count(prep.params_out),
        prep.equivalence,
        f"{lg['max_abs']:.1e}",
        f"{lg['mean_kl']:.3f}",
        f"{lg['top1']:.2f}",
        f"{seconds:.1f}s",
    ]


def _table(name: str, prep: Prepared) -> Table:
    table = Table(title=f"surgeon demo: growing {name} ({human_count(prep.params_in)} params)")
    # from verify's report: max |delta logit|, KL(source || grown) per token, next-token agreement
    table.add_column("plan", no_wrap=True)
    for col in ("layers", "params", "class", "max dlogit", "KL", "top-1", "grow"):
        table.add_column(col, justify="right")
    return table


def run_demo(workdir: Path | None, console: Console, model: Path | None = None) -> list[dict]:
    """Grow `model` (default: a tiny Llama built here) with the demo plans and verify each
    output; raise verify's VerifyError when one fails what its class promises."""

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
        report = verify_and_show(model, out, console)
        table.add_row(*_row(name, prep, report, seconds))
        results.append({"plan": name, "out": str(out), "report": report})
    console.print(table)
    console.print("exact plans reproduce the source's logits; approx/none plans need training to recover (see README)")
    return results

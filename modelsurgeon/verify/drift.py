"""Measure how far a plan moves a model's outputs without keeping the grown checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelsurgeon.grow.engine import grow
from modelsurgeon.plan.load import LoadedPlan
from modelsurgeon.verify.logits import compare_logits


def measure_drift(model: str | Path, plan: LoadedPlan, with_prep: bool = False):
    """Grow into a temporary directory, compare with the source, clean up. Returns the
    LogitsReport (and the Prepared grow when with_prep)."""
    with tempfile.TemporaryDirectory(prefix="surgeon-drift-") as tmp:
        out = Path(tmp) / "grown"
        prep = grow(model, plan, out)
        report = compare_logits(Path(model), out)
    return (report, prep) if with_prep else report

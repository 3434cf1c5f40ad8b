"""Measure how far a plan moves a model's outputs without keeping the grown checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelsurgeon.engine import grow
from modelsurgeon.plan.load import LoadedPlan
from modelsurgeon.verify.logits import LogitsReport, compare_logits


def measure_drift(model: str | Path, plan: LoadedPlan) -> LogitsReport:
    """Grow into a temporary directory next to nothing the user owns, compare, clean up."""
    with tempfile.TemporaryDirectory(prefix="surgeon-drift-") as tmp:
        out = Path(tmp) / "grown"
        grow(model, plan, out)
        return compare_logits(Path(model), out)

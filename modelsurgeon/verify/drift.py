"""`grow --dry-run --drift`: how far a plan moves a model's outputs, measured by `verify` on a
grown copy that is deleted afterwards, so the numbers are the ones `surgeon verify` reports."""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelsurgeon.grow.engine import Prepared, grow
from modelsurgeon.plan.load import LoadedPlan
from modelsurgeon.verify.api import verify_checkpoint
from modelsurgeon.verify.report import VerifyReport


def measure_drift(model: str | Path, plan: LoadedPlan) -> tuple[Prepared, VerifyReport]:
    """Grow into a temporary directory, verify it against `model` with verify's defaults, clean up."""
    with tempfile.TemporaryDirectory(prefix="surgeon-drift-") as tmp:
        out = Path(tmp) / "grown"
        prep = grow(model, plan, out)
        report = verify_checkpoint(model, out)
    return prep, report

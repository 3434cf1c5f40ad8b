"""Learning-rate grids: each tuned path of an arm is multiplied by the grid's multipliers (values
`factor` apart, centred on the value the recipe trains with), every grid point is trained at the
sweep's tuning seed with the same budget, and the arm's reported runs use the point with the
lowest validation loss: the final eval loss of train-stage's held-out share of the training
draw, never the test problems the report scores."""

from __future__ import annotations

import copy
import math

from modelsurgeon.sweep.patch import PatchError, targets
from modelsurgeon.train.methods import METHODS


def grid_label(mults) -> str:
    """Directory name of a grid point: x<multiplier> per tuned path, e.g. x0.3333 or x1,x3."""
    return ",".join(f"x{m:.4g}" for m in mults)


def _centre(holder: dict, key: str, data: dict) -> float | None:
    """The value a train stage trains with: its own, else the recipe's defaults, else (lr) the
    train-stage default for its method."""

    defaults = data.get("defaults") or {}
    value = holder.get(key, defaults.get(key))
    method = METHODS.get(holder.get("method", defaults.get("method", "lora")))
    if value is None and key == "lr" and method is not None:
        value = method.default_lr
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def tuned_recipe(arm, mults: list[float], problems: list[str]) -> dict | None:
    """ARM's recipe with each tuned path set to centre x multiplier (None, with problems, when a
    path names nothing or has no positive value to centre on)."""
    data = copy.deepcopy(arm.template)
    ok = True
    for path, m in zip(arm.tuned, mults):
        try:
            found = targets(data, path, implicit="grown")
        except PatchError as exc:
            problems.append(f"arm {arm.name}: tune: {exc}")
            ok = False
            continue
        for holder, key in found:
            centre = _centre(holder, key, data) if isinstance(holder, dict) else None
            if centre is None or centre <= 0:
                problems.append(
                    f"arm {arm.name}: tune: {path} has no positive value to centre the grid on; set it in the recipe"
                )
                ok = False
                continue
            holder[key] = float(f"{centre * m:.6g}")
    return data if ok else None


def choose(points: list[dict]) -> dict | None:
    """The grid point with the lowest validation loss (ties: the one nearest the centre); None
    while any point has no loss yet; a diverged point (NaN or inf) loses. Each point:
    {"multipliers": [...], "val_loss": float | None}."""
    if not points or any(p.get("val_loss") is None for p in points):
        return None

    def key(p: dict) -> tuple[float, float]:
        loss = p["val_loss"] if math.isfinite(p["val_loss"]) else math.inf
        return loss, sum(abs(math.log(m)) for m in p["multipliers"])

    return min(points, key=key)

"""Layer maps: one entry per output layer (source layer, branch scale, new?), their
composition across steps, and the equivalence class a map implies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Equivalence = Literal["exact", "approx", "none"]
CLASS_ORDER: dict[Equivalence, int] = {"exact": 2, "approx": 1, "none": 0}


@dataclass(frozen=True)
class LayerEntry:
    """One output layer: a copy of `source` whose residual branches are scaled by `scale`
    (0 makes the layer an identity). `new` marks a layer the plan added (a copy or an identity
    init) rather than an original; training stages that train only new layers read it.
    `model` 0 is MODEL; k >= 1 is the k-th other checkpoint of a multi-model splice, whose layer
    `source` this is (in a step's local map, such an entry bypasses the step's input)."""

    source: int
    scale: float = 1.0
    new: bool = False
    model: int = 0


LayerMap = tuple[LayerEntry, ...]
Local = list[tuple[int, float]]  # (index into the step's input layers, scale factor)


def identity_map(n_layers: int) -> LayerMap:
    return tuple(LayerEntry(i) for i in range(n_layers))


def compose(prev: LayerMap, local: Local) -> LayerMap:
    """Apply a step's local map to the previous map. Branch scales multiply: a layer computing
    x + s1*F(x), scaled again by s2, computes x + s1*s2*F(x). An entry naming another model
    is that model's layer, whatever the previous steps did."""
    return tuple(e if e.model else _through(prev[e.source], e) for e in local)


def _through(p: LayerEntry, e: LayerEntry) -> LayerEntry:
    return LayerEntry(p.source, p.scale * e.scale, p.new or e.new, p.model)


def classify(local: Local, n_in: int) -> Equivalence:
    """exact: the non-identity layers are the input layers, in order, unscaled (added layers
    are identities). approx: every input layer is kept, in order, with branch scales summing to 1
    per layer, which matches the input to first order in each branch (x + F/k + F/k ~ x + F).
    none: anything else (reordered, dropped, or duplicated without compensation, or layers
    taken from another model)."""
    if any(e.model for e in local):
        return "none"
    live = [(e.source, e.scale) for e in local if e.scale != 0.0]
    if live == [(i, 1.0) for i in range(n_in)]:
        return "exact"
    sources = [i for i, _ in live]
    totals = [0.0] * n_in
    for i, s in live:
        totals[i] += s
    in_order = sources == sorted(sources) and set(sources) == set(range(n_in))
    if in_order and all(math.isclose(t, 1.0, rel_tol=1e-9) for t in totals):
        return "approx"
    return "none"


def weakest(classes: list[Equivalence]) -> Equivalence:
    return min(classes, key=CLASS_ORDER.__getitem__, default="exact")

"""Resolve a layer selection (`layers:`) against the number of layers a step sees."""

from __future__ import annotations

from modelsurgeon.plan.schema import Every, Middle, Range, Selection


def resolve_selection(sel: Selection, n_layers: int) -> list[int]:
    """Sorted layer indices; raises ValueError naming the valid range when the selection is bad."""
    valid = f"valid indices are 0..{n_layers - 1} (or -{n_layers}..-1)"
    if sel == "all":
        out = list(range(n_layers))
    elif isinstance(sel, list):
        bad = [i for i in sel if not -n_layers <= i < n_layers]
        if bad:
            raise ValueError(f"index {bad[0]} is out of range for {n_layers} layers; {valid}")
        out = [i % n_layers for i in sel]
        dups = sorted({i for i in out if out.count(i) > 1})
        if dups:
            raise ValueError(f"layer {dups[0]} is selected more than once")
        out.sort()
    elif isinstance(sel, Range):
        start = sel.start + n_layers if sel.start < 0 else sel.start
        stop = sel.stop + n_layers if sel.stop < 0 else sel.stop
        if not (0 <= start <= n_layers and 0 <= stop <= n_layers):
            raise ValueError(f"range {{from: {sel.start}, to: {sel.stop}}} is out of range for {n_layers} layers")
        out = list(range(start, stop))
    elif isinstance(sel, Every):
        out = list(range(sel.every - 1, n_layers, sel.every))
    elif isinstance(sel, Middle):
        if sel.middle > n_layers:
            raise ValueError(f"middle: {sel.middle} is more than the {n_layers} layers available")
        first = (n_layers - sel.middle) // 2
        out = list(range(first, first + sel.middle))
    else:  # pragma: no cover - the schema admits no other form
        raise ValueError(f"unknown selection {sel!r}")
    if not out:
        raise ValueError(f"the selection {sel!r} is empty for {n_layers} layers")
    return out

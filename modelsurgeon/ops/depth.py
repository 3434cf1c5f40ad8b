"""Depth operators. Each compiles one plan step into a local layer map over the layers the step
sees; they raise ValueError('field: message') for a step that does not fit the model."""

from __future__ import annotations

import math

from modelsurgeon.ops.layermap import LayerEntry as E
from modelsurgeon.ops.layermap import Local
from modelsurgeon.plan.schema import Drop, Interpolate, LayerMapStep, MapEntry, ModelRange, Range, Splice, Stack
from modelsurgeon.plan.selection import resolve_selection


def _select(sel, n: int) -> list[int]:
    try:
        return resolve_selection(sel, n)
    except ValueError as exc:
        raise ValueError(f"layers: {exc}") from None


def _copy_scales(step: Interpolate | Stack) -> tuple[float, float]:
    """(scale of the original, scale of each added copy) for a duplication with k = factor."""
    k, bs = step.factor, step.branch_scale
    if step.new == "zero":
        if bs != 1.0:
            raise ValueError(
                "branch_scale: has no use with new: zero (the added copies are identities, so a "
                "scale would only shrink the original); drop branch_scale or use new: copy"
            )
        return 1.0, 0.0
    s = 1.0 / k if bs == "split" else 1.0 / math.sqrt(k) if bs == "sqrt" else float(bs)
    return s, s


def interpolate(step: Interpolate, n: int) -> Local:
    chosen = set(_select(step.layers, n))
    orig, copy = _copy_scales(step)
    out: Local = []
    for i in range(n):
        out.append(E(i, orig if i in chosen else 1.0))
        if i in chosen:
            out += [E(i, copy, new=True)] * (step.factor - 1)
    return out


def stack(step: Stack, n: int) -> Local:
    block = _select(step.layers, n)
    if block != list(range(block[0], block[-1] + 1)):
        raise ValueError(
            f"layers: stack needs a contiguous block, got {block}; use {{from: a, to: b}} or {{middle: b}}"
        )
    orig, copy = _copy_scales(step)
    before = [E(i) for i in range(block[0])]
    after = [E(i) for i in range(block[-1] + 1, n)]
    repeats = [E(i, orig) for i in block] + [E(i, copy, new=True) for _ in range(step.factor - 1) for i in block]
    return before + repeats + after


def trim_layers(trim: int | str, n: int) -> int:
    t = round(n * float(trim[:-1]) / 100) if isinstance(trim, str) else trim
    if not 1 <= t < n:
        raise ValueError(f"trim: {trim} gives {t} layers to trim from {n}; it must leave 1..{n - 1}")
    return t


def splice(step: Splice, n: int) -> Local:
    t = trim_layers(step.trim, n)
    return [E(i) for i in range(n - t)] + [E(i, new=i < n - t) for i in range(t, n)]


def _index(i: int, n: int, where: str) -> int:
    if not -n <= i < n:
        raise ValueError(f"{where}: layer {i} is out of range; valid indices are 0..{n - 1} (or -{n}..-1)")
    return i % n


def _model(name: str | None, models: dict[str, tuple[int, int]], where: str) -> tuple[int, int | None]:
    """(model index, its layer count) for an entry's `model`; (0, None) for the step's input."""
    if name is None:
        return 0, None
    if name not in models:
        raise ValueError(f"{where}.model: {name!r} was not opened (this is a bug; please report it)")
    return models[name]


def layers(step: LayerMapStep, n: int, models: dict[str, tuple[int, int]] | None = None) -> Local:
    """`models` maps each other checkpoint the map names to (model index, layer count); one
    that is MODEL itself has index 0, so its entries index the step's input like plain ones."""
    models = models or {}
    pairs: list[tuple[int, int, float, bool]] = []  # (model, source, scale, zero-init)
    for pos, entry in enumerate(step.map):
        where = f"map[{pos}]"
        if isinstance(entry, int):
            pairs.append((0, _index(entry, n, where), 1.0, False))
        elif isinstance(entry, Range):
            pairs += [(0, i, 1.0, False) for i in _select(entry, n)]
        elif isinstance(entry, ModelRange):
            k, m = _model(entry.model, models, where)
            try:
                chosen = resolve_selection(Range(**{"from": entry.start, "to": entry.stop}), n if k == 0 else m)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc} (model {entry.model!r})") from None
            pairs += [(k, i, 1.0, False) for i in chosen]
        elif isinstance(entry, MapEntry):
            if entry.new == "zero" and entry.scale != 1.0:
                raise ValueError(f"{where}: new: zero already sets the branch scale to 0; drop scale")
            zero = entry.new == "zero"
            k, m = _model(entry.model, models, where)
            at = where if entry.model is None else f"{where} (model {entry.model!r})"
            pairs.append((k, _index(entry.layer, n if k == 0 else m, at), 0.0 if zero else entry.scale, zero))
    # An identity init is new; otherwise a layer is new when its source already appeared.
    seen: set[tuple[int, int]] = set()
    out: Local = []
    for k, i, scale, zero in pairs:
        out.append(E(i, scale, new=zero or (k, i) in seen, model=k))
        if not zero:
            seen.add((k, i))
    return out


def drop(step: Drop, n: int) -> Local:
    gone = set(_select(step.layers, n))
    if len(gone) == n:
        raise ValueError(f"layers: dropping all {n} layers leaves an empty model")
    return [E(i) for i in range(n) if i not in gone]


DEPTH_OPS = {"interpolate": interpolate, "stack": stack, "splice": splice, "layers": layers, "drop": drop}

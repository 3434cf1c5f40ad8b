"""Scalar config keys that index layers, kept in agreement with the per-layer list they encode.

Qwen2/Qwen3's `max_window_layers` (with `use_sliding_window`) and Gemma 3's
`sliding_window_pattern` say which layers use sliding attention to readers that ignore
`layer_types` (vLLM, transformers before layer_types, llama.cpp). After a layer map the list is
remapped, so the scalar is re-derived from it: exactly when the remapped pattern is expressible,
otherwise the value whose pattern agrees with the list at the most layers, with a warning. The
list stays authoritative. The rules are data: `layer_keys` in arch/specs/*.yaml."""

from __future__ import annotations

from modelsurgeon.arch.spec import ArchSpec, LayerKey


def implied(rule: LayerKey, value: int, n: int) -> list[bool]:
    """Which of n layers the scalar marks (True: e.g. sliding)."""
    if rule.pattern == "full_prefix":
        return [i >= value for i in range(n)]
    return [(i + 1) % value != 0 for i in range(n)]


def _candidates(rule: LayerKey, n: int) -> range:
    # period > n marks every layer, as does n + 1; full_prefix 0..n covers every prefix length
    return range(n + 1) if rule.pattern == "full_prefix" else range(1, n + 2)


def best_value(rule: LayerKey, marks: list[bool], prefer: int | None) -> tuple[int, int]:
    """(value, layers it gets right): the most agreement; ties keep `prefer`, else the smallest."""
    n = len(marks)
    scored = [(sum(a == b for a, b in zip(implied(rule, v, n), marks)), v) for v in _candidates(rule, n)]
    top = max(score for score, _ in scored)
    best = [v for score, v in scored if score == top]
    return (prefer if prefer in best else best[0]), top


def _enabled(rule: LayerKey, config: dict) -> bool:
    return rule.enabled_by is None or bool(config.get(rule.enabled_by))


def _marks(rule: LayerKey, config: dict) -> list[bool] | None:
    values = config.get(rule.list)
    return [v == rule.marked for v in values] if isinstance(values, list) else None


def _describe(marks: list[bool], rule: LayerKey) -> str:
    return f"{rule.marked} at layers {[i for i, m in enumerate(marks) if m]}"


def sync_layer_keys(old: dict, new: dict, spec: ArchSpec, sources: list[int], n_source: int) -> list[str]:
    """Set NEW's layer-indexing scalars from its remapped lists (NEW is changed in place);
    `sources[j]` is grown layer j's source layer. Returns warnings for patterns no value expresses.
    With the pattern switched off (use_sliding_window: false) the list shows no marks, so the
    scalar's own pattern is remapped instead: switching it on later then means the same."""
    warnings = []
    for rule in spec.layer_keys:
        value = old.get(rule.key, rule.default) if rule.key else rule.default
        listed = _marks(rule, new)
        if listed is not None and _enabled(rule, old):
            marks = listed
        elif value is not None:  # no list, or the pattern is switched off: remap the scalar's own pattern
            before = implied(rule, int(value), n_source)
            marks = [before[s] for s in sources]
        else:
            continue
        n = len(marks)
        if rule.key is None:
            if implied(rule, rule.default, n) != marks:
                assumed = _describe(implied(rule, rule.default, n), rule)
                warnings.append(
                    f"'{rule.list}' after the layer map has {_describe(marks, rule)}; readers that "
                    f"ignore it (older transformers, llama.cpp) assume {assumed}"
                )
            continue
        best, right = best_value(rule, marks, int(value) if value is not None else None)
        if rule.key in old or best != rule.default or right < n:
            new[rule.key] = best
        if right < n:
            wrong = [i for i, (a, b) in enumerate(zip(implied(rule, best, n), marks)) if a != b]
            warnings.append(
                f"'{rule.list}' after the layer map ({_describe(marks, rule)}) cannot be expressed by "
                f"'{rule.key}'; set it to {best}, which gives readers that ignore '{rule.list}' (vLLM, "
                f"older transformers) the right attention at {right} of {n} layers (wrong at {wrong})"
            )
    return warnings


def layer_key_findings(config: dict, spec: ArchSpec, where: str = "config.json") -> list[tuple[str, bool]]:
    """(problem, fixable) for every scalar that disagrees with its list in CONFIG (named `where` in
    the text): fixable when another value would agree at more layers (a config that was not
    re-derived: a defect), not fixable when the scalar already is the best any value can do
    (reported, not a failure)."""
    found = []
    for rule in spec.layer_keys:
        marks = _marks(rule, config)
        if marks is None or not _enabled(rule, config) or rule.key is None:
            continue
        value = config.get(rule.key, rule.default)
        if value is None:
            continue
        have = implied(rule, int(value), len(marks))
        if have == marks:
            continue
        best, right = best_value(rule, marks, int(value))
        got = sum(a == b for a, b in zip(have, marks))
        wrong = [i for i, (a, b) in enumerate(zip(have, marks)) if a != b]
        text = (
            f"{where} '{rule.key}' is {value}, so readers that ignore '{rule.list}' (vLLM, older transformers) "
            f"use the wrong attention at layers {wrong} ('{rule.list}' has {_describe(marks, rule)})"
        )
        if right > got:
            found.append((text + f"; set '{rule.key}' to {best}", True))
        else:
            best_text = f"; no value of '{rule.key}' expresses this pattern ({right} of {len(marks)} layers at best)"
            found.append((text + best_text, False))
    return found

"""Translate a mergekit passthrough config (slices of `layer_range`, one source model per slice,
optional `scale` on the output projections) into an equivalent `layers` step. With several
models, the first slice's model is MODEL and the others are named per layer; mergekit takes the
embeddings from the first slice's model and the final norm and head from the last slice's, so a
last slice from another model becomes `head_from`."""

from __future__ import annotations

from modelsurgeon.errors import PlanError

# Scaling both residual-branch outputs by the same value is what mergekit users mean by
# "scale o_proj and down_proj": exactly a branch scale.
BRANCH_FILTERS = {"o_proj", "down_proj"}
IGNORED_KEYS = {"tokenizer_source", "tokenizer", "chat_template", "base_model"}
DTYPE_KEYS = ("out_dtype", "dtype")  # mergekit writes out_dtype when set, else dtype
DTYPES = ("float32", "bfloat16", "float16")


def _value_at(value: object, k: int, n: int) -> float:
    """mergekit's gradients: a list is interpolated linearly over the slice's layers."""
    if not isinstance(value, list):
        return float(value)
    if len(value) == 1 or n == 1:
        return float(value[0])
    t = k / (n - 1) * (len(value) - 1)
    lo = min(int(t), len(value) - 2)
    return float(value[lo] + (value[lo + 1] - value[lo]) * (t - lo))


def _slice_scale(params: dict | None, where: str, problems: list[str]) -> list[dict]:
    """The `scale` parameter as a list of {filter, value} rules (empty: no scaling)."""
    if not params:
        return []
    unknown = set(params) - {"scale"}
    if unknown:
        problems.append(f"{where}.parameters: only 'scale' translates to a growth plan, got {sorted(unknown)}")
    rules = params.get("scale", [])
    rules = rules if isinstance(rules, list) and rules and isinstance(rules[0], dict) else [{"value": rules}]
    by_filter = {r.get("filter"): r.get("value", 1.0) for r in rules}
    default = by_filter.pop(None, 1.0)
    if default != 1.0:
        problems.append(f"{where}: a scale without a filter scales every tensor, which is not a branch scale")
    if by_filter and set(by_filter) != BRANCH_FILTERS:
        problems.append(f"{where}: scale filters {sorted(by_filter)} must name both o_proj and down_proj")
    elif by_filter and by_filter["o_proj"] != by_filter["down_proj"]:
        problems.append(f"{where}: o_proj and down_proj scales differ; a branch scale needs them equal")
    return [{"value": by_filter.get("o_proj", 1.0)}] if by_filter else []


def _slice_entries(i: int, sl: object, problems: list[str]) -> tuple[str | None, list]:
    where = f"slices[{i}]"
    sources = sl.get("sources") if isinstance(sl, dict) else None
    if not isinstance(sources, list) or len(sources) != 1 or not isinstance(sources[0], dict):
        problems.append(f"{where}: passthrough translation takes exactly one source per slice")
        return None, []
    src = sources[0]
    rng = src.get("layer_range")
    if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) for x in rng) and rng[0] < rng[1]):
        problems.append(f"{where}.sources[0].layer_range: expected [start, end) with start < end, got {rng!r}")
        return src.get("model"), []
    model = src.get("model")
    if not isinstance(model, str) or not model:
        problems.append(f"{where}.sources[0].model: expected a model directory, got {model!r}")
    rules = _slice_scale(src.get("parameters") or sl.get("parameters"), where, problems)
    n = rng[1] - rng[0]
    entries = []
    for k, layer in enumerate(range(*rng)):
        s = _value_at(rules[0]["value"], k, n) if rules else 1.0
        entries.append(layer if s == 1.0 else {"layer": layer, "scale": s})
    return model, entries


def _foreign(model: str, entries: list) -> list:
    """Entries of another model's slice: unscaled runs as one range, scaled layers one by one."""
    out: list = []
    for e in entries:
        if isinstance(e, dict):
            out.append({"model": model, **e})
        elif out and "to" in out[-1] and out[-1]["to"] == e:
            out[-1]["to"] = e + 1
        else:
            out.append({"model": model, "from": e, "to": e + 1})
    return out


def _layer_map(parts: list[tuple[str | None, list]]) -> tuple[list, list[str]]:
    """The map over all slices (the first slice's model is MODEL) and the models in order."""
    first = parts[0][0] if parts else None
    entries: list = []
    for model, part in parts:
        entries += part if model == first else _foreign(model, part)
    return entries, list(dict.fromkeys(m for m, _ in parts))


def output_dtype(data: dict, origin: str) -> str | None:
    """The dtype mergekit would write the merge in (None: it keeps the source's)."""
    key = next((k for k in DTYPE_KEYS if data.get(k)), None)
    if key is None:
        return None
    name = str(data[key]).removeprefix("torch.")
    if name not in DTYPES:
        raise PlanError(
            origin,
            [f"{key}: expected one of {', '.join(DTYPES)}, got {data[key]!r}"],
            hint="mergekit writes float32, bfloat16 or float16 checkpoints",
        )
    return name


def translate_mergekit(data: dict, origin: str) -> tuple[dict, str]:
    """Return (native plan data, a human-readable account of the translation)."""
    problems: list[str] = []
    if data.get("merge_method") != "passthrough":
        problems.append(
            f"merge_method: only 'passthrough' translates to a growth plan, got {data.get('merge_method')!r}"
        )
    slices = data.get("slices")
    if not isinstance(slices, list) or not slices:
        problems.append("slices: expected a non-empty list of slices")
        slices = []
    extra = set(data) - {"slices", "merge_method", *DTYPE_KEYS} - IGNORED_KEYS
    if extra:
        problems.append(f"keys {sorted(extra)} have no growth-plan equivalent")
    parts = [_slice_entries(i, sl, problems) for i, sl in enumerate(slices)]
    if problems:
        raise PlanError(
            origin,
            problems,
            hint="only passthrough configs with one source per slice translate; write a native plan otherwise",
        )
    entries, models = _layer_map(parts)
    plan = {
        "name": "mergekit-passthrough",
        "description": f"translated from {origin}",
        "steps": [{"op": "layers", "map": entries}],
    }
    note = (
        f"translated mergekit passthrough config {origin} (source model {models[0]!r}; the MODEL "
        f"argument is used) -> layers step with {sum(len(p) for _, p in parts)} output layers: {entries}"
    )
    if len(models) > 1:
        note += f"; layers from the other models {models[1:]} are read from those directories"
    if parts[-1][0] != models[0]:  # mergekit's final norm and head come from the last slice
        plan["head_from"] = parts[-1][0]
        note += f"; final norm and output head from {parts[-1][0]!r}, as mergekit takes them from the last slice"
    dtype = output_dtype(data, origin)
    if dtype:
        note += f"; written as {dtype} (the config's {next(k for k in DTYPE_KEYS if data.get(k))})"
    ignored = sorted(set(data) & IGNORED_KEYS)
    if ignored:
        note += f" (ignored, the source tokenizer is kept: {ignored})"
    return plan, note

"""YAML -> Plan. Every schema problem is reported at once with its YAML path and line, what was
expected, and a hint. A mergekit passthrough config is translated into an equivalent plan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from modelsurgeon.errors import PlanError
from modelsurgeon.plan.schema import OPS, Plan
from modelsurgeon.plan.shipped import doc_path, missing_hint, resolve_shipped

HINTS = {
    "op": f"valid ops: {', '.join(OPS)}",
    "factor": "an int >= 2: how many layers each selected layer (or block) becomes; op: experts: copies of each expert",
    "layers": "a selection: all | [0, 5, -1] | {from: 8, to: 24} | {every: 4} | {middle: 4}",
    "branch_scale": "1 (default), split (1/k), sqrt (1/sqrt(k)), or a number >= 0",
    "new": "copy (added layers are copies) or zero (identity copies: output projections zeroed)",
    "name": "lower-case letters, digits, '-' and '_', starting with a letter or digit",
    "trim": "an int number of layers, or a percent string such as '25%'",
    "map": "a list of source indices, {from, to} ranges, {layer: i, scale: s, new: zero}, or another model's "
    "layers: {model: DIR, from: a, to: b} / {model: DIR, layer: i}",
    "model": "the directory of another checkpoint of the same family and widths",
    "embeddings_from": "the directory of the checkpoint whose input embeddings the output takes (default: MODEL)",
    "head_from": "the directory of the checkpoint whose final norm and output head the output takes (default: MODEL)",
    "hidden": "'<n>x' (integer multiples are exact) or a target size (approximate)",
    "ffn": "'<n>x' or any target size >= the current one (exact)",
    "heads": "an integer multiple like '2x' (query and key/value heads both; head_dim kept)",
    "noise": "{snr_db: 30, seed: 0} or {std: 0.001, seed: 0} (upcycle: {std: 0.01, seed: 0})",
    "experts": "the number of experts each upcycled FFN becomes, an int >= 2",
    "top_k": "experts each token is routed to, 1..experts (renormalised, so identical experts are exact)",
    "router": "{init: zero} | {init: normal, std: 0.02, seed: 0} | {init: orthogonal, seed: 0}",
    "drop": "{fraction: 0.5, seed: 0}: re-initialise this share of each expert's units (Drop-Upcycling)",
    "fraction": "a share of units in (0, 1]",
    "keep_top_k": "false (default: top-k multiplied, exact) or true (top-k kept: not exact)",
}


@dataclass(frozen=True)
class LoadedPlan:
    """A validated plan plus its verbatim source text (kept for provenance)."""

    plan: Plan
    source_text: str
    origin: str
    translation: str | None = None  # set when the input was a mergekit config
    dtype: str | None = None  # the output dtype a mergekit config names (float32, bfloat16, float16)


def _node_at(root: yaml.Node | None, loc: tuple) -> yaml.Node | None:
    """The deepest YAML node along `loc` (stops where the path leaves the document)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == part]
            if not match:
                break
            node = match[0]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return node


def _line_of(root: yaml.Node | None, loc: tuple) -> int | None:
    node = _node_at(root, loc)
    return node.start_mark.line + 1 if node is not None else None


def format_loc(loc: tuple) -> str:
    """A pydantic error location as a path: steps[3].layers."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def where(root: yaml.Node | None, loc: tuple) -> str:
    """A YAML path as the user wrote it, with its line when the document has one."""
    line = _line_of(root, loc)
    return format_loc(loc) + (f" (line {line})" if line else "")


def problem(root: yaml.Node | None, loc: tuple, msg: str, hints: dict[str, str]) -> str:
    """One reported problem: where, what, and the hint of the innermost field named in `loc`."""
    field = next((p for p in reversed(loc) if isinstance(p, str)), "")
    hint = hints.get(field, "")
    return f"{where(root, loc)}: {msg}" + (f" [hint: {hint}]" if hint else "")


def read_yaml(text: str, origin: str, error: type[PlanError], shape: str, example: str) -> tuple[dict, yaml.Node]:
    """The document as data and as nodes (for line numbers); `error` when it is not YAML or not
    a mapping (`shape` says what mapping was expected, `example` where to look)."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise error(origin, [f"not valid YAML: {exc}"], hint="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise error(origin, [f"expected a mapping with {shape}"], hint=f"see {example}")
    return data, root


def _field_names() -> set[str]:
    # lazy: import cycle (modelsurgeon.plan.schema imports modelsurgeon.plan.load)
    from modelsurgeon.plan import schema

    names: set[str] = set()
    for model in (
        schema.Plan,
        schema.Interpolate,
        schema.Stack,
        schema.Splice,
        schema.LayerMapStep,
        schema.Drop,
        schema.Widen,
        schema.NoiseSpec,
        schema.Upcycle,
        schema.Experts,
        schema.RouterInit,
        schema.DropSpec,
        schema.ExpertNoise,
        schema.MapEntry,
        schema.ModelRange,
        schema.Range,
        schema.Every,
        schema.Middle,
    ):
        for fname, info in model.model_fields.items():
            names.add(info.alias or fname)
    return names


def _clean_loc(raw: tuple, fields: set[str]) -> tuple[tuple, bool]:
    """The user's YAML path from pydantic's loc, and whether the error is inside a union
    alternative (loc parts like 'list[int]' or 'Range' that are neither fields nor op tags)."""
    if len(raw) > 2 and raw[0] == "steps" and raw[2] in OPS:
        raw = raw[:2] + raw[3:]  # the step's discriminator tag, not a YAML key
    loc: list = []
    for part in raw:
        if isinstance(part, int) or part in fields:
            loc.append(part)
        else:
            return tuple(loc), True
    return tuple(loc), False


def _problems(exc: ValidationError, root: yaml.Node | None) -> list[str]:
    fields = _field_names()
    problems = []
    for err in exc.errors():
        extra = err["type"] == "extra_forbidden"
        loc, in_union = _clean_loc(err["loc"][:-1] if extra else err["loc"], fields)
        if extra and not in_union:
            loc = loc + (err["loc"][-1],)
        msg = err["msg"].replace("Value error, ", "")
        if in_union:  # one line per field, not one per rejected alternative
            msg = f"{_shown(_value_at(root, loc))} is not one of the accepted forms"
        problems.append(problem(root, loc, msg, HINTS))
    return list(dict.fromkeys(problems))


def _value_at(root: yaml.Node | None, loc: tuple) -> object:
    node = _node_at(root, loc)
    return yaml.safe_load(yaml.serialize(node)) if node is not None else None


def _shown(value: object) -> str:
    return repr(value) if value is not None else "the value"


def parse_plan(text: str, origin: str = "<plan>") -> LoadedPlan:
    """Validate plan YAML text (native or mergekit passthrough)."""
    data, root = read_yaml(
        text, origin, PlanError, "name and steps", f"{doc_path('plan-format.md')} and `surgeon plan list`"
    )
    translation = dtype = None
    if "merge_method" in data or "slices" in data:
        # lazy: import cycle (modelsurgeon.plan.mergekit imports modelsurgeon.plan.load)
        from modelsurgeon.plan.mergekit import output_dtype, translate_mergekit

        dtype = output_dtype(data, origin)
        data, translation = translate_mergekit(data, origin)
        root = None
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(
            origin, _problems(exc, root), hint=f"see {doc_path('plan-format.md')}; examples: `surgeon plan list`"
        ) from None
    return LoadedPlan(plan, text, origin, translation, dtype)


def read_document(path: str | Path, kind: str, error: type[PlanError]) -> tuple[str, str]:
    """(text, origin) of a plan, recipe or sweep: a file, or a shipped one by name (`double`,
    `plans/double.yaml`); `error` naming the shipped ones when neither exists."""
    found = resolve_shipped(path, kind)
    if found is None:
        raise error(str(path), [f"no such file, and no shipped {kind} of that name"], hint=missing_hint(kind))
    return found.read_text(), str(found)


def load_plan(path: str | Path) -> LoadedPlan:
    """A plan from a file, or a shipped plan by name."""
    return parse_plan(*read_document(path, "plan", PlanError))

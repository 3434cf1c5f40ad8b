"""Patches over recipe data (the parsed YAML, before validation) and the per-seed rewrite.

A patch is `{dotted.path: value}`. Path parts are mapping keys, list indices (negative allowed)
or `*` (every item of a list). Under `stages`, a stage kind selects stages of that kind, optionally
followed by a selector: `*` (all of them), an index among them (0-based), or `grown` (those after
the first grow stage); without a selector the kind means all of them (`implicit` changes that for
`tune:` paths, which mean the post-growth stages). The value replaces what the path names; a
missing last key is created, so a patch can set an option the recipe left to its defaults.

    stages.grow.*.steps: [{op: stack, factor: 2}]   # every grow stage's plan
    stages.train.grown.lr: 1.0e-3                  # train stages after the first growth
    stages.train.0.steps: 100                      # the first train stage
    defaults.batch_size: 4
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

STAGE_KINDS = ("train", "grow")
SELECTORS = ("*", "grown")
SEED_STRIDE = 1000  # run seed s adds s * SEED_STRIDE to every seed in the recipe (all below it)
_INDEX = re.compile(r"^-?\d+$")


class PatchError(ValueError):
    """A path that names nothing in the recipe (the message says where it stopped)."""


def _stage_targets(stages: list, kind: str, selector: str, shown: str) -> list[tuple[dict, str]]:
    of_kind = [i for i, s in enumerate(stages) if isinstance(s, dict) and kind in s]
    if selector == "grown":
        first = next((i for i, s in enumerate(stages) if isinstance(s, dict) and "grow" in s), None)
        of_kind = [] if first is None else [i for i in of_kind if i > first]
    elif selector != "*":
        k = int(selector)
        if not -len(of_kind) <= k < len(of_kind):
            raise PatchError(f"{shown}: the recipe has {len(of_kind)} {kind} stage(s), so there is no {kind} stage {k}")
        of_kind = [of_kind[k]]
    if not of_kind:
        raise PatchError(f"{shown}: no {kind} stage matches (selector {selector!r})")
    out = []
    for i in of_kind:
        if stages[i][kind] is None:
            stages[i][kind] = {}
        out.append((stages[i], kind))
    return out


def _step(holder, key, parts: list[str], pos: int, implicit: str, shown: str) -> tuple[list, int]:
    """The (container, key) pairs one path part leads to from holder[key], and the next position."""
    node, part = holder[key], parts[pos]
    if key == "stages" and isinstance(node, list) and part in STAGE_KINDS:
        nxt = parts[pos + 1] if pos + 1 < len(parts) else None
        if nxt is not None and (nxt in SELECTORS or _INDEX.match(nxt)):
            return _stage_targets(node, part, nxt, shown), pos + 2
        return _stage_targets(node, part, implicit, shown), pos + 1
    if isinstance(node, list):
        if part == "*":
            return [(node, i) for i in range(len(node))], pos + 1
        if _INDEX.match(part) and -len(node) <= int(part) < len(node):
            return [(node, int(part))], pos + 1
        raise PatchError(
            f"{shown}: {'.'.join(parts[:pos]) or 'the recipe'} is a list of {len(node)}; "
            f"{part!r} is not an index in it (or *)"
        )
    if isinstance(node, dict):
        if part not in node and pos + 1 < len(parts):
            node[part] = {}  # a missing mapping on the way: the recipe check judges the key
        return [(node, part)], pos + 1
    raise PatchError(f"{shown}: {'.'.join(parts[:pos])} holds {node!r}, which has no field {part!r}")


def targets(data: dict, path: str, implicit: str = "*") -> list[tuple[object, object]]:
    """Every (container, key) that `path` names in `data` (containers are mutated in place to
    create missing mappings). Raises PatchError naming the part that matched nothing."""
    parts = path.split(".")
    if not path or any(p == "" for p in parts):
        raise PatchError(f"{path!r}: a path is dot-separated keys, indices, * or stage kinds, e.g. stages.train.*.lr")
    current, pos = [({"": data}, "")], 0
    while pos < len(parts):
        nxt, new_pos = [], pos
        for holder, key in current:
            found, new_pos = _step(holder, key, parts, pos, implicit, path)
            nxt += found
        current, pos = nxt, new_pos
    return current


def apply_patch(data: dict, patch: dict, implicit: str = "*") -> list[str]:
    """Set every path of `patch` in `data` (in place); return the problems (paths that name nothing)."""
    problems = []
    for path, value in patch.items():
        try:
            for holder, key in targets(data, str(path), implicit):
                holder[key] = copy.deepcopy(value)
        except PatchError as exc:
            problems.append(str(exc))
    return problems


def _shift(value, run_seed: int) -> int:
    return int(value) + SEED_STRIDE * run_seed


def seeded_spec(spec: str, run_seed: int) -> str:
    """A generated-data spec with its `seed=` shifted (added when absent); other specs unchanged."""
    if not spec.startswith(("synthetic:", "dm-math:")):
        return spec
    body, weight = spec, ""
    head, star, tail = spec.rpartition("*")
    if star and re.fullmatch(r"[0-9.eE+-]+", tail):
        body, weight = head, "*" + tail
    last = body.rsplit(":", 1)
    if len(last) == 2 and "=" in last[1]:
        opts = [o.strip() for o in last[1].split(",") if o.strip()]
        seeds = [o for o in opts if o.partition("=")[0].strip() == "seed"]
        base = int(seeds[0].partition("=")[2]) if seeds else 0
        opts = [o for o in opts if o not in seeds] + [f"seed={_shift(base, run_seed)}"]
        return f"{last[0]}:{','.join(opts)}{weight}"
    return f"{body}:seed={_shift(0, run_seed)}{weight}"


def seed_values(data: dict) -> list[tuple[str, int]]:
    """(where, value) of every seed a recipe sets (not eval seeds: test sets stay fixed)."""
    found = []
    if isinstance(data.get("init"), dict) and "seed" in data["init"]:
        found.append(("init.seed", data["init"]["seed"]))
    if isinstance(data.get("defaults"), dict) and "seed" in data["defaults"]:
        found.append(("defaults.seed", data["defaults"]["seed"]))
    for i, stage in enumerate(data.get("stages") or []):
        train = stage.get("train") if isinstance(stage, dict) else None
        if isinstance(train, dict) and "seed" in train:
            found.append((f"stages[{i}].train.seed", train["seed"]))
    for where, spec in _data_specs(data):
        m = re.search(r"(?:^|[:,])seed=(-?\d+)", spec)
        if m:
            found.append((where, int(m.group(1))))
    return found


def _data_specs(data: dict) -> list[tuple[str, str]]:
    specs = [(f"data[{i}]", s) for i, s in enumerate(data.get("data") or []) if isinstance(s, str)]
    for i, stage in enumerate(data.get("stages") or []):
        train = stage.get("train") if isinstance(stage, dict) else None
        if isinstance(train, dict):
            specs += [
                (f"stages[{i}].train.data[{j}]", s) for j, s in enumerate(train.get("data") or []) if isinstance(s, str)
            ]
    return specs


def seeded(data: dict, run_seed: int) -> dict:
    """The recipe for sweep seed `run_seed`: every training seed (init, train-stage seeds: data
    order, dropout, LoRA init; generated-data seeds: which problems) moves by run_seed * SEED_STRIDE.
    Eval seeds stay, so every run is tested on the same problems. Seed 0 keeps the recipe's seeds."""
    out = copy.deepcopy(data)
    if isinstance(out.get("init"), dict):
        out["init"]["seed"] = _shift(out["init"].get("seed", 0), run_seed)
    out.setdefault("defaults", {})
    out["defaults"]["seed"] = _shift(out["defaults"].get("seed", 0), run_seed)
    if isinstance(out.get("data"), list):
        out["data"] = [seeded_spec(s, run_seed) if isinstance(s, str) else s for s in out["data"]]
    for stage in out.get("stages") or []:
        train = stage.get("train") if isinstance(stage, dict) else None
        if isinstance(train, dict):
            if "seed" in train:
                train["seed"] = _shift(train["seed"], run_seed)
            if isinstance(train.get("data"), list):
                train["data"] = [seeded_spec(s, run_seed) if isinstance(s, str) else s for s in train["data"]]
    return out


def absolute_paths(data: dict, base: Path) -> dict:
    """Relative file paths of a recipe (start, grow plan files, a tokenizer directory, local data, the
    eval's word-problems file) made absolute, so the expanded recipe runs from any directory."""
    out = copy.deepcopy(data)

    def fix(p: str) -> str:
        return p if Path(p).is_absolute() else str((base / p).resolve())

    if isinstance(out.get("start"), str):
        out["start"] = fix(out["start"])
    init = out.get("init")
    if isinstance(init, dict) and isinstance(init.get("tokenizer"), str) and (base / init["tokenizer"]).exists():
        init["tokenizer"] = fix(init["tokenizer"])
    for stage in out.get("stages") or []:
        grow = stage.get("grow") if isinstance(stage, dict) else None
        if isinstance(grow, dict) and isinstance(grow.get("plan"), str):
            grow["plan"] = fix(grow["plan"])
    words = (out.get("eval") or {}).get("word_problems") if isinstance(out.get("eval"), dict) else None
    if isinstance(words, dict) and isinstance(words.get("path"), str):
        words["path"] = fix(words["path"])
    local = {spec for _, spec in _data_specs(out) if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", spec)}
    swap = {spec: _local_spec(spec, base) for spec in local}
    if isinstance(out.get("data"), list):
        out["data"] = [swap.get(s, s) for s in out["data"]]
    for stage in out.get("stages") or []:
        train = stage.get("train") if isinstance(stage, dict) else None
        if isinstance(train, dict) and isinstance(train.get("data"), list):
            train["data"] = [swap.get(s, s) for s in train["data"]]
    return out


def _local_spec(spec: str, base: Path) -> str:
    path, star, weight = spec.rpartition("*")
    if star and not (base / spec).exists() and re.fullmatch(r"[0-9.eE+-]+", weight):
        return str((base / path).resolve()) + "*" + weight if not Path(path).is_absolute() else spec
    return spec if Path(spec).is_absolute() else str((base / spec).resolve())

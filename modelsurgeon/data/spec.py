"""The `--data` syntax: `SPEC` or `SPEC*WEIGHT`; SPEC is a local path, `hf:...`, `synthetic:...` or `dm-math:...`.

Parsing checks everything that can be checked without reading data (weight, scheme, options,
that a local path exists), so a typo fails before a model is loaded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from modelsurgeon.data.dm_math import TRAIN_SPLITS, check_module
from modelsurgeon.errors import DataError

# Suffix -> `datasets` packaged builder. `.txt` holds one document per blank-line-separated block.
LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
ARITH_DEFAULTS = {"n": 2000, "min_k": 1, "max_k": 4, "seed": 0}
DM_MATH_DEFAULTS = {"split": "train", "n": 20000, "seed": 0}
SPEC_FORMS = (
    "a local file or directory (.jsonl .json .parquet .csv .txt)",
    "hf:<name>[:<config>][@<split>]",
    "synthetic:arith[:k=v,...]",
    "dm-math:<module>[:<split>][:n=20000,seed=0]",
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class DataSpec:
    """One training data source and its mixing weight (documents are drawn in proportion to it)."""

    source: str  # a local path (file or dir), "hf:<name>[:<config>][@<split>]", "synthetic:arith[:k=v,...]"
    # or "dm-math:<module>[:<split>][:k=v,...]"
    weight: float = 1.0

    @property
    def kind(self) -> str:
        """ "hf", "synthetic", "dm-math" or "local"."""
        if self.source.startswith("hf:"):
            return "hf"
        if self.source.startswith("dm-math:"):
            return "dm-math"
        return "synthetic" if self.source.startswith("synthetic:") else "local"


def parse_data_spec(text: str) -> DataSpec:
    """Parse the CLI form `SPEC` or `SPEC*WEIGHT`, e.g. "owm.parquet*0.3" or "hf:org/name*2".

    Local sources: `.jsonl`, `.json` (JSON lines, a list of records, or one object holding a list
    of records such as {"data": [...]}), `.parquet`, `.csv`, and `.txt`, where documents are
    separated by a blank line; or a directory, read recursively in sorted path order (hidden
    files and other suffixes skipped).

    `dm-math:<module>[:<split>][:n=..,seed=..]` generates DeepMind's mathematics problems (see
    `modelsurgeon.data.dm_math`); checking its module imports the mathematics-dataset package.

    Raises:
        DataError: the weight is not a positive number, the scheme is unknown, the options of a
            synthetic or dm-math source are invalid (or its package is missing), or a local path
            does not exist or has an unsupported suffix.
    """
    text = text.strip()
    source, weight = _split_weight(text)
    spec = DataSpec(source, weight)
    if spec.kind == "hf":
        hf_parts(spec)
    elif spec.kind == "synthetic":
        arith_options(spec)
    elif spec.kind == "dm-math":
        dm_math_options(spec)
    else:
        _check_local(text, source)
    return spec


def _split_weight(text: str) -> tuple[str, float]:
    if not text:
        raise DataError("--data '': empty data spec", hint=f"use one of: {'; '.join(SPEC_FORMS)}")
    if "*" not in text or Path(text).exists():  # a real path may contain '*'
        return text, 1.0
    source, raw = text.rsplit("*", 1)
    try:
        weight = float(raw)
    except ValueError:
        weight = math.nan
    if not source or not math.isfinite(weight) or weight <= 0:
        raise DataError(
            f"--data {text!r}: weight {raw!r} is not a positive number",
            hint="write SPEC*WEIGHT with a number above 0, e.g. 'math.jsonl*0.3'",
        )
    return source, weight


def _check_local(text: str, source: str) -> None:
    path = Path(source).expanduser()
    match = _SCHEME.match(source)
    if match and not path.exists() and len(match.group(1)) > 1:  # "C:" is a drive, not a scheme
        raise DataError(
            f"--data {text!r}: unknown scheme {match.group(1)!r}:", hint=f"use one of: {'; '.join(SPEC_FORMS)}"
        )
    if not path.exists():
        raise DataError(
            f"--data {text!r}: no such file or directory {str(path)!r}",
            hint="check the path; hub datasets need the prefix 'hf:', e.g. 'hf:open-web-math/open-web-math'",
        )
    if path.is_file() and path.suffix.lower() not in LOCAL_SUFFIXES:
        raise DataError(
            f"--data {text!r}: unsupported file type {path.suffix or '(none)'!r}",
            hint=f"use one of {', '.join(LOCAL_SUFFIXES)} (or a directory holding them)",
        )


def hf_parts(spec: DataSpec) -> tuple[str, str | None, str]:
    """(name, config, split) of an `hf:<name>[:<config>][@<split>]` spec; split defaults to "train"."""
    rest = spec.source[len("hf:") :]
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name or "@" in split or ":" in config or (spec.source.count("@") and not split):
        raise DataError(
            f"--data {spec.source!r}: expected hf:<name>[:<config>][@<split>]",
            hint="e.g. 'hf:open-web-math/open-web-math' or 'hf:org/name:config@validation'",
        )
    return name, config or None, split or "train"


def arith_options(spec: DataSpec) -> dict[str, int]:
    """The generator options of `synthetic:arith[:k=v,...]`, defaults filled in and range-checked."""
    head, _, opts = spec.source.partition(":")[2].partition(":")
    if head != "arith":
        raise DataError(
            f"--data {spec.source!r}: unknown synthetic generator {head!r}",
            hint="the only generator is 'synthetic:arith[:n=2000,min_k=1,max_k=4,seed=0]'",
        )
    options = dict(ARITH_DEFAULTS)
    for item in filter(None, (part.strip() for part in opts.split(","))):
        key, eq, value = item.partition("=")
        if key.strip() not in ARITH_DEFAULTS or not eq:
            raise DataError(
                f"--data {spec.source!r}: unknown option {item!r}",
                hint=f"options are k=v pairs with k in {', '.join(ARITH_DEFAULTS)}",
            )
        try:
            options[key.strip()] = int(value)
        except ValueError:
            raise DataError(
                f"--data {spec.source!r}: option {key.strip()}={value!r} is not an integer",
                hint="e.g. 'synthetic:arith:n=500,max_k=6'",
            ) from None
    # lazy: import cycle (modelsurgeon.data.arith imports modelsurgeon.data.spec)
    from modelsurgeon.data.arith import check_arith_options

    check_arith_options(spec.source, **options)
    return options


def dm_math_options(spec: DataSpec) -> dict:
    """{module, split, n, seed} of `dm-math:<module>[:<split>][:n=..,seed=..]`, defaults filled in and checked."""
    module, *rest = spec.source[len("dm-math:") :].split(":")
    options: dict = {"module": module.strip(), **DM_MATH_DEFAULTS}
    form = "e.g. 'dm-math:arithmetic__add_sub_multiple:train-hard:n=5000,seed=1'"
    if not options["module"] or len(rest) > 2 or (len(rest) == 2 and "=" in rest[0]):
        raise DataError(f"--data {spec.source!r}: expected dm-math:<module>[:<split>][:n=..,seed=..]", hint=form)
    for part in rest:
        if "=" not in part:
            options["split"] = part.strip()
            continue
        for item in filter(None, (p.strip() for p in part.split(","))):
            key, _, value = item.partition("=")
            if key.strip() not in ("n", "seed"):
                raise DataError(f"--data {spec.source!r}: unknown option {item!r}", hint="options are n and seed")
            try:
                options[key.strip()] = int(value)
            except ValueError:
                raise DataError(
                    f"--data {spec.source!r}: option {key.strip()}={value!r} is not an integer", hint=form
                ) from None
    if options["n"] < 1:
        raise DataError(f"--data {spec.source!r}: n={options['n']} problems; need at least 1", hint="e.g. n=20000")
    if options["split"] not in TRAIN_SPLITS:
        raise DataError(
            f"--data {spec.source!r}: {options['split']!r} is not a training split",
            hint=f"train on one of {', '.join(TRAIN_SPLITS)}; the test splits are for evaluation",
        )
    check_module(options["module"], options["split"])
    return options

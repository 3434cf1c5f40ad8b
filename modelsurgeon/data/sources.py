"""Each DataSpec as a lazy stream of document strings, read through `datasets` with streaming.

Local files and hub datasets are read record by record (`load_dataset(..., streaming=True)`),
so memory does not grow with the corpus; only the tokens that packing keeps are held.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from modelsurgeon.data.records import TextRule, resolve_rule
from modelsurgeon.data.spec import (
    LOCAL_SUFFIXES,
    DataSpec,
    arith_options,
    dm_math_options,
    hf_parts,
)
from modelsurgeon.errors import DataError

HUB_HINT = (
    "download the dataset on a machine with hub access (e.g. `hf download --repo-type dataset "
    "NAME --local-dir DIR`), copy DIR here and pass it to --data (local files need no hub); or, "
    "if an earlier non-streamed `datasets.load_dataset(NAME)` left it in this machine's datasets "
    "cache, set HF_DATASETS_OFFLINE=1 to read it from there"
)


class SourceStream:
    """Documents of one spec, in order; `rules` records how records became text."""

    def __init__(self, spec: DataSpec, text_field: str | None = None) -> None:
        self.spec = spec
        self.text_field = text_field
        self.rules: list[str] = []  # one entry per distinct TextRule used (e.g. per file schema)

    def __iter__(self) -> Iterator[str]:
        if self.spec.kind == "synthetic":
            # lazy: import cycle (modelsurgeon.data.arith imports modelsurgeon.data.sources)
            from modelsurgeon.data.arith import generate

            self._note("synthetic:arith prompt + answer")
            yield from (p.text for p in generate(**arith_options(self.spec)))
        elif self.spec.kind == "dm-math":
            # lazy: import cycle (modelsurgeon.data.dm_math imports modelsurgeon.data.sources)
            from modelsurgeon.data import dm_math

            self._note("dm-math question + newline + answer")
            yield from (p.text for p in dm_math.generate(**dm_math_options(self.spec)))
        elif self.spec.kind == "hf":
            yield from self._documents(self.spec.source, _hub_records(self.spec))
        else:
            for path in local_files(self.spec):
                yield from self._documents(str(path), _file_records(path))

    def _documents(self, label: str, records: Iterator[dict]) -> Iterator[str]:
        rule: TextRule | None = None
        for record in records:
            if rule is None:
                rule = resolve_rule(list(record), label, self.text_field)
                self._note(rule.describe())
            yield rule.apply(record, label)

    def _note(self, rule: str) -> None:
        if rule not in self.rules:
            self.rules.append(rule)


def local_files(spec: DataSpec) -> list[Path]:
    """The file itself, or every supported file under the directory (recursive, sorted, hidden skipped)."""
    path = Path(spec.source).expanduser()
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in LOCAL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(
            f"{spec.source}: no data files in this directory",
            hint=f"put files ending in {', '.join(LOCAL_SUFFIXES)} in it, or pass a file",
        )
    return files


def _json_field(path: Path) -> str | None:
    """For a `.json` file holding one object (not JSON lines), the key of its list of records."""
    with path.open("rb") as f:
        head = f.read(1024).lstrip()
        if not head.startswith(b"{"):
            return None  # a JSON list of records, which `datasets` reads as is
        f.seek(0)
        first = f.readline()
        rest = f.readline()
        while rest and not rest.strip():
            rest = f.readline()
    try:
        json.loads(first)
        if rest:
            return None  # JSON lines that happen to end in .json
    except ValueError:
        pass  # a pretty-printed single object
    try:
        whole = json.loads(path.read_bytes())
    except ValueError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc})", hint="fix the file, or save it as JSON lines (.jsonl)"
        ) from None
    lists = [k for k, v in whole.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
    if len(lists) > 1:
        raise DataError(
            f"{path}: several lists of records ({', '.join(map(repr, lists))}); which one is the data is unclear",
            hint="keep one list of records in the file, or convert it to JSON lines (.jsonl)",
        )
    return lists[0] if lists else None  # no list: a single record


def _file_records(path: Path) -> Iterator[dict]:
    import datasets
    import pyarrow

    suffix = path.suffix.lower()
    kwargs: dict = {"sample_by": "paragraph"} if suffix == ".txt" else {}
    if suffix == ".json" and (field := _json_field(path)):
        kwargs["field"] = field
    unreadable = (ValueError, OSError, pyarrow.ArrowException, datasets.exceptions.DatasetsError)
    try:
        ds = datasets.load_dataset(
            LOCAL_SUFFIXES[suffix], data_files=str(path), split="train", streaming=True, **kwargs
        )
        for record in ds:
            if suffix == ".txt":  # blank lines around a paragraph belong to the separator
                record = {"text": record["text"].strip("\n")}
            yield record
    except StopIteration:  # datasets' json builder, on a file without records, peeks past its end
        return
    except unreadable as exc:
        raise DataError(
            f"{path}: cannot be read as {suffix} ({type(exc).__name__}: {exc})",
            hint="check that the file is well formed and its suffix matches its format",
        ) from None


def _hub_records(spec: DataSpec) -> Iterator[dict]:
    import datasets

    name, config, split = hf_parts(spec)
    try:
        yield from datasets.load_dataset(name, config, split=split, streaming=True)
    except (ConnectionError, TimeoutError) as exc:
        raise DataError(
            f"{spec.source}: could not reach the Hugging Face Hub to load {name!r} ({exc})", hint=HUB_HINT
        ) from None
    except FileNotFoundError as exc:
        raise DataError(
            f"{spec.source}: dataset {name!r} was not found on the hub or in the local cache ({exc})",
            hint="check the name; " + HUB_HINT,
        ) from None
    except ValueError as exc:  # unknown config or split
        raise DataError(
            f"{spec.source}: {exc}", hint="check the config and split: hf:<name>[:<config>][@<split>]"
        ) from None

"""surgeon.json: the typed record every writing command leaves beside the weights, read by
every command that follows (train methods, duplicate sharing, optimizer carry, verify, merge,
the progressive runner), so no command re-derives it from string keys.

A manifest holds where the checkpoint came from (`source`: the input of the last growth, or of
the first stage when nothing was grown), what the last growth did (plan, steps, equivalence
class, layer map: output layer -> source layer) and the lineage: one stage record per command
that wrote a checkpoint on the way here. Files written by 0.1.0 read unchanged; newer growth
stages also record their own input and layer map, so `lineage_layer_map` can compose the maps
across several growths."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from modelsurgeon.errors import CheckpointError
from modelsurgeon.io.hf_files import copy_extra_files, file_sha256, headers_sha256, write_json
from modelsurgeon.ops.compile import StepResult
from modelsurgeon.ops.layermap import Equivalence, LayerEntry, LayerMap, compose, identity_map
from modelsurgeon.plan.load import format_loc

MANIFEST = "surgeon.json"


class ManifestError(CheckpointError):
    """A surgeon.json that is not valid JSON or does not match the manifest's schema."""


def tool_version() -> str:
    try:
        return version("modelsurgeon")
    except PackageNotFoundError:
        return "0+unknown"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Record(BaseModel):
    # forbid: a mistyped key in a hand-edited file is reported, not silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> dict:
        """The JSON object, with exactly the fields that were set (an old file round-trips as it was)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class SourceRecord(_Record):
    """A checkpoint a stage read: where it was, what it held, and fingerprints of its files."""

    path: str
    model_type: str | None = None
    format: str | None = None  # convert only: the input's weight format
    num_layers: int | None = None
    tensors: int
    bytes: int
    config_sha256: str | None = None
    headers_sha256: str | None = None  # the raw safetensors headers, in file order
    index_sha256: str | None = None


class PlanRecord(_Record):
    name: str
    origin: str
    text: str
    mergekit_translation: str | None = None


class LayerRecord(_Record):
    """One output layer of a growth: a copy of layer `source` with residual branches scaled by
    `scale`; of the growth's input, or with `model` k >= 1 of its k-th other model (`models`)."""

    layer: int
    source: int = Field(ge=0)
    scale: float
    new: bool = False
    model: int = Field(default=0, ge=0)  # written only for layers from another model

    def entry(self) -> LayerEntry:
        return LayerEntry(self.source, self.scale, self.new, self.model)


def layer_record(j: int, e: LayerEntry) -> LayerRecord:
    """The record of output layer j; `model` only when it is not the growth's input (old files stay as they were)."""
    return LayerRecord(layer=j, source=e.source, scale=e.scale, new=e.new, **({"model": e.model} if e.model else {}))


class OutputRecord(_Record):
    tensors: int
    bytes: int
    shards: int
    num_layers: int
    params: int


class GrowStage(_Record):
    kind: Literal["grow"]
    created: str
    plan: str
    equivalence: Equivalence
    layers: tuple[int, int]  # (input layers, output layers)
    source: SourceRecord | None = None  # the input; absent in 0.1.0 files
    layer_map: list[LayerRecord] | None = None  # absent in 0.1.0 files (the manifest's layer_map then)
    models: list[SourceRecord] | None = None  # a multi-model splice's other inputs; LayerRecord.model k is models[k-1]


class TrainStage(_Record):
    kind: Literal["train"]
    source: SourceRecord | None = None  # the input; absent in 0.1.0 files
    created: str
    method: str
    layers: list[int] | None
    targets: list[str] | None
    data: list[str]
    data_stats: dict[str, Any]
    steps: int
    tokens: int
    seq_len: int
    seed: int
    trainable_params: int
    total_params: int
    initial_eval_loss: float | None
    final_train_loss: float | None
    final_eval_loss: float | None
    resumed: bool
    shared: dict[str, Any] | None
    options: dict[str, Any]  # TrainOptions as JSON; its own schema validates it where it is read


class MergeLoraStage(_Record):
    """No timestamp: merging the same adapter into the same base gives a bit-identical directory."""

    kind: Literal["merge-lora"]
    source: SourceRecord | None = None  # the input; absent in 0.1.0 files
    adapter: str
    adapter_sha256: str
    adapter_config_sha256: str
    r: int | None
    lora_alpha: float | None
    use_rslora: bool
    merged: list[str]
    replaced: list[str]


class ConvertStage(_Record):
    kind: Literal["convert"]
    source: SourceRecord | None = None  # the input; absent in 0.1.0 files
    from_: str = Field(alias="from")
    to: str
    dtype: str | None
    created: str
    version: str
    tensors: int
    bytes: int
    files: list[str]
    dropped: list[str]


# A new command that writes checkpoints (e.g. upcycle) adds its stage model to this union.
Stage = Annotated[GrowStage | TrainStage | MergeLoraStage | ConvertStage, Field(discriminator="kind")]


class Manifest(_Record):
    tool: Literal["modelsurgeon"]
    version: str
    source: SourceRecord
    # The last growth (absent when nothing was grown, e.g. a converted or trained plain model).
    plan: PlanRecord | None = None
    steps: list[StepResult] | None = None
    equivalence: Equivalence | None = None
    layer_map: list[LayerRecord] | None = None
    models: list[SourceRecord] | None = None  # the last growth's other inputs (multi-model splice)
    config_lists_remapped: list[str] | None = None
    input_tensors: dict[str, int] | None = None
    warnings: list[str] | None = None
    output: OutputRecord | None = None
    lineage: list[Stage] = []

    @property
    def widened(self) -> bool:
        return any(s.op == "widen" for s in self.steps or [])

    @property
    def multi_model(self) -> bool:
        """The last growth took layers or non-layer tensors from more than one checkpoint."""
        return bool(self.models)

    @property
    def new_layers(self) -> list[int]:
        """Output layers the last growth added (copies or identity inits)."""
        return [j for j, e in enumerate(self.layer_map or []) if e.new]

    def with_stage(self, stage: Stage) -> Manifest:
        """This manifest with `stage` appended to its lineage; every other field is kept."""
        return self.model_copy(update={"lineage": [*self.lineage, stage]})


def source_record(path: Path, safetensors_files: list[Path] | None, **fields: Any) -> SourceRecord:
    """The record of a checkpoint a stage reads, with fingerprints of its config.json and, for
    safetensors checkpoints, of the weights' headers (None for other formats)."""
    prints = {"config_sha256": file_sha256(path / "config.json")} if (path / "config.json").is_file() else {}
    if safetensors_files:
        prints["headers_sha256"] = headers_sha256(safetensors_files)
    return SourceRecord(path=str(path.resolve()), **fields, **prints)


_LAYER_MAP = TypeAdapter(list[LayerRecord])


def parse_layer_map(records: list) -> list[LayerRecord]:
    """A layer map from LayerRecords or their JSON objects (as surgeon.json holds them)."""
    return _LAYER_MAP.validate_python(records)


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        # Union members show up in the location ("lineage[1].train.steps"); the kind already says which.
        loc = tuple(p for p in err["loc"] if p not in ("grow", "train", "merge-lora", "convert"))
        scalar = isinstance(err["input"], (str, int, float, bool)) or err["input"] is None
        got = f" (got {err['input']!r:.60})" if scalar and err["type"] != "missing" else ""
        problems.append(f"{format_loc(loc)}: {err['msg']}{got}")
    return problems


def read_manifest(directory: str | Path) -> Manifest | None:
    """DIR/surgeon.json, validated; None when DIR has none.

    Raises:
        ManifestError: the file is not JSON, or a field is missing, mistyped or unknown (each
            problem named with its location, e.g. `layer_map[3].scale`).
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    hint = f"restore the {MANIFEST} the command wrote, or fix the fields named above"
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})", hint=hint) from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        lines = "\n".join(f"  - {p}" for p in _problems(exc))
        raise ManifestError(f"{path}: not a valid {MANIFEST}:\n{lines}", hint=hint) from None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    write_json(Path(directory) / MANIFEST, manifest.to_json())


def extend_lineage(previous: Manifest | None, stage: Stage, source: SourceRecord) -> Manifest:
    """The input's manifest with `stage` (read from `source`) appended, or a new manifest whose
    source is `source` when the input had none."""
    stage = stage.model_copy(update={"source": source})
    if previous is None:
        return Manifest(tool="modelsurgeon", version=tool_version(), source=source, lineage=[stage])
    return previous.with_stage(stage)


def finish_output(
    tmp: Path, source: Path, manifest: Manifest, config: dict | None = None, card: str | None = None
) -> list[str]:
    """Everything a writing command leaves beside the weights in `tmp`: the other top-level
    files of `source` (tokenizer, generation config, ...), config.json (`config`; None copies
    SOURCE's byte for byte), surgeon.json, and the model card (`card`; None copies SOURCE's
    when it has one, for stages that do not change what the model is). Returns the
    sub-directories of `source` that were not copied (they may hold stale weights)."""
    skipped = copy_extra_files(source, tmp)
    if config is None:
        shutil.copy2(source / "config.json", tmp / "config.json")
    else:
        write_json(tmp / "config.json", config)
    write_manifest(tmp, manifest)
    if card is not None:
        (tmp / "README.md").write_text(card)
    elif (source / "README.md").is_file():
        shutil.copy2(source / "README.md", tmp / "README.md")
    return skipped


def _stage_links(manifest: Manifest) -> list[tuple[SourceRecord | None, list[LayerRecord] | None, bool]]:
    """(input, layer map, is a growth) per lineage stage, oldest first. 0.1.0 files record the
    input and map only at the top level, for the last growth; without any growth the top-level
    source is the first stage's input."""
    last_grow = max((i for i, s in enumerate(manifest.lineage) if s.kind == "grow"), default=None)
    links = []
    for i, stage in enumerate(manifest.lineage):
        grows = isinstance(stage, GrowStage)
        src, lmap = stage.source, stage.layer_map if grows else None
        if i == last_grow:
            src, lmap = src or manifest.source, lmap or manifest.layer_map
        elif i == 0 and last_grow is None:
            src = src or manifest.source
        links.append((src, lmap, grows))
    return links


def lineage_path(
    manifest: Manifest, parent_headers_sha256: str, num_layers: int
) -> tuple[LayerMap, list[Stage]] | None:
    """The layer map from a checkpoint (its manifest; `num_layers` layers) to the ancestor whose
    safetensors headers have this fingerprint, and the stages on the way (oldest first): the
    growths' maps composed along the lineage, newest first (stages other than growths keep the
    layers). None when no recorded stage input has that fingerprint, or a growth on the way did
    not record its map (0.1.0 files keep only the last growth's)."""
    composed = identity_map(num_layers)
    links = _stage_links(manifest)
    for i in range(len(links) - 1, -1, -1):
        src, lmap, grows = links[i]
        if grows:
            if lmap is None or any(e.source >= len(lmap) for e in composed):
                return None
            if any(lmap[e.source].model for e in composed):  # a layer from another model has no ancestor here
                return None
            composed = compose(tuple(r.entry() for r in lmap), list(composed))
        if src is not None and src.headers_sha256 == parent_headers_sha256:
            return composed, list(manifest.lineage[i:])
    return None


def lineage_layer_map(manifest: Manifest, parent_headers_sha256: str, num_layers: int) -> LayerMap | None:
    """lineage_path's layer map alone."""
    found = lineage_path(manifest, parent_headers_sha256, num_layers)
    return None if found is None else found[0]

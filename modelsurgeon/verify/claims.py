"""What a grown checkpoint claims about itself: its equivalence class and layer map (from
surgeon.json, or --expect for checkpoints without one), plus the checks that need only
config.json and headers, so a mis-remapped config is named before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelsurgeon.arch.registry import layout_of, resolve_spec, text_config_of
from modelsurgeon.arch.spec import ArchSpec, Layout
from modelsurgeon.errors import MissingManifestError, VerifyError
from modelsurgeon.io.hf_files import headers_sha256
from modelsurgeon.io.reader import Checkpoint, open_checkpoint
from modelsurgeon.manifest import MANIFEST, GrowStage, Manifest, Stage, lineage_path, read_manifest
from modelsurgeon.ops.layermap import Equivalence

CLASSES: tuple[Equivalence, ...] = ("exact", "approx", "none")
NOT_PER_LAYER = {"architectures"}  # list-valued config keys that never index layers


@dataclass(frozen=True)
class Structure:
    """A checkpoint read from headers: where its decoder layers are and how many."""

    ckpt: Checkpoint
    spec: ArchSpec
    layout: Layout

    @property
    def num_layers(self) -> int:
        return self.layout.num_layers

    @property
    def layers_module(self) -> str:
        """Where the layers sit in the checkpoint's tensor names (runner.layers_path: in the model)."""
        return self.spec.layer_prefix.rstrip(".")

    @property
    def config(self) -> dict:
        """The config holding the layer count, widths and per-layer lists: a vision-language
        model's text_config, else config.json itself."""
        return text_config_of(self.ckpt.config)

    @property
    def config_name(self) -> str:
        """How reports name `config`: where a user finds these keys."""
        return "config.json text_config" if self.spec.wrapper else "config.json"


def read_structure(path: Path) -> Structure:
    ckpt = open_checkpoint(path)
    spec = resolve_spec(ckpt.config, ckpt.names)
    return Structure(ckpt, spec, layout_of(spec, ckpt.config, ckpt.names, str(path)))


@dataclass(frozen=True)
class Claims:
    equivalence: Equivalence
    origin: str  # where the class came from, for the report
    layer_map: list[tuple[int, float]] | None  # (source layer, branch scale) per grown layer
    notes: list[str] = field(default_factory=list)


# Each stage's effect on the function between two checkpoints of one lineage: growths promise
# their class, conversions keep the function (compared at the narrower dtype), training changes it.
_RANK = {"exact": 0, "approx": 1, "none": 2}


def path_class(stages: list[Stage]) -> Equivalence:
    """The class a path of lineage stages promises: its weakest stage's."""
    classes = [
        s.equivalence if isinstance(s, GrowStage) else "exact" if s.kind == "convert" else "none" for s in stages
    ]
    return max(classes, key=_RANK.__getitem__, default="exact")


def _not_in_lineage(manifest: Manifest, source: Structure, grown: Structure) -> VerifyError:
    recorded = list(dict.fromkeys([s.source.path for s in manifest.lineage if s.source] + [manifest.source.path]))
    return VerifyError(
        f"SOURCE {source.ckpt.path} is not in GROWN's lineage: its weight headers match no checkpoint that "
        f"{grown.ckpt.path / MANIFEST} records as an input ({', '.join(recorded)})",
        hint="verify against one of those checkpoints, or pass --expect CLASS to compare these two as they are "
        "(without a layer-map check)",
    )


def read_claims(source: Structure, grown: Structure, expect: str | None) -> Claims:
    """The class to check (--expect wins over surgeon.json) and the layer map between SOURCE and
    GROWN: the lineage's maps composed from the stage whose input has SOURCE's header fingerprint
    to GROWN, whatever came after the last growth (a convert, a merge). A SOURCE that is not in the
    lineage is an error, or with --expect a comparison without a layer map. Without a manifest the
    map is the identity when the layer counts agree, else unknown."""
    if expect is not None and expect not in CLASSES:
        raise VerifyError(f"unknown equivalence class {expect!r}", hint=f"use one of {', '.join(CLASSES)}")
    manifest = read_manifest(grown.ckpt.path)
    if manifest is None:
        if expect is None:
            raise MissingManifestError(
                f"{grown.ckpt.path} has no {MANIFEST}, so its equivalence class is unknown",
                hint="pass --expect exact|approx|none (exact: same outputs as SOURCE; approx: close; none: report "
                "only)",
            )
        same = source.num_layers == grown.num_layers
        return Claims(expect, "--expect", [(i, 1.0) for i in range(grown.num_layers)] if same else None)
    if manifest.multi_model:  # layers of other checkpoints: SOURCE cannot run GROWN's program
        note = (
            f"GROWN is a splice of {1 + len(manifest.models)} models ({MANIFEST} models: "
            f"{[m.path for m in manifest.models]}): the layer-map program check and the hidden-state "
            "alignment need every layer's own model, so they are not checkable against one SOURCE"
        )
        if expect is None and manifest.equivalence not in CLASSES:
            raise VerifyError(
                f"{MANIFEST} has no valid 'equivalence' ({manifest.equivalence!r})", hint="pass --expect CLASS"
            )
        return Claims(expect or manifest.equivalence, "--expect" if expect else MANIFEST, None, [note])
    found = lineage_path(manifest, headers_sha256(source.ckpt.files), grown.num_layers)
    if found is None:
        if expect is None:
            raise _not_in_lineage(manifest, source, grown)
        return Claims(expect, "--expect", None, [f"SOURCE is not in GROWN's {MANIFEST} lineage: no layer-map check"])
    layer_map, stages = found
    claimed = path_class(stages)
    kinds = [s.kind for s in stages]
    origin = MANIFEST if kinds == ["grow"] else f"{MANIFEST} lineage: {' -> '.join(kinds) or 'same weights'}"
    if expect is not None:
        origin = "--expect" if claimed == expect else f"--expect ({origin} says {claimed})"
    return Claims(expect or claimed, origin, [(e.source, e.scale) for e in layer_map])


def structure_problems(source: Structure, grown: Structure, layer_map: list[tuple[int, float]] | None) -> list[str]:
    """Header/config-only problems: the map must describe GROWN, and every per-layer config
    list must follow it (the grown layer j keeps the attention kind of its source layer)."""
    if layer_map is None:
        return []
    if len(layer_map) != grown.num_layers:
        return [f"{MANIFEST} maps {len(layer_map)} layers but GROWN has {grown.num_layers}"]
    bad = [s for s, _ in layer_map if not 0 <= s < source.num_layers]
    if bad:
        return [f"{MANIFEST} names source layers {sorted(set(bad))} but SOURCE has {source.num_layers}"]
    problems = []
    src_cfg, out_cfg = source.config, grown.config
    n = source.num_layers
    dropped = grown.spec.moe.drop_config if grown.spec.moe and source.spec.moe is None else []  # upcycled
    for key, values in src_cfg.items():
        if not isinstance(values, list) or len(values) != n or key in NOT_PER_LAYER or n < 2 or key in dropped:
            continue
        want = [values[s] for s, _ in layer_map]
        got = out_cfg.get(key)
        if got != want:
            problems.append(_list_problem(grown.config_name, key, got, want, layer_map))
    return problems


def _list_problem(where: str, key: str, got, want: list, layer_map: list[tuple[int, float]]) -> str:
    if not isinstance(got, list) or len(got) != len(want):
        size = len(got) if isinstance(got, list) else "no"
        return f"{where} '{key}' has {size} entries, expected {len(want)} (one per grown layer, remapped from SOURCE)"
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    j = bad[0]
    return (
        f"{where} '{key}' differs at grown layers {bad}: e.g. '{key}'[{j}] is {got[j]!r} but grown layer {j} "
        f"is a copy of source layer {layer_map[j][0]}, whose entry is {want[j]!r}; the list was not remapped "
        f"through the layer map"
    )


# safetensors dtype -> the dtype verify runs at (float64 weights run at float32)
RUN_DTYPES = {"F32": "float32", "F64": "float32", "BF16": "bfloat16", "F16": "float16"}


def weight_dtype(s: Structure) -> str:
    """The floating dtype holding most of a checkpoint's weight bytes, as verify names it."""
    by_dtype: dict[str, int] = {}
    for t in s.ckpt.tensors.values():
        if t.dtype in RUN_DTYPES:
            by_dtype[RUN_DTYPES[t.dtype]] = by_dtype.get(RUN_DTYPES[t.dtype], 0) + t.nbytes
    return max(by_dtype, key=by_dtype.__getitem__, default="float32")


def compare_dtype(source: Structure, grown: Structure, notes: list[str]) -> str:
    """Compare at GROWN's weight dtype: a bfloat16 GROWN of a float32 SOURCE then matches
    SOURCE cast as GROWN was, instead of failing exact checks on the cast's rounding."""
    s, g = weight_dtype(source), weight_dtype(grown)
    notes.append(f"compared at {g}, GROWN's weight dtype" + (f" (SOURCE's is {s})" if s != g else ""))
    return g

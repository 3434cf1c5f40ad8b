"""What a grown checkpoint claims about itself: its equivalence class and layer map (from
surgeon.json, or --expect for checkpoints without one), plus the checks that need only
config.json and headers, so a mis-remapped config is named before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.arch.spec import ArchSpec, Layout
from modelsurgeon.errors import VerifyError
from modelsurgeon.io.hf_files import headers_sha256
from modelsurgeon.io.reader import Checkpoint, open_checkpoint
from modelsurgeon.manifest import MANIFEST, Manifest, read_manifest
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
        return self.spec.layer_prefix.rstrip(".")


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


def _fingerprint_note(manifest: Manifest, source: Structure) -> list[str]:
    """Growth chains record only the last step's map; a wrong SOURCE makes every check fail
    for a reason the report should state up front."""
    want = manifest.source.headers_sha256
    if want and want != headers_sha256(source.ckpt.files):
        return [f"SOURCE's weight headers differ from those recorded in {MANIFEST} (grown from "
                f"{manifest.source.path}): the layer map may not apply to this SOURCE"]  # fmt: skip
    return []


def read_claims(source: Structure, grown: Structure, expect: str | None) -> Claims:
    """The class to check (--expect wins over surgeon.json) and the layer map to diagnose with.
    Without a manifest the map is the identity when the layer counts agree, else unknown."""
    if expect is not None and expect not in CLASSES:
        raise VerifyError(f"unknown equivalence class {expect!r}", hint=f"use one of {', '.join(CLASSES)}")
    manifest = read_manifest(grown.ckpt.path)
    if manifest is None:
        if expect is None:
            raise VerifyError(
                f"{grown.ckpt.path} has no {MANIFEST}, so its equivalence class is unknown",
                hint="pass --expect exact|approx|none (exact: same outputs as SOURCE; approx: close; none: report only)",
            )
        same = source.num_layers == grown.num_layers
        return Claims(expect, "--expect", [(i, 1.0) for i in range(grown.num_layers)] if same else None)
    layer_map = [(e.source, e.scale) for e in manifest.layer_map or []] or None
    notes = _fingerprint_note(manifest, source)
    if manifest.multi_model:  # layers of other checkpoints: SOURCE cannot run GROWN's program
        layer_map = None
        notes.append(f"GROWN is a splice of {1 + len(manifest.models)} models ({MANIFEST} models: "
                     f"{[m.path for m in manifest.models]}): the layer-map program check and the hidden-state "
                     "alignment need every layer's own model, so they are not checkable against one SOURCE")  # fmt: skip
    claimed = manifest.equivalence
    if expect is None:
        if claimed not in CLASSES:
            raise VerifyError(f"{MANIFEST} has no valid 'equivalence' ({claimed!r})", hint="pass --expect CLASS")
        return Claims(claimed, MANIFEST, layer_map, notes)
    origin = "--expect" if claimed in (None, expect) else f"--expect (surgeon.json says {claimed})"
    return Claims(expect, origin, layer_map, notes)


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
    src_cfg, out_cfg = source.ckpt.config, grown.ckpt.config
    n = source.num_layers
    dropped = grown.spec.moe.drop_config if grown.spec.moe and source.spec.moe is None else []  # upcycled
    for key, values in src_cfg.items():
        if not isinstance(values, list) or len(values) != n or key in NOT_PER_LAYER or n < 2 or key in dropped:
            continue
        want = [values[s] for s, _ in layer_map]
        got = out_cfg.get(key)
        if got != want:
            problems.append(_list_problem(key, got, want, layer_map))
    return problems


def _list_problem(key: str, got, want: list, layer_map: list[tuple[int, float]]) -> str:
    if not isinstance(got, list) or len(got) != len(want):
        size = len(got) if isinstance(got, list) else "no"
        return f"config.json '{key}' has {size} entries, expected {len(want)} (one per grown layer, remapped from SOURCE)"
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    j = bad[0]
    return (f"config.json '{key}' differs at grown layers {bad}: e.g. '{key}'[{j}] is {got[j]!r} but grown layer {j} "
            f"is a copy of source layer {layer_map[j][0]}, whose entry is {want[j]!r}; the list was not remapped "
            f"through the layer map")  # fmt: skip

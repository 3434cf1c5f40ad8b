"""surgeon.json as a typed contract: files written by 0.1.0 (tests/data/manifests/) read with
the right typed fields and rewrite unchanged; the lineage walk composes layer maps across
growths (checked against the weights); a hand-broken file is named with each bad field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelsurgeon.convert import convert
from modelsurgeon.grow.engine import grow
from modelsurgeon.io.hf_files import headers_sha256
from modelsurgeon.io.reader import open_checkpoint
from modelsurgeon.manifest import (
    ConvertStage,
    GrowStage,
    Manifest,
    ManifestError,
    MergeLoraStage,
    TrainStage,
    lineage_layer_map,
    read_manifest,
)
from modelsurgeon.plan import parse_plan
from modelsurgeon.train.methods import new_layers

FIXTURES = Path(__file__).parent / "data" / "manifests"
TINY_HEADERS = "94d81b2188333fb2cc13d43c77bbc147b27dcdf80a8e8d24e8faaf562712da21"  # the fixtures' tiny llama
MERGED_HEADERS = "ec3cdfc5e780880c44481169f280dd13e3a9b8bd635fd67fd13e3678bcc76581"  # merged.json's checkpoint
PRO_SOURCES = [0, 1, 1, 2, 3, 3]  # the LLaMA-Pro plan the fixtures grew with: a zero copy after layers 1 and 3
DOUBLE = "name: double\nsteps:\n  - op: interpolate\n    factor: 2\n"
PRO = "name: pro\nsteps:\n  - op: interpolate\n    factor: 2\n    layers: {every: 2}\n    new: zero\n"


def fixture(name: str, tmp_path: Path) -> Manifest:
    shutil.copy(FIXTURES / f"{name}.json", tmp_path / "surgeon.json")
    manifest = read_manifest(tmp_path)
    assert manifest is not None
    return manifest


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_old_files_read_and_rewrite_unchanged(path, tmp_path):
    manifest = fixture(path.stem, tmp_path)
    assert manifest.to_json() == json.loads(path.read_text())


def test_old_files_typed_fields(tmp_path):
    grown = fixture("grown", tmp_path)
    assert grown.equivalence == "exact" and [e.source for e in grown.layer_map] == PRO_SOURCES
    assert grown.new_layers == [2, 5] and [e.scale for e in grown.layer_map] == [1, 1, 0, 1, 1, 0]
    assert grown.source.headers_sha256 == TINY_HEADERS and grown.output.num_layers == 6
    assert not grown.multi_model and grown.models is None and {e.model for e in grown.layer_map} == {0}
    (stage,) = grown.lineage
    assert isinstance(stage, GrowStage) and stage.layers == (4, 6) and stage.plan == "pro"

    trained = fixture("trained", tmp_path)
    assert [type(s) for s in trained.lineage] == [GrowStage, TrainStage]
    assert trained.lineage[1].method == "lora-new" and trained.lineage[1].layers == [2, 5]
    assert trained.layer_map == grown.layer_map  # later stages keep the growth's record

    merged = fixture("merged", tmp_path)
    assert isinstance(merged.lineage[1], MergeLoraStage) and merged.lineage[1].r == 16

    converted = fixture("converted", tmp_path)
    assert [s.kind for s in converted.lineage] == ["grow", "train", "convert"]
    stage = converted.lineage[2]
    assert isinstance(stage, ConvertStage) and (stage.from_, stage.to) == ("safetensors", "bin")

    plain = fixture("converted-plain", tmp_path)
    assert plain.layer_map is None and plain.equivalence is None and plain.source.format == "safetensors"
    assert fixture("widened", tmp_path).widened and not grown.widened


def test_old_files_lineage_walk(tmp_path):
    for name in ("grown", "trained", "merged", "converted"):  # train, merge and convert keep the layers
        walk = lineage_layer_map(fixture(name, tmp_path), TINY_HEADERS, 6)
        assert [e.source for e in walk] == PRO_SOURCES and [e.new for e in walk] == [0, 0, 1, 0, 0, 1], name
    regrown = fixture("regrown", tmp_path)
    assert [e.source for e in lineage_layer_map(regrown, MERGED_HEADERS, 12)] == [0, 1, 2, 3, 4, 5] * 2
    # 0.1.0 kept only the last growth's map, so the walk past it is unknown rather than wrong
    assert lineage_layer_map(regrown, TINY_HEADERS, 12) is None
    assert lineage_layer_map(fixture("grown", tmp_path), "0" * 64, 6) is None
    assert [e.source for e in lineage_layer_map(fixture("trained-plain", tmp_path), TINY_HEADERS, 4)] == [0, 1, 2, 3]


def layer_tensors(path: Path, layer: int) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    prefix = f"model.layers.{layer}."
    return {k.removeprefix(prefix): v for k, v in out.items() if k.startswith(prefix)}


def test_lineage_walk_composes_growths_and_crosses_a_convert(tiny, tmp_path):
    """tiny -convert-> a -grow double-> b -grow pro-> c: every unscaled layer of c is, byte for
    byte, the tiny layer the composed map names."""
    src = tiny("llama", n_layers=2)
    convert(src, tmp_path / "a")
    grow(tmp_path / "a", parse_plan(DOUBLE), tmp_path / "b")
    grow(tmp_path / "b", parse_plan(PRO), tmp_path / "c")
    manifest = read_manifest(tmp_path / "c")
    assert [s.kind for s in manifest.lineage] == ["convert", "grow", "grow"]
    walk = lineage_layer_map(manifest, headers_sha256(open_checkpoint(src).files), 6)
    assert [e.source for e in walk] == [0, 0, 0, 1, 1, 1]
    assert [e.new for e in walk] == [0, 1, 1, 0, 1, 1]  # added by either growth (double marks its copies new)
    assert [e.scale for e in walk] == [1, 1, 0, 1, 1, 0]
    for j, entry in enumerate(walk):
        if entry.scale == 1.0:
            got, want = layer_tensors(tmp_path / "c", j), layer_tensors(src, entry.source)
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), j
    # the intermediate checkpoint is found too: c's map onto b is the last growth's alone
    b_map = lineage_layer_map(manifest, headers_sha256(open_checkpoint(tmp_path / "b").files), 6)
    assert [e.source for e in b_map] == [0, 1, 1, 2, 3, 3]


def break_file(tmp_path: Path, edit) -> Path:
    data = json.loads((FIXTURES / "trained.json").read_text())
    edit(data)
    (tmp_path / "surgeon.json").write_text(json.dumps(data))
    return tmp_path


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda d: d["layer_map"][3].update(scale="big"), "layer_map[3].scale: Input should be a valid number"),
        (lambda d: d["layer_map"][1].update(source=-1), "layer_map[1].source: Input should be greater than or equal"),
        (lambda d: d["lineage"][1].update(steps="many"), "lineage[1].steps"),
        (lambda d: d["lineage"][0].update(kind="upcycle"), "lineage[0]: Input tag 'upcycle'"),
        (lambda d: d["source"].pop("tensors"), "source.tensors: Field required"),
        (lambda d: d.update(equivalance="exact"), "equivalance: Extra inputs are not permitted"),
        (lambda d: d.update(equivalence="maybe"), "equivalence: Input should be 'exact', 'approx' or 'none'"),
    ],
)
def test_a_broken_file_names_the_field(tmp_path, edit, named):
    with pytest.raises(ManifestError, match="not a valid surgeon.json") as info:
        read_manifest(break_file(tmp_path, edit))
    assert str(tmp_path / "surgeon.json") in str(info.value) and named in str(info.value)
    assert info.value.hint


def test_commands_report_a_broken_file(tmp_path):
    """A reader (here train-stage's `new` method) stops on the file, not on a KeyError."""
    (tmp_path / "surgeon.json").write_text('{"tool": "modelsurgeon",')
    with pytest.raises(ManifestError, match="not valid JSON"):
        new_layers(tmp_path)
    assert read_manifest(tmp_path / "nowhere") is None


def test_writers_record_each_stage_input(tiny, tmp_path):
    src = tiny("llama", n_layers=2)
    grow(src, parse_plan(DOUBLE), tmp_path / "g")
    convert(tmp_path / "g", tmp_path / "c", dtype="bfloat16")
    manifest = read_manifest(tmp_path / "c")
    grow_stage, convert_stage = manifest.lineage
    assert grow_stage.source == manifest.source and grow_stage.layer_map == manifest.layer_map
    assert convert_stage.source.path == str((tmp_path / "g").resolve())
    assert convert_stage.source.headers_sha256 == headers_sha256(open_checkpoint(tmp_path / "g").files)

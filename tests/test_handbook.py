"""The handbook's contract: every chapter's sweep file validates (expands, every recipe planned),
and every number quoted in docs/handbook/README.md (written `` `N`<sup>chK</sup> ``) appears
verbatim in chapter K's committed results (docs/handbook/chK/*.csv|json|md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from modelsurgeon.sweep.expand import expand
from modelsurgeon.sweep.schema import load_sweep

ROOT = Path(__file__).parent.parent
HANDBOOK = ROOT / "docs" / "handbook"
SWEEPS = sorted((ROOT / "plans" / "sweeps" / "handbook").glob("*.yaml"))
QUOTED = re.compile(r"`([^`]+)`<sup>ch(\d+)</sup>")
RESULT_SUFFIXES = (".csv", ".json", ".md")


def quoted_numbers(readme: str) -> list[tuple[str, int]]:
    return [(m.group(1).strip(), int(m.group(2))) for m in QUOTED.finditer(readme)]


def missing_numbers(readme: str, handbook: Path) -> list[str]:
    """Quoted numbers not found in their chapter's results files."""
    texts: dict[int, str] = {}
    out = []
    for number, chapter in quoted_numbers(readme):
        if chapter not in texts:
            folder = handbook / f"ch{chapter}"
            files = sorted(p for p in folder.glob("*") if p.suffix in RESULT_SUFFIXES) if folder.is_dir() else []
            texts[chapter] = "\n".join(p.read_text() for p in files)
        if number not in texts[chapter]:
            out.append(f"{number} (chapter {chapter})")
    return out


def test_every_chapter_has_a_sweep_file():
    assert [p.name for p in SWEEPS] == [
        "ch1-seed-idea.yaml",
        "ch2-how.yaml",
        "ch3-when.yaml",
        "ch4-optimizer.yaml",
        "ch5-real.yaml",
    ]


def _stand_in_chapter5_data(base: Path) -> None:
    """runs/handbook-data as make_handbook_data.py writes it, with a tiny 30-layer llama as SmolLM2."""
    from modelsurgeon.tiny import build_tiny

    data = base / "runs" / "handbook-data"
    build_tiny("llama", data / "smollm2-135m", n_layers=30, max_position_embeddings=512)
    (data / "math_train.jsonl").write_text(json.dumps({"text": "Question: 1+1?\nAnswer: 2\n#### 2"}) + "\n")
    (data / "gsm_heldout.jsonl").write_text(json.dumps({"id": "a", "question": "1+2?", "answer": "3"}) + "\n")
    (base / "plans").symlink_to(ROOT / "plans")


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_handbook_sweep_validates(path, tmp_path, monkeypatch):
    """Expands with >= 3 seeds, every expanded recipe planned; chapters 1-4 share one tuned baseline."""
    monkeypatch.chdir(ROOT)
    base = None
    if path.name.startswith("ch5") and not (ROOT / "runs" / "handbook-data" / "smollm2-135m").is_dir():
        _stand_in_chapter5_data(tmp_path)
        base = tmp_path
    manifest = expand(load_sweep(path), base_dir=base)
    assert len(manifest.seeds) >= 3
    baselines = [a for a in manifest.arms if a.kind == "baseline"]
    if path.name.startswith("ch5"):
        assert not baselines and len(manifest.arms) == 4
    else:
        assert len(baselines) == 1 and baselines[0].tuned, "every arm has the same budget: one shared, tuned baseline"


def test_quoted_numbers_are_in_the_chapters_results():
    readme = (HANDBOOK / "README.md").read_text()
    assert missing_numbers(readme, HANDBOOK) == []


def test_the_number_check_finds_a_number_missing_from_the_results(tmp_path):
    (tmp_path / "ch1").mkdir()
    (tmp_path / "ch1" / "results.csv").write_text("arm,seed,final_eval_loss\nlora,0,1.2345\n")
    (tmp_path / "ch1" / "notes.txt").write_text("0.999")  # not a results file
    readme = "loss `1.2345`<sup>ch1</sup>, accuracy `0.999`<sup>ch1</sup>, saving `12%`<sup>ch2</sup>"
    assert quoted_numbers(readme) == [("1.2345", 1), ("0.999", 1), ("12%", 2)]
    assert missing_numbers(readme, tmp_path) == ["0.999 (chapter 1)", "12% (chapter 2)"]


def _committed_chapters() -> list[Path]:
    return sorted(p for p in HANDBOOK.glob("ch*") if (p / "results.csv").is_file())


@pytest.mark.parametrize("chapter", _committed_chapters(), ids=lambda p: p.name)
def test_chapter_has_its_outputs_and_its_cost_adds_up_from_its_runs(chapter):
    """report, results, summary, plots and cost.md; cost.md's sum of the runs' wall clocks is the
    sum of results.csv's wall_s column (both from the same run directories)."""
    import csv

    for name in ("report.md", "summary.json", "cost.md", "loss_vs_flops.png"):
        assert (chapter / name).is_file(), f"{chapter.name}/{name} missing"
    with (chapter / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    total = sum(float(r["wall_s"]) for r in rows)
    cost = (chapter / "cost.md").read_text()
    m = re.search(r"summed: ([\d.]+) s over (\d+) runs", cost)
    assert m, "cost.md does not state the runs' summed wall clock (scripts/handbook_cost.py writes it)"
    assert int(m.group(2)) == len(rows)
    assert float(m.group(1)) == pytest.approx(total, abs=0.06)

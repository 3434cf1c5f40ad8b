"""The test sets a recipe scores each trained model on, per problem, so a sweep can pool and
bootstrap them: `synthetic:arith` (chain lengths up to the training maximum = interpolation,
longer = extrapolation) and DeepMind's mathematics dataset (`eval: {dm_math: {...}}`: its
interpolation test sets and its extrapolation sets, per module). Greedy decoding, exact match on
the answer, decoding stopped at the answer's end (EOS, which ends every training document, or a
newline); and each answer's teacher-forced loss (`answer_nll`), a graded score that still ranks
models whose exact match is at the floor. Test problems are fixed by the eval seed, whatever the
run's seed."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from modelsurgeon.data import dm_math
from modelsurgeon.data.arith import answer_nll, eval_set, greedy_replies
from modelsurgeon.progressive.word_problems import word_problem_rows

PROBLEMS_FILE = "eval_problems.jsonl"


class DmMathEval(BaseModel):
    """`eval: {dm_math: {...}}`: n_per_module problems of each module, in both test sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modules: list[str] = Field(min_length=1)
    n_per_module: int = Field(50, ge=1)
    seed: int = 0


def _summary(rows: list[dict]) -> dict:
    """Accuracy and count of rows, by chain length and (when present) by module."""
    out = {"accuracy": sum(r["correct"] for r in rows) / len(rows), "n": len(rows)}
    nll = [r["answer_nll"] for r in rows if r.get("answer_nll") is not None]
    if nll:
        out["answer_loss"] = sum(nll) / len(nll)
    for field, name in (("length", "by_length"), ("module", "by_module")):
        groups = defaultdict(list)
        for r in rows:
            if r.get(field) is not None:
                groups[r[field]].append(r["correct"])
        if groups:
            out[name] = {str(k): {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())}
    return out


def _load(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()  # dropout off: greedy decoding is deterministic
    return model, AutoTokenizer.from_pretrained(model_dir)


def _arith_rows(model, tokenizer, spec, train_max_k: int | None) -> list[dict]:
    import torch

    problems = eval_set(list(range(spec.min_k, spec.max_k + 1)), spec.per_k, spec.seed)
    rows = []
    with torch.no_grad():
        for start in range(0, len(problems), 100):
            batch = problems[start : start + 100]
            replies = greedy_replies(model, tokenizer, [p.prompt for p in batch], spec.max_new_tokens)
            nll = answer_nll(model, tokenizer, [p.prompt for p in batch], [p.answer for p in batch])
            for p, reply, loss in zip(batch, replies, nll):
                test = "interpolation" if train_max_k is None or p.k <= train_max_k else "extrapolation"
                rows.append(
                    {
                        "bench": "arith",
                        "set": test,
                        "id": p.prompt,
                        "answer": p.answer,
                        "reply": reply,
                        "length": p.k,
                        "module": None,
                        "correct": int(reply == p.answer),
                        "answer_nll": loss,
                    }
                )
    return rows


def _dm_rows(model, tokenizer, spec: DmMathEval) -> list[dict]:

    rows = []
    for test, problems in dm_math.test_sets(list(spec.modules), spec.n_per_module, spec.seed).items():
        right = dm_math.exact_match(model, tokenizer, problems, batch_size=50)  # greedy, cut at newline or EOS
        nll = answer_nll(model, tokenizer, [p.prompt for p in problems], [p.answer for p in problems])
        rows += [
            {
                "bench": "dm_math",
                "set": test,
                "id": p.question,
                "answer": p.answer,
                "length": dm_math.chain_length(p),
                "module": p.module,
                "correct": int(ok),
                "answer_nll": loss,
            }
            for p, ok, loss in zip(problems, right, nll)
        ]
    return rows


def evaluate(model_dir: Path, spec, train_max_k: int | None, out_dir: Path) -> dict:
    """Score MODEL_DIR on `spec` (a recipe's EvalSpec); write every problem's result to
    OUT_DIR/eval_problems.jsonl and return the stage record's fields: accuracy_by_k (arith, as
    before) and tests: {bench: {test set: {accuracy, n, by_length, by_module}}}."""
    if spec.arith is None and spec.dm_math is None and spec.word_problems is None:
        return {"accuracy_by_k": None, "tests": {}}
    model, tokenizer = _load(model_dir)
    rows = []
    if spec.arith is not None:
        rows += _arith_rows(model, tokenizer, spec.arith, train_max_k)
    if spec.dm_math is not None:
        rows += _dm_rows(model, tokenizer, spec.dm_math)
    if spec.word_problems is not None:
        rows += word_problem_rows(model, tokenizer, spec.word_problems)
    (out_dir / PROBLEMS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    tests: dict[str, dict] = defaultdict(dict)
    for bench, test in dict.fromkeys((r["bench"], r["set"]) for r in rows):
        tests[bench][test] = _summary([r for r in rows if (r["bench"], r["set"]) == (bench, test)])
    by_k = None
    if spec.arith is not None:
        arith = [r for r in rows if r["bench"] == "arith"]
        by_k = _summary(arith)["by_length"]
    return {"accuracy_by_k": by_k, "tests": dict(tests)}

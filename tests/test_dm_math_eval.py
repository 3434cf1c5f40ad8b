"""The dm-math test sets in a recipe's eval (against a stand-in for modelsurgeon.data.dm_math
until the data library is merged): every problem scored and written, summaries per test set,
module and chain length, and greedy decoding stopped at the answer's end."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import pytest

from modelsurgeon.progressive import evals
from modelsurgeon.progressive.recipe import EvalSpec


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    module: str
    split: str


def _stand_in() -> types.ModuleType:
    mod = types.ModuleType("modelsurgeon.data.dm_math")
    sets = {
        "interpolation": [Problem("What is 1 + 2?", "3", "arithmetic__add_sub_multiple", "interpolate"),
                          Problem("What is 2 * 3?", "6", "arithmetic__mul", "interpolate")],
        "extrapolation": [Problem("What is 1 + 2 + 3 + 4?", "10", "arithmetic__add_sub_multiple_longer", "extrapolate")],
    }  # fmt: skip
    mod.test_sets = lambda modules, n, seed: sets
    mod.chain_length = lambda p: p.question.count("+") + p.question.count("*") + 1
    return mod


@pytest.fixture
def dm_math(monkeypatch):
    from modelsurgeon import data

    mod = sys.modules.get("modelsurgeon.data.dm_math") or _stand_in()
    monkeypatch.setitem(sys.modules, "modelsurgeon.data.dm_math", mod)
    monkeypatch.setattr(data, "dm_math", mod, raising=False)
    return mod


def test_scores_each_problem_per_set_module_and_length(dm_math, monkeypatch, tmp_path):
    if getattr(dm_math, "__file__", None):  # the data library itself is merged: its problems differ
        pytest.skip("the data library's dm_math is installed; this test pins the stand-in's answers")
    replies = {"What is 1 + 2?\n": "3", "What is 2 * 3?\n": "5", "What is 1 + 2 + 3 + 4?\n": "10"}
    monkeypatch.setattr(evals, "_load", lambda d: (None, None))
    monkeypatch.setattr(evals, "_greedy_lines", lambda m, t, prompts, n: [replies[p] for p in prompts])
    spec = EvalSpec.model_validate({"arith": None, "dm_math": {"modules": ["arithmetic__add_sub_multiple"]}})
    out = evals.evaluate(tmp_path, spec, None, tmp_path)
    tests = out["tests"]["dm_math"]
    assert out["accuracy_by_k"] is None
    assert (tests["interpolation"]["accuracy"], tests["interpolation"]["n"]) == (0.5, 2)
    assert tests["interpolation"]["by_module"]["arithmetic__mul"] == {"accuracy": 0.0, "n": 1}
    assert tests["extrapolation"]["by_length"] == {"4": {"accuracy": 1.0, "n": 1}}
    rows = [json.loads(x) for x in (tmp_path / evals.PROBLEMS_FILE).read_text().splitlines()]
    assert [(r["set"], r["correct"]) for r in rows] == [("interpolation", 1), ("interpolation", 0), ("extrapolation", 1)]


def test_greedy_lines_stop_at_the_answer_end(tiny):
    """A real model through generate: replies are single lines (cut at EOS or newline)."""
    from transformers import AutoModelForCausalLM

    from modelsurgeon.data.arith import arith_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny("llama", n_layers=2))  # vocab 256 covers the 47 arith ids
    tokenizer = arith_tokenizer()
    replies = evals._greedy_lines(model.eval(), tokenizer, ["a=1; a=?", "b=2; b=?"], 6)
    assert len(replies) == 2 and all(isinstance(r, str) and "\n" not in r for r in replies)

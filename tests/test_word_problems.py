"""`eval: {word_problems: ...}`: held-out math word problems scored by exact numeric match."""

from __future__ import annotations

import json

import pytest

from modelsurgeon.errors import DataError, RecipeError
from modelsurgeon.progressive.recipe import parse_recipe
from modelsurgeon.progressive.word_problems import (
    WordProblemEval,
    extract_answer,
    is_correct,
    read_problems,
    word_problem_rows,
)
from modelsurgeon.sweep.patch import absolute_paths


@pytest.mark.parametrize(
    "reply, answer, correct",
    [
        ("She pays 3 * 6 = 18 dollars.\n#### 18", "18", True),
        ("#### 1,250", "1250", True),
        ("The answer is 42.", "42", True),  # no ####: the last number
        ("7 * 6 = 42, minus 2 is 40\n#### 40", "42", False),  # #### wins over earlier numbers
        ("#### 12.0", "12", True),
        ("I do not know", "5", False),
        ("-3 degrees\n#### -3", "-3", True),
    ],
)
def test_answer_extraction_and_numeric_match(reply, answer, correct):
    assert is_correct(reply, answer) is correct


def test_extract_answer_prefers_the_last_final_marker():
    assert extract_answer("#### 3 then #### 4") == "4"
    assert extract_answer("no digits") is None


def _write(tmp_path, rows):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_problems_read_in_order_with_a_limit(tmp_path):
    path = _write(tmp_path, [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(5)])
    assert [p["id"] for p in read_problems(WordProblemEval(path=str(path), limit=3))] == ["q0", "q1", "q2"]


def test_a_bad_problem_line_is_named(tmp_path):
    path = _write(
        tmp_path, [{"id": "a", "question": "q", "answer": "1"}, {"id": "b", "question": "q", "answer": "many"}]
    )
    with pytest.raises(DataError, match=r"p.jsonl:2: expected \{id, question, answer\} with a numeric answer"):
        read_problems(WordProblemEval(path=str(path)))
    with pytest.raises(DataError, match="make_handbook_data.py"):
        read_problems(WordProblemEval(path=str(tmp_path / "missing.jsonl")))


def test_recipe_accepts_the_eval_and_refuses_a_non_jsonl_path():
    head = "name: t\nstart: m\ndata: [x.jsonl]\nstages:\n  - train: {steps: 1}\neval:\n  arith: null\n"
    loaded = parse_recipe(head + "  word_problems: {path: w.jsonl, limit: 5}\n")
    assert loaded.recipe.eval.word_problems.limit == 5
    with pytest.raises(RecipeError, match="eval.word_problems.path.*must be a .jsonl file"):
        parse_recipe(head + "  word_problems: {path: w.txt}\n")


def test_sweep_makes_the_word_problems_path_absolute(tmp_path):
    data = {"eval": {"word_problems": {"path": "d/w.jsonl"}}, "data": []}
    assert absolute_paths(data, tmp_path)["eval"]["word_problems"]["path"] == str((tmp_path / "d/w.jsonl").resolve())


def test_rows_score_a_tiny_model_end_to_end(tiny, tmp_path):
    """Greedy replies of a random tiny model: one row per problem, scored against its own reply."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny("llama", n_layers=2)
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    path = _write(tmp_path, [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(3)])
    rows = word_problem_rows(model.eval(), tok, WordProblemEval(path=str(path), max_new_tokens=6, batch_size=2))
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert all(r["bench"] == "word_problems" and r["set"] == "heldout" for r in rows)
    assert [r["correct"] for r in rows] == [int(is_correct(r["reply"], r["answer"])) for r in rows]

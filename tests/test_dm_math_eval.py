"""The dm-math test sets in a recipe's eval: every problem scored and written to
eval_problems.jsonl, summaries per test set, module and chain length; and the real generator's
test sets through a from-scratch model with the ascii tokenizer (skipped without the package)."""

from __future__ import annotations

import json

import pytest

from modelsurgeon.data import arith, dm_math
from modelsurgeon.progressive import evals
from modelsurgeon.progressive.recipe import EvalSpec

SETS = {
    "interpolation": [
        dm_math.Problem("What is 1 + 2?", "3", "arithmetic__add_sub_multiple", "interpolate"),
        dm_math.Problem("What is 2 * 3?", "6", "arithmetic__mul_div_multiple", "interpolate"),
    ],
    "extrapolation": [
        dm_math.Problem("What is 1 + 2 + 3 + 4?", "10", "arithmetic__add_sub_multiple_longer", "extrapolate")
    ],
}


def test_scores_each_problem_per_set_module_and_length(monkeypatch, tmp_path):
    right = {"What is 1 + 2?": True, "What is 2 * 3?": False, "What is 1 + 2 + 3 + 4?": True}
    monkeypatch.setattr(evals, "_load", lambda d: (None, None))
    monkeypatch.setattr(dm_math, "test_sets", lambda modules, n, seed: SETS)
    monkeypatch.setattr(
        dm_math, "exact_match", lambda m, t, problems, batch_size: [right[p.question] for p in problems]
    )
    monkeypatch.setattr(evals, "answer_nll", lambda m, t, prompts, answers: [float(len(a)) for a in answers])
    spec = EvalSpec.model_validate({"arith": None, "dm_math": {"modules": ["arithmetic__add_sub_multiple"]}})
    out = evals.evaluate(tmp_path, spec, None, tmp_path)
    tests = out["tests"]["dm_math"]
    assert out["accuracy_by_k"] is None
    assert (tests["interpolation"]["accuracy"], tests["interpolation"]["n"]) == (0.5, 2)
    assert tests["interpolation"]["by_module"]["arithmetic__mul_div_multiple"] == {"accuracy": 0.0, "n": 1}
    assert tests["extrapolation"]["by_length"] == {"4": {"accuracy": 1.0, "n": 1}}  # four operands
    assert (tests["interpolation"]["answer_loss"], tests["extrapolation"]["answer_loss"]) == (1.0, 2.0)
    rows = [json.loads(x) for x in (tmp_path / evals.PROBLEMS_FILE).read_text().splitlines()]
    assert [(r["set"], r["correct"]) for r in rows] == [
        ("interpolation", 1),
        ("interpolation", 0),
        ("extrapolation", 1),
    ]
    assert [r["answer_nll"] for r in rows] == [1.0, 1.0, 2.0]


def test_answer_loss_is_the_model_loss_on_the_answer_tokens_whatever_the_batch(tmp_path):
    """answer_nll in one padded batch equals, per problem, transformers' own loss on a lone
    sequence EOS + prompt + answer + EOS with only the answer and its EOS labelled."""
    import torch

    from modelsurgeon.progressive.init import InitModel, build_init

    built = build_init(
        InitModel.model_validate(
            {
                "family": "llama",
                "tokenizer": "ascii",
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
            }
        ),
        tmp_path / "m",
        tmp_path,
    )
    model, tok = evals._load(built)
    problems = [p for ps in SETS.values() for p in ps]
    got = arith.answer_nll(model, tok, [p.prompt for p in problems], [p.answer for p in problems], batch_size=3)
    for p, loss in zip(problems, got):
        head = [tok.eos_token_id, *tok(p.prompt, add_special_tokens=False)["input_ids"]]
        tail = [*tok(p.answer, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        ids = torch.tensor([head + tail])
        labels = torch.tensor([[-100] * len(head) + tail])
        with torch.no_grad():
            want = model(input_ids=ids, labels=labels).loss.item()
        assert loss == pytest.approx(want, rel=1e-5)
    assert len(set(got)) == len(got)  # different problems, different losses: not a constant


def test_real_test_sets_through_a_from_scratch_model(tmp_path, monkeypatch):
    pytest.importorskip("mathematics_dataset", reason="the dm-math extra is not installed")
    from modelsurgeon.progressive.init import InitModel, build_init

    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path / "cache"))
    model = build_init(
        InitModel.model_validate(
            {
                "family": "llama",
                "tokenizer": "ascii",
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "max_position_embeddings": 256,
            }
        ),
        tmp_path / "model",
        tmp_path,
    )
    spec = EvalSpec.model_validate(
        {"arith": None, "dm_math": {"modules": ["arithmetic__add_sub_multiple"], "n_per_module": 2}}
    )
    out = evals.evaluate(model, spec, None, tmp_path)
    tests = out["tests"]["dm_math"]
    assert set(tests) == {"interpolation", "extrapolation"} and all(t["n"] == 2 for t in tests.values())
    assert set(tests["extrapolation"]["by_module"]) == {"arithmetic__add_sub_multiple_longer"}
    rows = [json.loads(x) for x in (tmp_path / evals.PROBLEMS_FILE).read_text().splitlines()]
    assert len(rows) == 4 and all(r["length"] >= 2 for r in rows)

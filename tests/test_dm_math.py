"""`dm-math:` sources: DeepMind's mathematics generator seeded, cached, split, checked (needs the package)."""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import sympy
import torch

from modelsurgeon.data import DataSpec, dm_math, parse_data_spec
from modelsurgeon.data.chartok import ASCII_CHARS, ascii_tokenizer
from modelsurgeon.data.dm_math import (
    EXTRAPOLATION,
    Problem,
    chain_length,
    generate,
    is_test_question,
    test_sets,
)
from modelsurgeon.data.sources import SourceStream
from modelsurgeon.data.spec import dm_math_options
from modelsurgeon.errors import DataError
from modelsurgeon.progressive.init import load_tokenizer

EXPRESSIONS = ["arithmetic__add_sub_multiple", "arithmetic__mul_div_multiple", "arithmetic__mixed"]
ARITHMETIC = [
    "arithmetic__add_or_sub",
    "arithmetic__add_or_sub_in_base",
    "arithmetic__div",
    "arithmetic__mul",
    "arithmetic__nearest_integer_root",
    "arithmetic__simplify_surd",
    *EXPRESSIONS,
]
TEMPLATES = ("What is the value of ", "What is ", "Evaluate ", "Calculate ")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path))
    return tmp_path / "dm-math"


def expression(question: str) -> str:
    """The arithmetic expression of an expression module's question (templates: '{op}', 'What is {op}?', ...)."""
    for head in TEMPLATES:
        if question.startswith(head):
            return question[len(head) : -1]
    return question


def test_same_seed_same_problems_other_seeds_and_splits_differ(tmp_path):
    state = random.getstate(), np.random.get_state()[1].copy()
    first = generate("arithmetic__mixed", "train", 60, seed=0, cache_dir=tmp_path / "a")
    again = generate("arithmetic__mixed", "train", 60, seed=0, cache_dir=tmp_path / "b")  # generated anew
    assert first == again and len(first) == 60
    assert (random.getstate(), list(np.random.get_state()[1])) == (state[0], list(state[1]))  # caller's state kept
    other = generate("arithmetic__mixed", "train", 60, seed=1, cache_dir=tmp_path / "a")
    hard = generate("arithmetic__mixed", "train-hard", 60, seed=0, cache_dir=tmp_path / "a")
    assert len({p.question for p in first} & {p.question for p in other}) < 10
    assert [p.question for p in first] != [p.question for p in hard]
    assert {(p.module, p.split) for p in first + hard} == {
        ("arithmetic__mixed", "train"),
        ("arithmetic__mixed", "train-hard"),
    }


def test_generation_does_not_depend_on_the_process(tmp_path):
    code = (
        "import json, sys; from modelsurgeon.data.dm_math import generate; "
        "print(json.dumps([p.question + '=' + p.answer for p in generate('arithmetic__mixed', 'train-medium', "
        f"40, 7, cache_dir=__import__('pathlib').Path({str(tmp_path / 'sub')!r}))]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    here = generate("arithmetic__mixed", "train-medium", 40, 7, cache_dir=tmp_path / "here")
    assert json.loads(out) == [p.question + "=" + p.answer for p in here]


def test_cache_serves_prefixes_and_regenerates_longer_or_broken_files(cache, monkeypatch):
    fresh = generate("arithmetic__add_sub_multiple", "train-easy", 50, seed=2)
    files = list(cache.rglob("*.jsonl"))
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == 50

    def no_generation(*args):
        raise AssertionError("generated although cached")

    with monkeypatch.context() as m:
        m.setattr(dm_math, "_draw", no_generation)
        assert generate("arithmetic__add_sub_multiple", "train-easy", 50, seed=2) == fresh
        assert generate("arithmetic__add_sub_multiple", "train-easy", 20, seed=2) == fresh[:20]
    longer = generate("arithmetic__add_sub_multiple", "train-easy", 80, seed=2)
    assert longer[:50] == fresh and len(files[0].read_text().splitlines()) == 80
    generate("arithmetic__add_sub_multiple", "train-easy", 10, seed=2)
    assert len(files[0].read_text().splitlines()) == 80  # a shorter draw does not shrink the cache
    files[0].write_text("not json\n" * 90)
    assert generate("arithmetic__add_sub_multiple", "train-easy", 80, seed=2) == longer
    assert not list(cache.rglob("*.tmp-*"))


def test_test_sets_hold_both_sets_with_their_modules(cache):
    sets = test_sets(EXPRESSIONS, n_per_module=12, seed=0)
    assert set(sets) == {"interpolation", "extrapolation"}
    inter, extra = sets["interpolation"], sets["extrapolation"]
    assert [p.module for p in inter] == [m for m in EXPRESSIONS for _ in range(12)]
    assert [p.module for p in extra] == [EXTRAPOLATION[m] for m in EXPRESSIONS for _ in range(12)]
    assert {p.split for p in inter} == {"interpolate"} and {p.split for p in extra} == {"extrapolate"}
    assert len({p.question for p in inter + extra}) == 72  # each question once
    assert test_sets(EXPRESSIONS, n_per_module=12, seed=0) == sets
    assert test_sets(EXPRESSIONS, n_per_module=12, seed=1)["interpolation"] != inter


def test_extrapolation_chains_are_longer_than_any_training_chain(cache):
    for module in EXPRESSIONS:
        train = generate(module, "train", 200, seed=0) + generate(module, "train-hard", 200, seed=0)
        extra = test_sets([module], n_per_module=30, seed=0)["extrapolation"]
        assert max(map(chain_length, train)) == 7 and {chain_length(p) for p in extra} == {10, 11, 12}


def test_chain_length_counts_the_operands():
    for p in (
        generate("arithmetic__mixed", "train-hard", 100, seed=3)
        + test_sets(["arithmetic__mixed"], 20, 3)["extrapolation"]
    ):
        leaves = [n for n in ast.walk(ast.parse(expression(p.question))) if isinstance(n, ast.Constant)]
        assert chain_length(p) == len(leaves)
    assert chain_length(Problem("In base 9, what is -20 + 278?", "257", "arithmetic__add_or_sub_in_base", "train")) == 2
    assert chain_length(Problem("Calculate 0.3 + -2.", "-1.7", "arithmetic__add_or_sub", "train")) == 2


def test_answers_are_the_generators_and_right(cache):
    problems = [p for m in EXPRESSIONS for p in generate(m, "train", 100, seed=5)]
    sets = test_sets(EXPRESSIONS, n_per_module=20, seed=5)
    for p in problems + sets["interpolation"] + sets["extrapolation"]:
        assert sympy.sympify(expression(p.question)) == sympy.Rational(p.answer), p
        assert "\n" not in p.question and not {";", "\n"} & set(p.answer)
        assert p.text == p.question + "\n" + p.answer and p.prompt == p.question + "\n"


def test_train_and_test_never_share_a_question(cache):
    module = "arithmetic__add_sub_multiple"
    train = [p for split in ("train", "train-easy") for seed in (0, 1) for p in generate(module, split, 1000, seed)]
    held = test_sets([module], n_per_module=200, seed=0)
    test_questions = {p.question for p in held["interpolation"] + held["extrapolation"]}
    assert not {p.question for p in train} & test_questions
    assert not any(map(is_test_question, (p.question for p in train)))
    assert all(map(is_test_question, test_questions))  # so no train draw of any seed can hold one


@pytest.mark.parametrize("module", ARITHMETIC)
def test_every_arithmetic_module_works_in_every_split(module, tmp_path):
    for split in ("train-easy", "train-medium", "train-hard", "interpolate"):
        assert len(generate(module, split, 3, 0, cache_dir=tmp_path)) == 3
    if module in EXTRAPOLATION:
        assert len(generate(EXTRAPOLATION[module], "extrapolate", 3, 0, cache_dir=tmp_path)) == 3


@pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2, reason="fails only under numpy 2")
def test_a_module_broken_by_numpy_2_is_named(tmp_path):
    with pytest.raises(DataError, match="polynomials__expand: the package's generator failed") as err:
        generate("polynomials__expand", "train-easy", 3, 0, cache_dir=tmp_path)
    assert "arithmetic" in err.value.hint


def test_missing_package_says_how_to_install(monkeypatch):
    dm_math._package.cache_clear()
    dm_math._modules.cache_clear()
    monkeypatch.setitem(sys.modules, "mathematics_dataset", None)
    try:
        with pytest.raises(DataError, match="mathematics-dataset") as err:
            parse_data_spec("dm-math:arithmetic__mixed")
        assert "pip install mathematics-dataset six absl-py" in err.value.hint
    finally:
        dm_math._package.cache_clear()
        dm_math._modules.cache_clear()


def test_spec_forms():
    assert dm_math_options(parse_data_spec("dm-math:arithmetic__mixed")) == {
        "module": "arithmetic__mixed",
        "split": "train",
        "n": 20000,
        "seed": 0,
    }
    spec = parse_data_spec("dm-math:arithmetic__add_sub_multiple:train-hard:n=300,seed=4*2")
    assert spec == DataSpec("dm-math:arithmetic__add_sub_multiple:train-hard:n=300,seed=4", 2.0)
    assert spec.kind == "dm-math"
    assert dm_math_options(spec) == {
        "module": "arithmetic__add_sub_multiple",
        "split": "train-hard",
        "n": 300,
        "seed": 4,
    }
    assert dm_math_options(parse_data_spec("dm-math:arithmetic__mul:n=5"))["split"] == "train"


@pytest.mark.parametrize(
    ("text", "expect", "hint"),
    [
        ("dm-math:", "expected dm-math:<module>", "e.g."),
        ("dm-math:arithmetic__mixed:n=5:train-easy", "expected dm-math:<module>", "e.g."),
        ("dm-math:arithmetic__mixd", "no module 'arithmetic__mixd'", "arithmetic__mixed"),
        ("dm-math:arithmetic__mixed:train-hrad", "'train-hrad' is not a training split", "train-easy"),
        ("dm-math:arithmetic__mixed:interpolate", "not a training split", "evaluation"),
        ("dm-math:arithmetic__mixed:k=3", "unknown option 'k=3'", "n and seed"),
        ("dm-math:arithmetic__mixed:n=x", "n='x' is not an integer", "e.g."),
        ("dm-math:arithmetic__mixed:n=0", "need at least 1", "n="),
    ],
)
def test_spec_errors_name_the_spec(text, expect, hint):
    with pytest.raises(DataError, match=expect) as err:
        parse_data_spec(text)
    assert hint in err.value.hint


def test_extrapolate_split_error_points_to_the_counterpart(tmp_path):
    with pytest.raises(DataError, match="no module 'arithmetic__mixed' in split 'extrapolate'") as err:
        generate("arithmetic__mixed", "extrapolate", 3, 0, cache_dir=tmp_path)
    assert "arithmetic__mixed_longer" in err.value.hint
    with pytest.raises(DataError, match="no extrapolation module for arithmetic__add_or_sub_in_base"):
        test_sets(["arithmetic__mixed", "arithmetic__add_or_sub_in_base"], 3, 0, cache_dir=tmp_path)


def test_source_stream_yields_the_generators_text(cache):
    spec = parse_data_spec("dm-math:arithmetic__add_sub_multiple:train-easy:n=30,seed=1")
    stream = SourceStream(spec)
    docs = list(stream)
    assert docs == [p.text for p in generate("arithmetic__add_sub_multiple", "train-easy", 30, 1)]
    assert stream.rules == ["dm-math question + newline + answer"]


def test_ascii_tokenizer_is_character_level_over_every_generated_character():
    tok = load_tokenizer("ascii", base=None)
    assert len(tok) == 100 and len(ascii_tokenizer()) == 100
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tok(ASCII_CHARS, add_special_tokens=False)["input_ids"]
    assert ids == list(range(4, 100)) and tok.decode(ids) == ASCII_CHARS
    assert tok("a\tb", add_special_tokens=False)["input_ids"] == [
        tok.convert_tokens_to_ids("a"),
        3,
        tok.convert_tokens_to_ids("b"),
    ]


class Oracle:
    """generate() replies with each prompt's true answer (wrong for questions in `wrong`), then newline or EOS."""

    def __init__(self, tok, answers: dict[str, str], wrong=(), endless=()):
        self.tok, self.answers, self.wrong, self.endless = tok, answers, set(wrong), set(endless)

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        rows = []
        for i, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
            question = self.tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)[:-1]
            answer = self.answers[question] + ("1" if question in self.wrong else "")
            tail = "7" if question in self.endless else "\nWhat" if i % 2 else "</s>"
            new = self.tok(answer + tail, add_special_tokens=False)["input_ids"][:max_new_tokens]
            rows.append(ids + new + [self.tok.pad_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)


def test_exact_match_scores_right_and_wrong_answers(cache):
    tok = ascii_tokenizer()
    problems = test_sets(["arithmetic__mixed"], n_per_module=9, seed=0)["extrapolation"]
    answers = {p.question: p.answer for p in problems}
    assert dm_math.exact_match(Oracle(tok, answers), tok, problems, batch_size=4) == [True] * 9
    wrong, endless = problems[1].question, problems[4].question
    got = dm_math.exact_match(Oracle(tok, answers, [wrong], [endless]), tok, problems, batch_size=4)
    assert got == [i not in (1, 4) for i in range(9)]


def test_packed_dm_math_text_has_no_unknown_characters(cache):
    from modelsurgeon.data import build_blocks

    tok = ascii_tokenizer()
    spec = parse_data_spec("dm-math:arithmetic__mixed:n=200")
    data = build_blocks([spec], tok, seq_len=64, seed=0)
    ids = torch.cat([data.train.flatten(), data.eval.flatten()])
    assert tok.unk_token_id not in ids and (ids == tok.convert_tokens_to_ids("\n")).sum() > 100
    assert data.stats["sources"][0]["text"] == ["dm-math question + newline + answer"]

"""The data layer: --data specs, loading both hub schemas from local files, packing with EOS,
whole-document eval hold-out, weighted mixing, clear errors, and synthetic:arith."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from modelsurgeon import errors
from modelsurgeon.data import DataSpec, build_blocks, parse_data_spec
from modelsurgeon.data.arith import (
    CHARSET,
    MAX_VALUE,
    ArithProblem,
    arith_tokenizer,
    eval_set,
    exact_match_by_k,
    generate,
    greedy_replies,
)
from modelsurgeon.data.records import resolve_rule
from modelsurgeon.data.spec import arith_options, hf_parts
from modelsurgeon.errors import DataError
from modelsurgeon.tiny import tiny_config, tiny_tokenizer

FIXTURES = Path(__file__).parent / "data"
MATHS_COLLEGE = FIXTURES / "maths_college_sample.jsonl"
OPEN_WEB_MATH = FIXTURES / "open_web_math_sample.parquet"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def spec(path) -> DataSpec:
    return parse_data_spec(str(path))


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [tok.eos_token_id]


def pieces(blocks: torch.Tensor, eos: int) -> list[list[int]]:
    """The token stream of `blocks` cut after each EOS; the last piece may be a cut document."""
    out, cur = [], []
    for t in blocks.flatten().tolist():
        cur.append(t)
        if t == eos:
            out, cur = out + [cur], []
    return out + [cur] if cur else out


def owners(blocks: torch.Tensor, expected: list[list[int]], eos: int) -> tuple[list[int], int]:
    """Index into `expected` of each whole document in `blocks`, and the length of the final cut
    piece (a prefix of some document); fails on any piece that is neither."""
    found, cut = [], 0
    for piece in pieces(blocks, eos):
        if piece[-1] != eos:
            assert any(doc[: len(piece)] == piece for doc in expected), f"no document starts with {piece[:12]}"
            cut = len(piece)
            continue
        hits = [i for i, doc in enumerate(expected) if doc == piece]
        assert hits, f"a packed piece is no expected document: {piece[:12]}..."
        found.append(hits[0])
    return found, cut


def check_packing(packed, expected: list[list[int]], eos: int) -> None:
    """Blocks hold whole documents each ending in EOS, eval and train share no document, and the
    documents missing are no more than the dropped final partial blocks can hold."""
    (train, train_cut), (held, held_cut) = owners(packed.train, expected, eos), owners(packed.eval, expected, eos)
    assert packed.train.shape[1] == packed.eval.shape[1] == packed.seq_len
    assert len(packed.eval) >= 1 and set(train).isdisjoint(held)
    assert len(train) == len(set(train)) and len(held) == len(set(held))  # each document once
    missing = set(range(len(expected))) - set(train) - set(held)
    assert sum(len(expected[i]) for i in missing) <= packed.stats["total"]["dropped_tokens"] + train_cut + held_cut


# --- specs -------------------------------------------------------------------------------------


def test_spec_forms():
    assert parse_data_spec(f"{MATHS_COLLEGE}*0.3") == DataSpec(str(MATHS_COLLEGE), 0.3)
    owm = parse_data_spec("hf:open-web-math/open-web-math*2")
    assert owm.weight == 2 and hf_parts(owm) == ("open-web-math/open-web-math", None, "train")
    assert hf_parts(parse_data_spec("hf:org/name:cfg@validation")) == ("org/name", "cfg", "validation")
    assert arith_options(parse_data_spec("synthetic:arith:n=500,max_k=6")) == {
        "n": 500,
        "min_k": 1,
        "max_k": 6,
        "seed": 0,
    }


@pytest.mark.parametrize(
    "text, expect",
    [
        ("{fixture}*abc", "weight 'abc'"),
        ("{fixture}*-1", "weight '-1'"),
        ("ftp://host/x.jsonl", "unknown scheme 'ftp'"),
        ("no/such/file.jsonl", "no such file"),
        ("{fixture_dir}/../test_data.py", "unsupported file type '.py'"),
        ("synthetic:poem", "unknown synthetic generator 'poem'"),
        ("synthetic:arith:n=5,depth=3", "unknown option 'depth=3'"),
        ("synthetic:arith:n=five", "n='five' is not an integer"),
        ("synthetic:arith:min_k=3,max_k=2", "min_k=3, max_k=2"),
        ("hf:name@", "expected hf:<name>"),
    ],
)
def test_spec_errors_name_the_spec(text, expect):
    text = text.format(fixture=MATHS_COLLEGE, fixture_dir=FIXTURES)
    with pytest.raises(DataError) as err:
        parse_data_spec(text)
    assert expect in str(err.value) and text in str(err.value)
    assert err.value.hint


def test_data_error_has_its_own_exit_code():
    codes = [
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.SurgeonError) and cls is not errors.SurgeonError
    ]
    assert errors.DataError.exit_code not in (0, 1) and len(codes) == len(set(codes))


# --- the two hub schemas, from local files ------------------------------------------------------


def test_maths_college_shape_uses_the_question_answer_template(tok):
    records = [json.loads(line) for line in MATHS_COLLEGE.read_text().splitlines()]
    assert set(records[0]) == {"instruction", "output"}
    expected = [
        encode(tok, f"### Question\n{r['instruction'].strip()}\n\n### Answer\n{r['output'].strip()}") for r in records
    ]
    packed = build_blocks([spec(MATHS_COLLEGE)], tok, seq_len=64, eval_fraction=0.2)
    assert packed.stats["sources"][0]["text"] == ["template 'instruction' / 'output'"]
    check_packing(packed, expected, tok.eos_token_id)


def test_open_web_math_shape_uses_the_text_field(tok):
    records = pq.read_table(OPEN_WEB_MATH).to_pylist()
    assert set(records[0]) == {"url", "text", "date", "metadata"}
    packed = build_blocks([spec(OPEN_WEB_MATH)], tok, seq_len=64, eval_fraction=0.2)
    assert packed.stats["sources"][0]["text"] == ["field 'text'"]
    check_packing(packed, [encode(tok, r["text"]) for r in records], tok.eos_token_id)


def test_text_field_override_and_alpaca_input(tok):
    packed = build_blocks([spec(OPEN_WEB_MATH)], tok, seq_len=16, text_field="url")
    records = pq.read_table(OPEN_WEB_MATH).to_pylist()
    check_packing(packed, [encode(tok, r["url"]) for r in records], tok.eos_token_id)
    rule = resolve_rule(["instruction", "input", "output"], "x")
    assert (
        rule.apply({"instruction": "Add.", "input": "2 and 3", "output": "5"}, "x")
        == "### Question\nAdd.\n\n2 and 3\n\n### Answer\n5"
    )


DOCS = [f"Problem {i}: what is {i} + {i}?\nAnswer: {2 * i}." for i in range(12)]


def write_all_formats(root: Path) -> dict[str, Path]:
    rows = [{"text": d, "id": i} for i, d in enumerate(DOCS)]
    (root / "nested" / "b").mkdir(parents=True)
    paths = {s: root / f"docs{s}" for s in (".jsonl", ".csv", ".txt", ".parquet")}
    paths[".jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    with paths[".csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "id"])
        writer.writeheader()
        writer.writerows(rows)
    paths[".txt"].write_text("\n\n".join(DOCS) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), paths[".parquet"])
    paths["list.json"] = root / "list.json"
    paths["list.json"].write_text(json.dumps(rows, indent=1))
    paths["data.json"] = root / "data.json"
    paths["data.json"].write_text(json.dumps({"version": 1, "data": rows}, indent=1))
    # a directory: read recursively in sorted order, hidden and unsupported files skipped
    (root / "nested" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    pq.write_table(pa.Table.from_pylist(rows[5:]), root / "nested" / "b" / "c.parquet")
    (root / "nested" / ".hidden.jsonl").write_text(json.dumps({"text": "hidden"}) + "\n")
    (root / "nested" / "notes.md").write_text("not data")
    paths["dir"] = root / "nested"
    return paths


def test_every_format_packs_the_same_blocks(tok, tmp_path):
    paths = write_all_formats(tmp_path)
    ref = build_blocks([spec(paths[".jsonl"])], tok, seq_len=8, eval_fraction=0.2)
    check_packing(ref, [encode(tok, d) for d in DOCS], tok.eos_token_id)
    for name, path in paths.items():
        packed = build_blocks([spec(path)], tok, seq_len=8, eval_fraction=0.2)
        assert torch.equal(packed.train, ref.train) and torch.equal(packed.eval, ref.eval), name
        assert packed.stats["total"] == ref.stats["total"], name


def test_special_token_text_is_not_an_eos(tok, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i} ends with </s> written out"}) + "\n" for i in range(20)))
    packed = build_blocks([spec(path)], tok, seq_len=16)
    eos_count = int((packed.train == tok.eos_token_id).sum() + (packed.eval == tok.eos_token_id).sum())
    assert eos_count <= 20 and eos_count >= 20 - 2  # one per document; two may sit in dropped tails


# --- hold-out and mixing -----------------------------------------------------------------------


def test_holdout_is_deterministic_whole_documents_and_sized():
    tok = arith_tokenizer()
    problems = generate(400, 1, 4, seed=0)
    expected = [encode(tok, p.text) for p in problems]
    a = build_blocks([parse_data_spec("synthetic:arith:n=400")], tok, seq_len=32, seed=0)
    check_packing(a, expected, tok.eos_token_id)
    b = build_blocks([parse_data_spec("synthetic:arith:n=400")], tok, seq_len=32, seed=0)
    c = build_blocks([parse_data_spec("synthetic:arith:n=400")], tok, seq_len=32, seed=1)
    assert torch.equal(a.train, b.train) and torch.equal(a.eval, b.eval)
    assert not torch.equal(a.eval, c.eval)
    total = a.stats["total"]
    longest = max(map(len, expected))
    assert 0.05 * total["tokens"] <= total["eval_tokens"] < 0.05 * total["tokens"] + longest
    tiny_share = build_blocks([parse_data_spec("synthetic:arith:n=400")], tok, seq_len=32, eval_fraction=0.001)
    assert tiny_share.eval.shape[0] == 1  # at least one eval block, whatever the fraction


def test_a_fixed_eval_set_is_the_same_documents_whatever_the_budget():
    """With eval_tokens, a short and a long run of the same seed score the same eval documents,
    and neither trains on any of them; without it the eval set moves with the budget (which made
    eval losses of runs of different lengths incomparable, and let a later, shorter stage of a
    progressive run score documents an earlier stage had trained on)."""
    tok = arith_tokenizer()
    data = [parse_data_spec("synthetic:arith:n=3000")]
    short, long = (build_blocks(data, tok, seq_len=32, max_tokens=n, eval_tokens=1500, seed=3) for n in (4000, 20000))
    assert torch.equal(short.eval, long.eval) and 1500 <= short.eval.numel() < 1500 + 32 * 4
    eos = tok.eos_token_id
    held = {tuple(p) for p in pieces(short.eval, eos)}
    for packed in (short, long):
        trained = {tuple(p) for p in pieces(packed.train, eos)}
        assert not held & trained
    assert long.train.shape[0] > 4 * short.train.shape[0]
    moving = [build_blocks(data, tok, seq_len=32, max_tokens=n, seed=3).eval for n in (4000, 20000)]
    assert moving[0].shape != moving[1].shape or not torch.equal(*moving)


@pytest.fixture
def two_sources(tmp_path):
    for name in ("alpha", "beta"):
        lines = [json.dumps({"text": f"{name} {i} {name}"}) for i in range(300)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "alpha.jsonl", tmp_path / "beta.jsonl"


@pytest.mark.parametrize("weights, share", [((1, 1), 0.5), ((3, 1), 0.75), ((1, 3), 0.25)])
def test_weights_set_the_mix(tok, two_sources, weights, share):
    specs = [parse_data_spec(f"{path}*{w}") for path, w in zip(two_sources, weights)]
    packed = build_blocks(specs, tok, seq_len=32, max_tokens=2000)
    first_alpha = tok("alpha", add_special_tokens=False)["input_ids"][0]
    docs = [p for blocks in (packed.train, packed.eval) for p in pieces(blocks, tok.eos_token_id)]
    alpha = sum(p[0] == first_alpha for p in docs)
    stats = packed.stats["sources"]
    assert abs(alpha / len(docs) - share) < 0.08
    assert abs(stats[0]["docs"] / packed.stats["total"]["docs"] - share) < 0.08
    assert packed.stats["total"]["tokens"] == 2000


def test_without_budget_every_document_is_used(tok, two_sources):
    specs = [parse_data_spec(f"{two_sources[0]}*9"), parse_data_spec(str(two_sources[1]))]
    stats = build_blocks(specs, tok, seq_len=32).stats
    assert [s["docs"] for s in stats["sources"]] == [300, 300]


# --- errors --------------------------------------------------------------------------------------


def test_missing_text_field_lists_the_fields(tok, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"title": "Sums", "body": "1 + 1 = 2"}) + "\n")
    with pytest.raises(DataError) as err:
        build_blocks([spec(path)], tok, seq_len=8)
    assert str(path) in str(err.value) and "'title', 'body'" in str(err.value) and "--text-field" in err.value.hint
    with pytest.raises(DataError, match="no field 'answer'.*'title', 'body'"):
        build_blocks([spec(path)], tok, seq_len=8, text_field="answer")


@pytest.mark.parametrize("content", ["", '{"text": ""}\n{"text": "   "}\n{"text": null}\n'])
def test_empty_data_names_the_source(tok, tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=f"{re.escape(str(path))}: no documents"):
        build_blocks([spec(OPEN_WEB_MATH), spec(path)], tok, seq_len=8)


def test_bad_files_and_directories(tok, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path / 'bad.jsonl'))}: cannot be read as .jsonl"):
        build_blocks([spec(tmp_path / "bad.jsonl")], tok, seq_len=8)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="empty_dir: no data files"):
        build_blocks([spec(tmp_path / "empty_dir")], tok, seq_len=8)


def test_seq_len_above_max_positions(tok):
    with pytest.raises(DataError, match=r"--seq-len 256 is larger than the model's maximum positions \(128\)") as err:
        build_blocks([spec(OPEN_WEB_MATH)], tok, seq_len=256, max_positions=128)
    assert "128" in err.value.hint


def test_too_little_data_says_how_much(tok):
    with pytest.raises(DataError, match=r"tokens in 8 documents; .* need at least 20000") as err:
        build_blocks([spec(MATHS_COLLEGE)], tok, seq_len=10000)
    assert "--seq-len" in err.value.hint


def test_hub_unreachable_is_a_clear_error(tok, monkeypatch):
    import datasets
    import huggingface_hub.constants

    # Offline mode makes the hub unreachable at once (a real network failure retries for ~25 s).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    hub = parse_data_spec("hf:modelsurgeon-tests/not-a-dataset")
    with pytest.raises(
        DataError, match="could not reach the Hugging Face Hub.*modelsurgeon-tests/not-a-dataset"
    ) as err:
        build_blocks([hub], tok, seq_len=8, max_tokens=64)
    assert "HF_DATASETS_OFFLINE" in err.value.hint and "--data" in err.value.hint
    with pytest.raises(DataError, match="needs a token budget") as err:
        build_blocks([hub], tok, seq_len=8)
    assert "--max-tokens" in err.value.hint


def test_importing_the_package_stays_light():
    code = (
        "import sys, modelsurgeon.data, modelsurgeon.data.arith; "
        "print(sorted({'torch', 'datasets', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- synthetic:arith ------------------------------------------------------------------------------


def interpret(prompt: str) -> tuple[int, list[int]]:
    """An independent evaluator: run the assignments as Python, return the queried value and all values."""
    *assignments, query = prompt.split("; ")
    env: dict[str, int] = {}
    for line in assignments:
        exec(line, {}, env)  # noqa: S102 - our own generated "x=y+3" statements
    return env[query.removesuffix("=?")], list(env.values())


def test_arith_problems_are_right_bounded_and_deterministic():
    problems = generate(600, 1, 6, seed=3)
    assert problems == generate(600, 1, 6, seed=3) and problems != generate(600, 1, 6, seed=4)
    assert {p.k for p in problems} == set(range(1, 7))
    for p in problems:
        value, values = interpret(p.prompt)
        assert p.answer == str(value) and all(0 <= v <= MAX_VALUE for v in values)
        assert len(values) == p.k + 1 and set(p.text) <= set(CHARSET) and p.text == p.prompt + p.answer


def test_arith_eval_problems_are_never_train_problems():
    def structure(p):
        return re.sub("[a-z]", "", p.prompt)

    train = generate(5000, 1, 8, seed=0)
    held = eval_set([1, 2, 4, 8], per_k=50, seed=0)
    assert len(held) == 200 and len({p.prompt for p in held}) == 200
    assert {p.k for p in held} == {1, 2, 4, 8}
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert not {structure(p) for p in train} & {structure(p) for p in held}  # not even renamed
    assert all(interpret(p.prompt)[0] == int(p.answer) for p in held)


def test_arith_tokenizer_is_character_level():
    tok = arith_tokenizer()
    assert len(tok) == 4 + len(CHARSET)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    for p in generate(50, 1, 8, seed=0):
        ids = tok(p.text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(p.text) and tok.unk_token_id not in ids and tok.decode(ids) == p.text


class FakeModel:
    """generate() answers each left-padded prompt with the true answer, or answer + 1 for `wrong_ks`."""

    def __init__(self, tok, wrong_ks=()):
        self.tok, self.wrong_ks = tok, set(wrong_ks)

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = self.tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
            value, _ = interpret(prompt)
            k = prompt.count(";") - 1
            reply = str(value + (k in self.wrong_ks)) + ("; x=1" if k % 2 else "</s>9")
            new = self.tok(reply, add_special_tokens=False)["input_ids"][:max_new_tokens]
            rows.append(ids + new + [self.tok.pad_token_id] * (max_new_tokens - len(new)))
        return torch.tensor(rows)


def test_exact_match_scores_right_and_wrong_answers():
    tok = arith_tokenizer()
    problems = eval_set([1, 2, 3, 5], per_k=7, seed=0)
    assert exact_match_by_k(FakeModel(tok), tok, problems, batch_size=4) == {1: 1.0, 2: 1.0, 3: 1.0, 5: 1.0}
    assert exact_match_by_k(FakeModel(tok, wrong_ks={2, 5}), tok, problems, batch_size=4) == {
        1: 1.0,
        2: 0.0,
        3: 1.0,
        5: 0.0,
    }
    mixed = [ArithProblem(p.prompt, "0" if i % 2 else p.answer, p.k) for i, p in enumerate(eval_set([3], 8, seed=1))]
    assert exact_match_by_k(FakeModel(tok), tok, mixed, batch_size=3) == {3: 0.5}


def test_greedy_batches_match_one_by_one_on_a_real_model():
    from transformers import AutoModelForCausalLM

    tok = arith_tokenizer()
    model = AutoModelForCausalLM.from_config(tiny_config("llama", n_layers=2, vocab=len(tok)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # far from uniform logits, so padding mistakes change the argmax
    prompts = [p.prompt for p in eval_set([1, 3, 6], per_k=3, seed=0)]  # different lengths: padding
    batched = greedy_replies(model, tok, prompts)
    assert any(batched) and batched == [greedy_replies(model, tok, [p])[0] for p in prompts]

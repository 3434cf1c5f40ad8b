"""`dm-math:`: DeepMind's mathematics dataset (Saxton et al. 2019), generated offline, for training and eval.

The `mathematics-dataset` package generates every problem; this module only seeds it, keeps the
package's own question and answer strings (`str(problem.question)`, `str(problem.answer)`, with its
length limits), splits train from test, and caches what it generated. Install it with

    pip install mathematics-dataset six absl-py    (`--no-deps` on the first if pip would downgrade sympy)

Splits are the package's: `train-easy`, `train-medium`, `train-hard` (the thirds of the training
entropy range), `train` (the whole range, the package's `--train_split=False`), `interpolate`
(the test difficulty inside the training range) and `extrapolate` (the package's `test_extra()`
modules: longer chains, bigger numbers, more samples). A module's extrapolation counterpart:

| module                           | extrapolation module                         |
|----------------------------------|----------------------------------------------|
| arithmetic__add_or_sub           | arithmetic__add_or_sub_big                   |
| arithmetic__add_sub_multiple     | arithmetic__add_sub_multiple_longer          |
| arithmetic__div                  | arithmetic__div_big                          |
| arithmetic__mixed                | arithmetic__mixed_longer                     |
| arithmetic__mul                  | arithmetic__mul_big                          |
| arithmetic__mul_div_multiple     | arithmetic__mul_div_multiple_longer          |
| algebra__polynomial_roots        | algebra__polynomial_roots_big                |
| comparison__closest              | comparison__closest_more                     |
| comparison__kth_biggest          | comparison__kth_biggest_more                 |
| comparison__sort                 | comparison__sort_more                        |
| measurement__conversion          | measurement__conversion                      |
| numbers__place_value             | numbers__place_value_big                     |
| numbers__round_number            | numbers__round_number_big                    |
| probability__swr_p_level_set     | probability__swr_p_level_set_more_samples    |
| probability__swr_p_sequence      | probability__swr_p_sequence_more_samples     |

(`arithmetic__add_or_sub_in_base`, `__nearest_integer_root` and `__simplify_surd` have none.)
The `_longer` modules draw 9 to 11 operations where training draws at most 6 (10-12 operands
against 4-7: see `chain_length`).

Under numpy 2 every arithmetic module works, in every split (checked: 20 draws of each, and the
tests). Others call numpy APIs that numpy 2 removed (`np.object`, `ndarray.itemset`) and fail,
some only on some draws: in 20 draws of each train-easy module, 19 of 56 failed (most `_composed`
ones, polynomials__add/coefficient_named/collect/compose/expand, calculus__differentiate). Such a
failure is a DataError naming the module.

Determinism: each (module, split, seed) is its own stream; generation seeds the package's two
random sources (Python's `random` and numpy's global generator) from a hash of that key and
restores both afterwards, so the caller's random state is untouched.

Train and test never share a question, whatever the seeds: a stable hash of the question text
reserves one question in TEST_SHARE for the test splits (`interpolate`, `extrapolate`). Train
splits never return reserved questions, test splits return nothing else, and a test set holds
each question once. The package's distributions are unchanged, only thinned.

Training text is `question + "\\n" + answer` (packing appends EOS); evaluation prompts with
`question + "\\n"` and cuts the greedy reply at the first newline or EOS.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

from modelsurgeon.errors import DataError

TRAIN_SPLITS = ("train", "train-easy", "train-medium", "train-hard")
TEST_SPLITS = ("interpolate", "extrapolate")
SPLITS = TRAIN_SPLITS + TEST_SPLITS
TEST_SHARE = 10  # one question in TEST_SHARE is reserved for the test splits
CACHE_VERSION = 1  # bump when the generation procedure changes, so old caches are not read
INSTALL = (
    "pip install mathematics-dataset six absl-py (add --no-deps for mathematics-dataset "
    "if pip would downgrade sympy; or pip install 'modelsurgeon[dm-math]')"
)
EXTRAPOLATION = {
    "arithmetic__add_or_sub": "arithmetic__add_or_sub_big",
    "arithmetic__add_sub_multiple": "arithmetic__add_sub_multiple_longer",
    "arithmetic__div": "arithmetic__div_big",
    "arithmetic__mixed": "arithmetic__mixed_longer",
    "arithmetic__mul": "arithmetic__mul_big",
    "arithmetic__mul_div_multiple": "arithmetic__mul_div_multiple_longer",
    "algebra__polynomial_roots": "algebra__polynomial_roots_big",
    "comparison__closest": "comparison__closest_more",
    "comparison__kth_biggest": "comparison__kth_biggest_more",
    "comparison__sort": "comparison__sort_more",
    "measurement__conversion": "measurement__conversion",
    "numbers__place_value": "numbers__place_value_big",
    "numbers__round_number": "numbers__round_number_big",
    "probability__swr_p_level_set": "probability__swr_p_level_set_more_samples",
    "probability__swr_p_sequence": "probability__swr_p_sequence_more_samples",
}
_NUMERAL = re.compile(r"\d+(?:\.\d+)?")
_BASE = re.compile(r"\bbase \d+")


@dataclass(frozen=True)
class Problem:
    question: str  # the package's question, e.g. "What is the value of 11 - 0 - (18 + -10)?"
    answer: str  # the package's answer, e.g. "3"
    module: str  # the package's module that generated it, e.g. "arithmetic__add_sub_multiple_longer"
    split: str  # one of SPLITS

    @property
    def prompt(self) -> str:
        """What the model sees at evaluation; its greedy reply up to a newline or EOS is the answer."""
        return self.question + "\n"

    @property
    def text(self) -> str:
        """The training document; packing appends EOS after it."""
        return self.prompt + self.answer


def chain_length(problem: Problem) -> int:
    """The number of operands: the numerals in the question (a number base is not one).

    For the expression modules (add_sub_multiple, mul_div_multiple, mixed and their `_longer`
    forms) this is the package's expression length (its count of binary operations) plus one.
    """
    return len(_NUMERAL.findall(_BASE.sub("", problem.question)))


def exact_match(model, tokenizer, problems: list[Problem], batch_size: int = 32) -> list[bool]:
    """Whether the model's greedy reply to each prompt, cut at a newline or EOS, is the package's answer.

    Decoding stops after one token more than the longest answer's, so a right answer that is not
    followed by its end is cut and counted wrong.
    """
    import torch

    # lazy: import cycle (modelsurgeon.data.arith imports modelsurgeon.data.dm_math)
    from modelsurgeon.data.arith import greedy_replies

    longest = max((len(tokenizer(p.answer, add_special_tokens=False)["input_ids"]) for p in problems), default=0)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()  # dropout off: greedy decoding must be deterministic
    right: list[bool] = []
    try:
        with torch.no_grad():
            for start in range(0, len(problems), batch_size):
                batch = problems[start : start + batch_size]
                replies = greedy_replies(model, tokenizer, [p.prompt for p in batch], longest + 1)
                right.extend(reply == p.answer for p, reply in zip(batch, replies))
    finally:
        if was_training:
            model.train()
    return right


def is_test_question(question: str) -> bool:
    """Whether the question is reserved for the test splits (stable across runs and machines)."""
    return zlib.crc32(question.encode()) % TEST_SHARE == 0


def generate(module: str, split: str, n: int, seed: int, cache_dir: Path | None = None) -> list[Problem]:
    """`n` problems of the package's `module` in `split`; same arguments, same problems.

    Train splits may repeat a question (as the package's own draws do); test splits never do.
    Results are cached under `cache_dir` (default: `cache_root()`); a cached longer draw of the
    same stream serves any shorter one, since the first n problems of a stream never change.

    Raises:
        DataError: the package is missing, the split or module is unknown, n < 1, or the module
            fails in this environment.
    """
    check_module(module, split)
    if n < 1:
        raise DataError(f"dm-math:{module}: n={n} problems; need at least 1", hint="e.g. n=20000")
    path = _cache_file(cache_dir or cache_root(), module, split, seed)
    cached = _read_cache(path, n)
    if cached is not None:
        return [Problem(q, a, module, split) for q, a in cached]
    pairs = _draw(module, split, n, seed)
    _write_cache(path, pairs)
    return [Problem(q, a, module, split) for q, a in pairs]


def test_sets(
    modules: list[str], n_per_module: int, seed: int, cache_dir: Path | None = None
) -> dict[str, list[Problem]]:
    """{"interpolation": [...], "extrapolation": [...]}: `n_per_module` problems of each module in
    each, the extrapolation ones from the module's EXTRAPOLATION counterpart (`Problem.module`
    names the counterpart). None of them is ever a training question (see the module docstring).

    Raises:
        DataError: a module has no extrapolation counterpart, or anything `generate` raises.
    """
    missing = [m for m in modules if m not in EXTRAPOLATION]
    if missing:
        raise DataError(
            f"dm-math test sets: no extrapolation module for {', '.join(missing)}",
            hint=f"use modules that have one: {', '.join(EXTRAPOLATION)}",
        )
    return {
        "interpolation": [p for m in modules for p in generate(m, "interpolate", n_per_module, seed, cache_dir)],
        "extrapolation": [
            p for m in modules for p in generate(EXTRAPOLATION[m], "extrapolate", n_per_module, seed, cache_dir)
        ],
    }


test_sets.__test__ = False  # pytest would collect it from test modules that import it by name


def check_module(module: str, split: str) -> None:
    """Raise DataError unless the package is installed and has `module` in `split`."""
    if split not in SPLITS:
        raise DataError(f"dm-math:{module}: unknown split {split!r}", hint=f"use one of {', '.join(SPLITS)}")
    names = _modules(split)
    if module in names:
        return
    if split == "extrapolate" and module in EXTRAPOLATION:
        hint = f"the extrapolation form of {module} is {EXTRAPOLATION[module]}"
    else:
        close = [m for m in names if m.split("__")[0] == module.split("__")[0]] or list(names)
        hint = f"modules of {split} include {', '.join(close)}"
    raise DataError(f"dm-math: the package has no module {module!r} in split {split!r}", hint=hint)


def cache_root() -> Path:
    """$SURGEON_CACHE/dm-math, else $XDG_CACHE_HOME (or ~/.cache)/modelsurgeon/dm-math."""
    if os.environ.get("SURGEON_CACHE"):
        return Path(os.environ["SURGEON_CACHE"]).expanduser() / "dm-math"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "modelsurgeon" / "dm-math"


# --- the package ------------------------------------------------------------------------------------


@cache
def _package():
    """The package's `modules` and `generate_settings`, importable with current sympy."""
    try:
        _shim_sympy()
        from mathematics_dataset import generate_settings
        from mathematics_dataset.modules import modules
    except ImportError as exc:
        raise DataError(
            f"dm-math needs the mathematics-dataset package, which cannot be imported ({exc})", hint=INSTALL
        ) from None
    return modules, generate_settings


def _shim_sympy() -> None:
    """The package imports `base_solution_linear` from `sympy.solvers.diophantine`, which sympy >= 1.6
    moved into `sympy.solvers.diophantine.diophantine`; put it back where the package looks."""
    package = importlib.import_module("sympy.solvers.diophantine")  # the package, not the function
    if not hasattr(package, "base_solution_linear"):
        from sympy.solvers.diophantine.diophantine import base_solution_linear

        sys.modules["sympy.solvers.diophantine"].base_solution_linear = base_solution_linear


@cache
def _modules(split: str) -> dict:
    """{full module name: problem generator} of the split, as the package's generate.py builds it."""
    modules, _ = _package()
    if split == "interpolate":
        tree = modules.test()
    elif split == "extrapolate":
        tree = modules.test_extra()
    else:
        level, levels = {"train": (0, 1), "train-easy": (0, 3), "train-medium": (1, 3), "train-hard": (2, 3)}[split]
        tree = modules.train(_entropy_fn(level, levels))
    return dict(sorted(_flatten(tree)))


def _entropy_fn(level: int, levels: int):
    """The package's `generate._make_entropy_fn`: the level-th of `levels` equal parts of an entropy range."""

    def narrow(range_: tuple[float, float]) -> tuple[float, float]:
        low, high = range_
        return low + level / levels * (high - low), low + (level + 1) / levels * (high - low)

    return narrow


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        name = f"{prefix}__{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flatten(value, name)
        else:
            yield name, value


@contextmanager
def _seeded(key: str):
    """Seed Python's and numpy's global generators (the package draws from both) from `key`, then restore them."""
    import random

    import numpy as np

    digest = hashlib.sha256(key.encode()).digest()
    saved = random.getstate(), np.random.get_state()
    random.seed(int.from_bytes(digest[:8], "little"))
    np.random.seed(int.from_bytes(digest[8:12], "little"))
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def _draw(module: str, split: str, n: int, seed: int) -> list[tuple[str, str]]:
    """The first n (question, answer) pairs of the (module, split, seed) stream."""
    _, settings = _package()
    make = _modules(split)[module]
    for_test = split in TEST_SPLITS
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    with _seeded(f"dm-math:{module}:{split}:{seed}"):
        for _ in range(n * TEST_SHARE * 50):  # a bound, in case the module has few distinct questions
            question, answer = _sample(make, module, settings)
            if is_test_question(question) != for_test or (for_test and question in seen):
                continue
            seen.add(question)
            pairs.append((question, answer))
            if len(pairs) == n:
                return pairs
    raise DataError(
        f"dm-math:{module}: found only {len(pairs)} distinct {split} problems of {n}", hint="ask for fewer problems"
    )


def _sample(make, module: str, settings) -> tuple[str, str]:
    """One problem within the package's length limits (its `generate.sample_from_module`)."""
    import numpy as np

    while True:
        try:
            problem = make()
        except Exception as exc:  # noqa: BLE001 - third-party generator code; any failure is the module's
            raise DataError(
                f"dm-math:{module}: the package's generator failed ({type(exc).__name__}: {exc})",
                hint=f"this module does not work with numpy {np.__version__} here; the arithmetic__* modules do",
            ) from None
        question, answer = str(problem.question), str(problem.answer)
        if len(question) <= settings.MAX_QUESTION_LENGTH and len(answer) <= settings.MAX_ANSWER_LENGTH:
            return question, answer


# --- cache -----------------------------------------------------------------------------------------


def _cache_file(root: Path, module: str, split: str, seed: int) -> Path:
    try:
        version = metadata.version("mathematics-dataset")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return root / f"v{CACHE_VERSION}-{version}" / f"{module}.{split}.seed{seed}.jsonl"


def _read_cache(path: Path, n: int) -> list[tuple[str, str]] | None:
    """The first n pairs, or None if the file is missing, shorter, or unreadable (it is regenerated)."""
    try:
        with path.open(encoding="utf-8") as f:
            pairs = [tuple(json.loads(line)) for _, line in zip(range(n), f)]
    except (OSError, ValueError):
        return None
    return pairs if len(pairs) == n and all(len(p) == 2 for p in pairs) else None


def _write_cache(path: Path, pairs: list[tuple[str, str]]) -> None:
    """Atomically replace the file, unless it already holds a longer draw of the same stream."""
    if _read_cache(path, len(pairs) + 1) is not None:
        return
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only or full cache only costs regeneration next time

"""Layer maps of every depth op and the equivalence class each implies (pure, no tensors)."""

from __future__ import annotations

import pytest

from modelsurgeon.errors import PlanError
from modelsurgeon.ops.compile import compile_plan
from modelsurgeon.plan import parse_plan
from modelsurgeon.plan.schema import Every, Middle, Range
from modelsurgeon.plan.selection import resolve_selection


def compiled(steps: str, n: int):
    return compile_plan(parse_plan(f"name: t\nsteps:\n{steps}").plan, n)


def triples(c):
    return [(e.source, round(e.scale, 6), e.new) for e in c.layer_map]


@pytest.mark.parametrize(
    "sel, n, want",
    [
        ("all", 3, [0, 1, 2]),
        ([0, -1], 5, [0, 4]),
        (Range(**{"from": 8, "to": 12}), 16, [8, 9, 10, 11]),
        (Range(**{"from": -4, "to": 16}), 16, [12, 13, 14, 15]),
        (Every(every=4), 16, [3, 7, 11, 15]),
        (Middle(middle=4), 16, [6, 7, 8, 9]),
        (Middle(middle=3), 30, [13, 14, 15]),
    ],
)
def test_selections(sel, n, want):
    assert resolve_selection(sel, n) == want


@pytest.mark.parametrize(
    "sel, n, msg",
    [
        ([5], 4, "out of range"),
        ([1, -3], 4, "more than once"),
        (Range(**{"from": 3, "to": 3}), 4, "empty"),
        (Every(every=5), 4, "empty"),
        (Middle(middle=5), 4, "more than"),
    ],
)
def test_bad_selections(sel, n, msg):
    with pytest.raises(ValueError, match=msg):
        resolve_selection(sel, n)


def test_interpolate_split_is_approx():
    c = compiled("  - op: interpolate\n    factor: 2\n    branch_scale: split\n", 3)
    assert triples(c) == [
        (0, 0.5, False),
        (0, 0.5, True),
        (1, 0.5, False),
        (1, 0.5, True),
        (2, 0.5, False),
        (2, 0.5, True),
    ]
    assert c.equivalence == "approx"


def test_interpolate_copies_without_scaling_are_not_equivalent():
    assert compiled("  - op: interpolate\n    factor: 3\n", 2).equivalence == "none"
    assert compiled("  - op: interpolate\n    factor: 2\n    branch_scale: sqrt\n", 2).equivalence == "none"


def test_llama_pro_32_to_40_exact():
    c = compiled("  - op: interpolate\n    factor: 2\n    layers: {every: 4}\n    new: zero\n", 32)
    assert len(c.layer_map) == 40 and c.equivalence == "exact"
    added = [j for j, e in enumerate(c.layer_map) if e.new]
    assert added == [4, 9, 14, 19, 24, 29, 34, 39]
    assert all(c.layer_map[j].scale == 0 and c.layer_map[j].source == c.layer_map[j - 1].source for j in added)


def test_solar_32_to_48():
    c = compiled('  - op: splice\n    trim: "25%"\n', 32)
    assert [e.source for e in c.layer_map] == list(range(24)) + list(range(8, 32))
    assert [e.new for e in c.layer_map].count(True) == 16 and c.equivalence == "none"


def test_stack4_and_midas():
    c = compiled("  - op: stack\n    factor: 4\n", 6)
    assert [e.source for e in c.layer_map] == list(range(6)) * 4
    c = compiled("  - op: stack\n    factor: 2\n    layers: {middle: 4}\n", 12)
    assert [e.source for e in c.layer_map] == [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7, 8, 9, 10, 11]


def test_explicit_map_new_flags_and_classes():
    c = compiled("  - op: layers\n    map: [{layer: 0, new: zero}, 0, {from: 1, to: 3}, 1]\n", 3)
    assert triples(c) == [(0, 0.0, True), (0, 1.0, False), (1, 1.0, False), (2, 1.0, False), (1, 1.0, True)]
    assert c.equivalence == "none"
    assert compiled("  - op: layers\n    map: [{layer: 0, new: zero}, 0, 1, 2]\n", 3).equivalence == "exact"
    assert compiled("  - op: layers\n    map: [1, 0]\n", 2).equivalence == "none"


def test_scales_multiply_across_steps_and_weakest_step_wins():
    c = compiled(
        "  - op: interpolate\n    factor: 2\n    branch_scale: split\n  - op: interpolate\n    factor: 2\n"
        "    branch_scale: split\n",
        2,
    )
    assert [e.scale for e in c.layer_map] == [0.25] * 8
    assert [s.equivalence for s in c.steps] == ["approx", "approx"] and c.equivalence == "approx"
    c = compiled("  - op: interpolate\n    factor: 2\n    new: zero\n  - op: drop\n    layers: [0]\n", 2)
    assert [s.equivalence for s in c.steps] == ["exact", "none"] and c.equivalence == "none"


def test_later_steps_see_earlier_results():
    c = compiled("  - op: interpolate\n    factor: 2\n  - op: drop\n    layers: {from: 4, to: 6}\n", 3)
    assert [e.source for e in c.layer_map] == [0, 0, 1, 1]
    with pytest.raises(PlanError, match=r"steps\[1\]\.layers: index 6 is out of range.*sees 6 layers"):
        compiled("  - op: interpolate\n    factor: 2\n  - op: drop\n    layers: [6]\n", 3)

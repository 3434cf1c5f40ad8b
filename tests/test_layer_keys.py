"""Scalar config keys that index layers follow the layer map: for every family, a reader that
ignores `layer_types` (transformers' own config class, given the grown config without the
list) derives the grown list from the scalars, or the grow warns that no value can; verify's
report fails a scalar that was not re-derived."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from modelsurgeon.arch.layer_keys import best_value, implied, layer_key_findings
from modelsurgeon.arch.registry import load_specs
from modelsurgeon.grow.engine import grow
from modelsurgeon.plan import parse_plan
from modelsurgeon.verify import verify_checkpoint

F, S = "full_attention", "sliding_attention"
PLANS = {  # on 4 layers
    "interpolate": "  - op: interpolate\n    factor: 2\n    new: zero\n",  # sources 0 0 1 1 2 2 3 3
    "stack": "  - op: stack\n    factor: 2\n    new: zero\n",  # sources 0 1 2 3 0 1 2 3
}
# Source configs whose scalar agrees with their list (the tiny defaults deliberately do not).
CONSISTENT = {
    "qwen2": dict(layer_types=[F, F, S, S], max_window_layers=2),
    "qwen3": dict(layer_types=[F, F, S, S], max_window_layers=2),
    "gemma2": dict(layer_types=[S, F, S, F]),
    "gemma3_text": dict(layer_types=[S, F, S, F], sliding_window_pattern=2),
}
# Which (family, plan) pairs no scalar value can express (warned); the others must be exact.
INEXPRESSIBLE = {("qwen2", "stack"), ("qwen3", "stack"), ("gemma2", "interpolate"), ("gemma3_text", "interpolate")}


def grown_config(tiny, tmp_path, family, plan):
    src = tiny(family, **CONSISTENT.get(family, {}))
    prep = grow(src, parse_plan(f"name: {plan}\nsteps:\n{PLANS[plan]}"), tmp_path / "out")
    return src, tmp_path / "out", json.loads((tmp_path / "out" / "config.json").read_text()), prep.warnings


def reader_without_list(tmp_path, config: dict):
    """What a reader that ignores layer_types derives: transformers' config class, given the
    config without the list (it then computes the list from the scalars, as older versions did)."""
    d = tmp_path / "no-list"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "layer_types"}))
    return AutoConfig.from_pretrained(d)


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_every_family_scalars_follow_the_layer_map(tiny, tmp_path, family, plan):
    src, _, config, warnings = grown_config(tiny, tmp_path, family, plan)
    source = json.loads((src / "config.json").read_text())
    derived = getattr(reader_without_list(tmp_path, config), "layer_types", None)
    key_warnings = [w for w in warnings if "layer_types" in w]
    if "layer_types" not in config:  # families without per-layer kinds: no layer-indexing scalar
        assert not load_specs()[family].layer_keys and key_warnings == []
        layers_key = load_specs()[family].num_layers_key
        unchanged = {k: v for k, v in source.items() if k != layers_key}
        assert {k: v for k, v in config.items() if k != layers_key} == unchanged
        return
    if (family, plan) in INEXPRESSIBLE:
        assert derived != config["layer_types"] and len(key_warnings) == 1
        assert "older transformers" in key_warnings[0]
    else:
        assert derived == config["layer_types"] and key_warnings == []


def test_qwen2_interpolate_updates_max_window_layers(tiny, tmp_path):
    """The issue's case: 4 layers, max_window_layers 2, every layer doubled -> 4 full layers, so 4."""
    _, _, config, _ = grown_config(tiny, tmp_path, "qwen2", "interpolate")
    assert config["layer_types"] == [F] * 4 + [S] * 4
    assert config["max_window_layers"] == 4 and config["use_sliding_window"] is True


def test_inexpressible_pattern_keeps_the_list_and_picks_the_best_scalar(tiny, tmp_path):
    _, _, config, warnings = grown_config(tiny, tmp_path, "qwen3", "stack")
    assert config["layer_types"] == [F, F, S, S] * 2  # the list stays authoritative
    marks = [t == S for t in config["layer_types"]]
    rule = load_specs()["qwen3"].layer_keys[0]
    right = sum(a == b for a, b in zip(implied(rule, config["max_window_layers"], 8), marks))
    assert right == max(sum(a == b for a, b in zip(implied(rule, v, 8), marks)) for v in range(9)) == 6
    assert "cannot be expressed by 'max_window_layers'" in warnings[0] and "6 of 8 layers" in warnings[0]


def test_disabled_sliding_window_remaps_the_latent_scalar(tiny, tmp_path):
    """use_sliding_window false: every layer is full, and max_window_layers keeps its meaning
    for a later switch-on (the remapped prefix), with no warning."""
    src = tiny("qwen2", layer_types=[F] * 4, use_sliding_window=False, max_window_layers=3)
    prep = grow(src, parse_plan(f"name: i\nsteps:\n{PLANS['interpolate']}"), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["max_window_layers"] == 6 and config["layer_types"] == [F] * 8
    assert not [w for w in prep.warnings if "max_window_layers" in w]


def test_gemma3_pattern_key_written_when_the_default_no_longer_fits(tiny, tmp_path):
    """Hub Gemma 3 configs may lack sliding_window_pattern (readers assume 6): when the grown list
    is another period, the key is written so those readers get it right."""
    src = tiny("gemma3_text", n_layers=6, layer_types=[S] * 5 + [F])
    assert "sliding_window_pattern" not in json.loads((src / "config.json").read_text())
    grow(src, parse_plan("name: s\nsteps:\n  - op: layers\n    map: [0, 1, 5, 0, 1, 5]\n"), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["sliding_window_pattern"] == 3
    assert reader_without_list(tmp_path, config).layer_types == config["layer_types"]


def test_best_value_ties_keep_the_old_value():
    rule = load_specs()["qwen2"].layer_keys[0]
    assert best_value(rule, [False, True, False, True], prefer=3) == (3, 3)
    assert best_value(rule, [False, True, False, True], prefer=2) == (1, 3)


def test_verify_fails_a_scalar_that_was_not_rederived(tiny, tmp_path):
    src, out, config, _ = grown_config(tiny, tmp_path, "qwen2", "interpolate")
    config["max_window_layers"] = 2  # what the grown config said before this was fixed
    (out / "config.json").write_text(json.dumps(config))
    spec = load_specs()["qwen2"]
    assert layer_key_findings(config, spec)[0][1] is True
    report = verify_checkpoint(src, out, max_new_tokens=4)
    check = next(c for c in report.checks if c.name == "config scalars agree with layer lists")
    assert not check.passed and check.gating
    assert "wrong attention at layers [2, 3]" in check.detail and "set 'max_window_layers' to 4" in check.detail


def test_verify_reports_but_passes_the_best_possible_scalar(tiny, tmp_path):
    src, out, _, _ = grown_config(tiny, tmp_path, "qwen3", "stack")
    report = verify_checkpoint(src, out, max_new_tokens=4)
    check = next(c for c in report.checks if c.name == "config scalars agree with layer lists")
    assert check.passed and check.value == "best possible" and "no value of 'max_window_layers'" in check.detail

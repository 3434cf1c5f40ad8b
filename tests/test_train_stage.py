"""surgeon train-stage on tiny models: each method lowers the loss; `new` leaves the old layers
bit-identical; the merged output computes what the peft model computed; an interrupted run
resumed with --resume has the loss curve of an uninterrupted one; bad input fails early."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import MissingManifestError
from modelsurgeon.grow.engine import grow
from modelsurgeon.train import make_options, parse_layers, train_stage, work_dir
from modelsurgeon.train.options import TrainOptions

DATA = "synthetic:arith:n=200"
# Small and fast: 24 steps of 4 x 32 tokens. Learning rates high enough that a tiny random
# model visibly learns the arithmetic format in that many steps.
BASE = dict(data=[DATA], steps=24, seq_len=32, batch_size=4, log_every=1, save_every=0)
LR = {"lora": 5e-3, "lora-new": 1e-2, "full": 2e-3, "new": 5e-3}
# LLaMA Pro style: a zero-initialised copy after layers 1 and 3 (4 -> 6 layers; new: 2 and 5).
PRO_PLAN = "name: pro\nsteps:\n  - op: interpolate\n    factor: 2\n    layers: {every: 2}\n    new: zero\n"


def write_plan(directory, text):
    path = directory / "plan.yaml"
    path.write_text(text)
    return path


def run_cli(*args):
    return CliRunner().invoke(app, ["train-stage", *[str(a) for a in args]])


def weights(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices gain nothing from threads, and on a busy 2-core machine extra threads
    make each step ~10x slower; restore the setting for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grown(tiny, tmp_path_factory):
    """A tiny llama grown LLaMA-Pro style, so it has a surgeon.json with new layers."""
    root = tmp_path_factory.mktemp("grown")
    grow(tiny("llama"), write_plan(root, PRO_PLAN), root / "pro")
    return root / "pro"


@pytest.fixture(scope="module")
def trained(grown, tmp_path_factory):
    """train(method) -> (OUT, StageResult), one run per method on the grown model."""
    cache = {}

    def run(method):
        if method not in cache:
            out = tmp_path_factory.mktemp(method) / "out"
            cache[method] = out, train_stage(grown, out, make_options(method=method, lr=LR[method], **BASE))
        return cache[method]

    return run


@pytest.mark.parametrize("method", ["lora", "full", "new", "lora-new"])
def test_each_method_lowers_the_loss(trained, grown, method):
    out, result = trained(method)
    losses = [r["loss"] for r in result.rows if "loss" in r]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, losses
    assert result.final_eval_loss < result.initial_eval_loss
    # OUT is a standard checkpoint: transformers loads it with no missing or unexpected keys.
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert weights(out).keys() == weights(grown).keys()
    manifest = json.loads((out / "surgeon.json").read_text())
    assert [s["kind"] for s in manifest["lineage"]] == ["grow", "train"]
    assert manifest["lineage"][-1]["final_eval_loss"] == result.final_eval_loss
    assert manifest["layer_map"] == json.loads((grown / "surgeon.json").read_text())["layer_map"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == result.rows and rows[-1]["tokens"] == 24 * 4 * 32
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not work_dir(out).exists()


@pytest.mark.parametrize("method", ["lora", "full", "new"])
def test_optimizer_state_is_saved_for_the_trained_params(trained, method):
    out, _ = trained(method)
    state = json.loads((out / "optimizer" / "state.json").read_text())
    assert state["step"] == 24 and state["method"] == method
    assert state["naming"] == ("peft" if method == "lora" else "checkpoint")
    moments = load_file(out / "optimizer" / "optimizer.safetensors")
    names = {k.rsplit(".", 1)[0] for k in moments}
    if method == "lora":
        assert all(".lora_A." in n or ".lora_B." in n for n in names)
    else:
        ckpt = weights(out)
        assert names <= ckpt.keys()
        for n in names:  # the moments belong to their tensor, and are not all zeros
            assert moments[f"{n}.exp_avg"].shape == ckpt[n].shape
        assert any(moments[f"{n}.exp_avg_sq"].abs().sum() > 0 for n in names)
    if method == "new":  # only layers 2 and 5 trained
        assert {n.split(".")[2] for n in names} == {"2", "5"}


@pytest.mark.parametrize("method", ["new", "lora-new"])
def test_new_methods_leave_old_layers_bit_identical(trained, grown, method):
    out, _ = trained(method)
    before, after = weights(grown), weights(out)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    new_layer = {n for n in before if n.startswith(("model.layers.2.", "model.layers.5."))}
    assert changed and changed <= new_layer
    if method == "new":  # the whole blocks train, including the zero-initialised o_proj/down_proj
        assert "model.layers.2.self_attn.o_proj.weight" in changed


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_merged_output_equals_peft_model(tiny, tmp_path, family):
    """OUT's merged weights compute what the trained peft model (base + OUT/adapter, unmerged)
    computes; gpt2 covers Conv1D's transposed (fan_in_fan_out) weights."""
    from peft import PeftModel

    src = tiny(family)
    train_stage(src, tmp_path / "out", make_options(method="lora", lr=LR["lora"], **BASE))
    ids = torch.randint(4, 200, (2, 24), generator=torch.Generator().manual_seed(1))
    base = AutoModelForCausalLM.from_pretrained(src).eval()
    source_logits = logits(base, ids)
    peft_logits = logits(PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval(), ids)
    merged_logits = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval(), ids)
    assert (peft_logits - source_logits).abs().max() > 1e-2  # the adapter did change the model
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-5, atol=1e-5)


def test_output_keeps_the_source_dtype_and_sharding(tiny, tmp_path):
    """A bfloat16, 2-shard qwen2 trained with --bf16: bfloat16 out, sharded by --max-shard-size,
    untouched tensors (norms, embeddings, biases) copied bit for bit."""
    src = tiny("qwen2", dtype=torch.bfloat16)
    out = tmp_path / "out"
    train_stage(
        src, out, make_options(method="lora", lr=LR["lora"], bf16=True, **{**BASE, "steps": 4}), max_shard_size=60_000
    )
    before, after = weights(src), weights(out)
    assert {t.dtype for t in after.values()} == {torch.bfloat16}
    assert (out / "model.safetensors.index.json").is_file()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.endswith("_proj.weight") for n in changed)


def test_share_duplicates_gives_the_unshared_output(tiny, tmp_path):
    """LoRA on a model whose layers were all duplicated: holding each source layer's tensors
    once in memory changes nothing in what is trained or written."""
    model = tmp_path / "double"
    grow(tiny("llama"), write_plan(tmp_path, "name: d\nsteps:\n  - op: interpolate\n    factor: 2\n"), model)
    options = dict(method="lora", lr=LR["lora"], **{**BASE, "steps": 8})
    train_stage(model, tmp_path / "plain", make_options(**options))
    shared = train_stage(model, tmp_path / "shared", make_options(share_duplicates=True, **options))
    assert shared.shared["bytes_shared"] > 0
    lineage = json.loads((tmp_path / "shared" / "surgeon.json").read_text())["lineage"]
    assert lineage[-1]["shared"] == shared.shared
    plain_w, shared_w, base_w = weights(tmp_path / "plain"), weights(tmp_path / "shared"), weights(model)
    assert not torch.equal(
        plain_w["model.layers.0.self_attn.q_proj.weight"], base_w["model.layers.0.self_attn.q_proj.weight"]
    )
    # Copies of one source layer got their own adapters, so they differ after merging.
    assert not torch.equal(
        shared_w["model.layers.0.self_attn.q_proj.weight"], shared_w["model.layers.1.self_attn.q_proj.weight"]
    )
    for name in plain_w:
        torch.testing.assert_close(shared_w[name], plain_w[name], rtol=0, atol=1e-6)


def test_carry_optimizer_first_update_after_exact_growth(tiny, tmp_path):
    """Train (full), grow LLaMA-Pro style (exact), continue one step with --carry-optimizer
    copy: the original layers move exactly as they do when continuing the ungrown model with
    its carried moments (an identity "growth"); with reset they would not."""
    base = dict(method="full", lr=1e-3, max_grad_norm=0.0, **{**BASE, "steps": 6})
    parent = tmp_path / "parent"
    train_stage(tiny("llama"), parent, make_options(**base))
    grow(parent, write_plan(tmp_path, PRO_PLAN), tmp_path / "pro")
    grow(
        parent,
        write_plan(tmp_path, "name: id\nsteps:\n  - op: layers\n    map: [{from: 0, to: 4}]\n"),
        tmp_path / "same",
    )

    def first_update(model, policy):
        out = tmp_path / f"{model}-{policy}"
        train_stage(tmp_path / model, out, make_options(**{**base, "steps": 1, "carry_optimizer": policy}))
        before, after = weights(tmp_path / model), weights(out)
        return {n: after[n] - before[n] for n in before}

    layer_map = json.loads((tmp_path / "pro" / "surgeon.json").read_text())["layer_map"]
    old = {j: e["source"] for j, e in enumerate(layer_map) if not e["new"]}
    grown, ungrown = first_update("pro", "copy"), first_update("same", "copy")
    reset = first_update("pro", "reset")
    compared = 0
    for name, delta in grown.items():
        if not name.startswith("model.layers."):
            torch.testing.assert_close(delta, ungrown[name], rtol=0, atol=1e-7)
            continue
        j = int(name.split(".")[2])
        if j in old:
            twin = name.replace(f"layers.{j}.", f"layers.{old[j]}.", 1)
            torch.testing.assert_close(delta, ungrown[twin], rtol=0, atol=1e-7)
            assert delta.abs().max() > 1e-5
            compared += 1
    assert compared == 4 * 9  # 4 original layers x 9 tensors
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (reset[q] - grown[q]).abs().max() > 1e-5  # fresh moments take another first step


class SigintAt(TrainerCallback):
    """Press Ctrl-C at the end of `step` (the stage stops after the next step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    """24 steps straight vs Ctrl-C after step 12 then --resume: same losses at every step and
    the same weights (LoRA dropout on, so the restored RNG state matters too)."""
    from modelsurgeon.errors import TrainInterrupted

    src, options = tiny("llama"), make_options(method="lora", lr=LR["lora"], lora_dropout=0.1, **BASE)
    straight = train_stage(src, tmp_path / "a", options)
    out = tmp_path / "b"
    with pytest.raises(TrainInterrupted, match="step 12 of 24"):
        train_stage(src, out, options, callbacks=(SigintAt(11),))
    assert not out.exists() and (work_dir(out) / "checkpoint-12").is_dir()
    resumed = train_stage(src, out, options, resume=True)
    curve = lambda rows: [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows]  # noqa: E731
    a, b = curve(straight.rows), curve(resumed.rows)
    assert [s for s, *_ in a] == [s for s, *_ in b]
    for (_, la, ea), (_, lb, eb) in zip(a, b):
        assert la == pytest.approx(lb, abs=1e-6) if la is not None else ea == pytest.approx(eb, abs=1e-6)
    wa, wb = weights(tmp_path / "a"), weights(out)
    assert all(torch.allclose(wa[n], wb[n], atol=1e-6) for n in wa)
    assert not work_dir(out).exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_ctrl_c_says_how_to_resume(tiny, tmp_path, monkeypatch, signum):
    """Ctrl-C, and SIGTERM as a cluster sends on preemption: a resumable checkpoint, exit 128 + signal."""
    from modelsurgeon.train import callbacks

    on_log = callbacks.MetricsCallback.on_log

    def on_log_then_sigint(self, args, state, control, logs=None, **kw):
        on_log(self, args, state, control, logs=logs, **kw)
        if state.global_step == 3 and logs and "loss" in logs:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(callbacks.MetricsCallback, "on_log", on_log_then_sigint)
    out = tmp_path / "out"
    args = [
        tiny("llama"),
        "--data",
        DATA,
        "-o",
        out,
        "--steps",
        6,
        "--seq-len",
        32,
        "--batch-size",
        4,
        "--log-every",
        1,
    ]
    result = run_cli(*args)
    assert result.exit_code == 128 + signum, result.output
    text = " ".join(result.output.split())
    assert f"interrupted by {signal.Signals(signum).name} at step 4 of 6" in text and "--resume" in text
    assert not out.exists() and (work_dir(out) / "checkpoint-4").is_dir()
    monkeypatch.setattr(callbacks.MetricsCallback, "on_log", on_log)
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]


def assert_fails(result, code, *needles, out=None):
    assert result.exit_code == code, result.output
    text = " ".join(result.output.split())  # rich may wrap long lines
    for needle in needles:
        assert needle in text, text
    if out is not None:
        assert not out.exists() and not work_dir(out).exists()


def test_new_without_surgeon_json(tiny, tmp_path):
    out = tmp_path / "out"
    assert_fails(
        run_cli(tiny("llama"), "--data", DATA, "-o", out, "--steps", 2, "--method", "new"),
        MissingManifestError.exit_code,
        "no surgeon.json",
        "grow",
        out=out,
    )


def test_failure_after_the_work_dir_exists_leaves_nothing(tiny, tmp_path):
    """--carry-optimizer finds no parent only once the model is loaded, after the work directory
    was created: with no checkpoint in it there is nothing to resume, so it is removed too."""
    out = tmp_path / "out"
    assert_fails(
        run_cli(
            tiny("llama"), "--data", DATA, "-o", out, "--steps", 2, "--method", "full", "--carry-optimizer", "copy"
        ),
        MissingManifestError.exit_code,
        "--carry-optimizer",
        "no surgeon.json naming the checkpoint it was grown from",
        out=out,
    )


def test_new_without_new_layers(tiny, tmp_path):
    model = tmp_path / "model"
    grow(tiny("llama"), write_plan(tmp_path, "name: d\nsteps:\n  - op: drop\n    layers: [0]\n"), model)
    out = tmp_path / "out"
    assert_fails(
        run_cli(model, "--data", DATA, "-o", out, "--steps", 2, "--method", "lora-new"),
        9,
        "marks no layer as new",
        out=out,
    )


def test_unknown_target_lists_the_valid_roles(tiny, tmp_path):
    out = tmp_path / "out"
    result = run_cli(tiny("llama"), "--data", DATA, "-o", out, "--steps", 2, "--targets", "q,attn")
    assert_fails(result, 9, "--targets attn", "valid roles: q, k, v, o, gate, up, down", "self_attn.q_proj", out=out)


def test_targets_by_role_and_module_name(tiny, tmp_path):
    from modelsurgeon.arch.registry import layout_of, resolve_spec
    from modelsurgeon.io.reader import open_checkpoint
    from modelsurgeon.train.methods import resolve_targets

    ckpt = open_checkpoint(tiny("gpt2"))
    spec = resolve_spec(ckpt.config, ckpt.names)
    layout = layout_of(spec, ckpt.config, ckpt.names, "gpt2")
    assert resolve_targets(spec, layout, None) == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert resolve_targets(spec, layout, ["qkv", "mlp.c_fc"]) == ["attn.c_attn", "mlp.c_fc"]
    assert resolve_targets(spec, layout, ["c_proj"]) == ["attn.c_proj", "mlp.c_proj"]


def test_seq_len_above_max_positions(tiny, tmp_path):
    out = tmp_path / "out"
    assert_fails(
        run_cli(tiny("llama"), "--data", DATA, "-o", out, "--steps", 2, "--seq-len", 4096), 8, "4096", "128", out=out
    )


def test_out_inside_model(tiny, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny("llama"), model)
    before = sorted(p.name for p in model.iterdir())
    assert_fails(run_cli(model, "--data", DATA, "-o", model / "out", "--steps", 2), 5, "overlaps the input")
    assert sorted(p.name for p in model.iterdir()) == before


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "give exactly one budget"),
        (["--steps", 2, "--tokens", 100], "give exactly one budget"),
        (["--steps", 2, "--method", "full", "--layers", "0,1"], "--layers is for method 'lora'"),
        (["--steps", 2, "--method", "full", "--targets", "q"], "--targets picks LoRA modules"),
        (["--steps", 2, "--method", "full", "--share-duplicates"], "needs a LoRA method"),
        (["--steps", 2, "--carry-optimizer", "copy"], "use it with method full or new"),
        (["--steps", 2, "--method", "sgd"], "--method"),
        (["--steps", 2, "--layers", "{from: 1}"], "not a layer selection"),
        (["--steps", 2, "--layers", "7"], "out of range for 4 layers"),
    ],
)
def test_bad_options(tiny, tmp_path, args, needle):
    out = tmp_path / "out"
    assert_fails(run_cli(tiny("llama"), "--data", DATA, "-o", out, *args), 9, needle, out=out)


def test_resume_needs_a_checkpoint_and_the_same_options(tiny, tmp_path):
    out = tmp_path / "out"
    common = [tiny("llama"), "--data", DATA, "-o", out, "--seq-len", 32]
    assert_fails(run_cli(*common, "--steps", 2, "--resume"), 9, "no Trainer checkpoint", out=out)
    work = work_dir(out)
    (work / "checkpoint-1").mkdir(parents=True)
    record = {
        "model": str(tiny("llama").resolve()),
        "world_size": 1,
        "options": make_options(data=[DATA], steps=2, seq_len=32).model_dump(mode="json"),
    }
    (work / "run.json").write_text(json.dumps(record))
    assert_fails(run_cli(*common, "--steps", 3, "--resume"), 9, "steps: 2 -> 3")
    assert_fails(run_cli(*common, "--steps", 2), 9, "left checkpoints", "--resume")


def test_budget_and_schedule_arithmetic():
    opts = make_options(data=[DATA], tokens=10_000, batch_size=4, grad_accum=2)
    assert opts.tokens_per_step(128, world_size=2) == 2048
    assert opts.total_steps(128, world_size=2) == 5  # ceil(10000 / 2048)
    assert opts.warmup_steps(100) == 5 and opts.learning_rate == 2e-4
    assert make_options(data=[DATA], steps=100, schedule="wsd").scheduler(100) == (
        "warmup_stable_decay",
        {"num_decay_steps": 20, "decay_type": "cosine"},
    )
    assert make_options(data=[DATA], steps=1, method="full").learning_rate == 2e-5


@pytest.mark.parametrize(
    "text, resolved",
    [
        ("all", [0, 1, 2, 3]),
        ("0,-1", [0, 3]),
        ("2", [2]),
        ("{from: 1, to: 3}", [1, 2]),
        ("{every: 2}", [1, 3]),
        ("{middle: 2}", [1, 2]),
    ],
)
def test_layer_selections_as_in_plans(text, resolved):
    from modelsurgeon.plan.selection import resolve_selection

    assert resolve_selection(parse_layers(text), 4) == resolved


def test_options_are_a_frozen_validated_model():
    with pytest.raises(ValidationError, match="unknown"):
        TrainOptions(data=[DATA], steps=1, unknown=1)
    opts = make_options(data=[DATA], steps=1)
    with pytest.raises(ValidationError, match="frozen"):
        opts.steps = 2

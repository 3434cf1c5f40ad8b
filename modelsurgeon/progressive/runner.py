"""Run a checked recipe: the start model, each stage in RUN_DIR/stages/NN-<kind>/ (a stage.json
there marks it done, so --resume skips it), then the baselines in RUN_DIR/baselines/<name>/,
then the report. Training is train-stage's, growth is grow's: this module only sequences them,
adds the stop trigger and gradient-norm callbacks, and records what each stage cost."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from modelsurgeon.arch.registry import resolve_spec
from modelsurgeon.errors import CheckpointError, OutputError, RecipeError
from modelsurgeon.grow.engine import grow, prepare
from modelsurgeon.io.reader import open_checkpoint
from modelsurgeon.manifest import MANIFEST, TrainStage, read_manifest
from modelsurgeon.progressive.evals import evaluate
from modelsurgeon.progressive.flops import stage_flops
from modelsurgeon.progressive.init import build_init
from modelsurgeon.progressive.monitor import grad_norm_callback
from modelsurgeon.progressive.planning import PlannedStage, RecipePlan, lora_targets, match_steps, plan_recipe
from modelsurgeon.progressive.recipe import load_recipe, parse_recipe
from modelsurgeon.progressive.report import train_max_k, write_report
from modelsurgeon.progressive.triggers import StopDecider, make_callback

STAGE_RECORD = "stage.json"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # the record is the done marker: it appears whole or not at all


def _same_recipe(saved: Path, loaded) -> bool:
    """Whether RUN_DIR's recipe.yaml says what RECIPE says (comments and layout may differ)."""

    try:
        return saved.is_file() and parse_recipe(saved.read_text(), str(saved)).recipe == loaded.recipe
    except RecipeError:
        return False


def _claim(run_dir: Path, loaded, resume: bool, force: bool) -> None:
    """Create RUN_DIR, or reuse it with --resume when it was started by the same recipe."""
    saved = run_dir / "recipe.yaml"
    if run_dir.exists() and any(run_dir.iterdir()):
        if resume:
            if not _same_recipe(saved, loaded):
                raise OutputError(
                    f"--resume: {run_dir} was not started by this recipe (its recipe.yaml differs)",
                    hint="resume with the same recipe, or start over with --force",
                )
            return
        if not force:
            raise OutputError(
                f"run directory {run_dir} already exists and is not empty",
                hint="continue it with --resume, pick another -o, or start over with --force",
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(loaded.source_text)


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text)


def _start_model(plan: RecipePlan, run_dir: Path, console) -> Path:

    r = plan.loaded.recipe
    if r.start is not None:
        return (plan.start_dir or Path(r.start)).resolve()
    out = run_dir / "stages" / "00-init" / "model"
    if not (out / MANIFEST).exists() and not (out / "config.json").exists():
        _say(console, f"[bold]00-init[/]: building {r.init.family} from scratch -> {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        build_init(r.init, out, Path.cwd())
    return out


def _eval(model_dir: Path, plan: RecipePlan) -> dict:
    """accuracy_by_k and tests of the stage record; every problem's result beside stage.json."""

    r = plan.loaded.recipe
    return evaluate(model_dir, r.eval, train_max_k(r.data), model_dir.parent)


def _layer_prefix(model: Path) -> str:

    ckpt = open_checkpoint(model)
    return resolve_spec(ckpt.config, ckpt.names).layer_prefix


def _last_train_stage(out: Path) -> TrainStage:
    manifest = read_manifest(out)
    stage = manifest.lineage[-1] if manifest is not None and manifest.lineage else None
    if not isinstance(stage, TrainStage):
        raise CheckpointError(
            f"{out / MANIFEST}: the last lineage stage is not a train stage", hint=f"remove {out} to rerun the stage"
        )
    return stage


def _run_training(
    model: Path,
    out: Path,
    sdir: Path,
    options,
    seq_len: int,
    triggers: list,
    cap: int,
    du_defaults: tuple[float, float],
    console,
) -> None:
    """Train (or resume) the stage into `out`, then write run.json: its wall time and what stopped it."""
    # lazy: modelsurgeon.train.shared imports torch/transformers
    from modelsurgeon.train import train_stage, work_dir

    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import last_checkpoint

    stop: dict = {}
    decider = StopDecider(list(triggers), cap, options.tokens_per_step(seq_len), du_defaults)
    callbacks = (make_callback(decider, stop), grad_norm_callback(sdir / "grad_norms.jsonl", _layer_prefix(model)))
    start = time.perf_counter()
    train_stage(
        model, out, options, resume=last_checkpoint(work_dir(out)) is not None, console=console, callbacks=callbacks
    )
    _write_json(sdir / "run.json", {"wall_s": round(time.perf_counter() - start, 2), "stop": stop})


def _train_record(sdir: Path, out: Path, options, counts, seq_len: int, cap: int, flops_kw: dict | None) -> dict:
    """The trained stage's record, from its surgeon.json, run.json and metrics."""
    # lazy: modelsurgeon.train.callbacks imports torch/transformers
    from modelsurgeon.train.callbacks import read_metrics

    stage = _last_train_stage(out)
    run = json.loads((sdir / "run.json").read_text()) if (sdir / "run.json").is_file() else {}
    rows = read_metrics(out / "metrics.jsonl")
    flops = stage_flops(counts, stage.tokens, seq_len, options.method, lora_r=options.lora_r, **(flops_kw or {}))
    return {
        "kind": "train",
        "method": options.method,
        "layers": counts.n_layers,
        "params": counts.total,
        "trainable": stage.trainable_params,
        "steps": stage.steps,
        "planned_steps": cap,
        "tokens": stage.tokens,
        "seq_len": seq_len,
        "flops_per_token": flops.per_token,
        "flops": flops.total,
        "wall_s": run.get("wall_s", max((r.get("elapsed_s", 0) for r in rows), default=0)),
        "stop_reason": (run.get("stop") or {}).get("reason", "cap"),
        "final_train_loss": stage.final_train_loss,
        "final_eval_loss": stage.final_eval_loss,
        "lr": options.learning_rate,
        "schedule": options.schedule,
        "warmup": options.warmup_steps(cap),
    }


def train_one(
    model: Path,
    sdir: Path,
    options,
    counts,
    seq_len: int,
    triggers: list,
    cap: int,
    du_defaults: tuple[float, float],
    eval_fn,
    console,
    extra: dict,
    flops_kw: dict | None = None,
) -> dict:
    """One train stage in `sdir` (resumable); returns its record, also written to stage.json.
    `flops_kw`: stage_flops' lora_targets / trained_layers; `extra`: fields added to the record."""
    out = sdir / "model"
    sdir.mkdir(parents=True, exist_ok=True)
    if not (out / MANIFEST).is_file():
        _run_training(model, out, sdir, options, seq_len, triggers, cap, du_defaults, console)
    record = {
        **_train_record(sdir, out, options, counts, seq_len, cap, flops_kw),
        **eval_fn(out),
        "model": str(out),
        **extra,
    }
    _write_json(sdir / STAGE_RECORD, record)
    return record


def _grow_one(st: PlannedStage, model: Path, sdir: Path) -> dict:

    out = sdir / "model"
    sdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if out.exists():  # written atomically, so complete: only the record was missing
        prep = prepare(model, st.plan)
    else:
        prep = grow(model, st.plan, out)
    record = {
        "kind": "grow",
        "plan": st.plan.origin,
        "layers": len(prep.layer_map),
        "params": st.counts.total,
        "trainable": 0,
        "steps": 0,
        "tokens": 0,
        "flops": 0,
        "flops_per_token": 0,
        "new_layers": st.new_layers,
        "equivalence": prep.equivalence,
        "wall_s": round(time.perf_counter() - start, 2),
        "model": str(out),
    }
    _write_json(sdir / STAGE_RECORD, record)
    return record


def continued(options, model: Path):
    """A stage's options, its data continuing where the run's previous train stage stopped (with a
    fixed eval set, the same data and seed), so that a grown model meets new documents rather
    than those its parent trained on; other stages unchanged."""
    manifest = read_manifest(model) if options.eval_tokens is not None else None
    last = next((s for s in reversed(manifest.lineage) if isinstance(s, TrainStage)), None) if manifest else None
    settings = last.data_stats.get("settings", {}) if last is not None else {}
    if last is None or last.data != list(options.data) or last.seed != options.seed or "end_position" not in settings:
        return options
    return options.model_copy(update={"skip_docs": settings["end_position"]})


def _run_stage(st: PlannedStage, model: Path, sdir: Path, plan: RecipePlan, console) -> dict:
    if (sdir / STAGE_RECORD).is_file():
        _say(console, f"[bold]{st.name}[/]: done, skipped (--resume)")
        return json.loads((sdir / STAGE_RECORD).read_text())
    _say(console, f"[bold]{st.name}[/]: {st.kind}, {model.name} ({model.parent.name})")
    if st.kind == "grow":
        return _grow_one(st, model, sdir)
    spec = plan.loaded.recipe.stages[st.index - 1].train
    flops_kw = {"lora_targets": lora_targets(st.options, st.counts), "trained_layers": st.trained_layers}
    du = (plan.final_counts.total, plan.total_flops)
    return train_one(
        model,
        sdir,
        continued(st.options, model),
        st.counts,
        st.seq_len,
        spec.trigger,
        st.steps,
        du,
        lambda m: _eval(m, plan),
        console,
        {},
        flops_kw,
    )


def _run_baselines(plan: RecipePlan, run_dir: Path, flops: int, tokens: int, console) -> dict[str, dict]:

    out: dict[str, dict] = {}
    for b in plan.baselines:
        bdir = run_dir / "baselines" / b.spec.name
        steps = match_steps(b.spec.match, flops, tokens, b.per_step_flops, b.options.tokens_per_step(b.seq_len))
        if steps < 1:
            raise OutputError(
                f"baseline {b.spec.name}: the run's actual {flops:.3g} FLOPs buy no step of it",
                hint="a trigger stopped the stages early; lengthen them or drop the baseline",
            )
        options = b.options.model_copy(update={"steps": steps})
        init_dir = bdir / "00-init" / "model"
        if not (init_dir / "config.json").exists():
            _say(console, f"[bold]baseline {b.spec.name}[/]: {b.counts.n_layers} layers from scratch, {steps} steps")
            init_dir.parent.mkdir(parents=True, exist_ok=True)
            build_init(b.init, init_dir, Path.cwd())
        sdir = bdir / "01-train"
        if (sdir / STAGE_RECORD).is_file():
            out[b.spec.name] = json.loads((sdir / STAGE_RECORD).read_text())
            continue
        out[b.spec.name] = train_one(
            init_dir,
            sdir,
            options,
            b.counts,
            b.seq_len,
            [],
            steps,
            (1, 2),
            lambda m: _eval(m, plan),
            console,
            {"match": b.spec.match},
        )
    return out


def run_recipe(
    recipe: str | Path, run_dir: str | Path, *, resume: bool = False, force: bool = False, console=None
) -> dict:
    """Check RECIPE, run its stages and baselines in RUN_DIR, write the report; return summary.json's data.

    Raises RecipeError (before anything is written), OutputError (RUN_DIR), and whatever a
    stage raises (TrainError, DataError, PlanError, TrainInterrupted: rerun with resume=True)."""

    loaded = load_recipe(recipe)
    plan = plan_recipe(loaded)
    run_dir = Path(run_dir)
    _claim(run_dir, loaded, resume, force)
    model = _start_model(plan, run_dir, console)
    records = []
    for st in plan.stages:
        record = _run_stage(st, model, run_dir / "stages" / st.name, plan, console)
        records.append({"stage": st.name, **record})
        model = Path(record["model"])
    flops = sum(r["flops"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    baselines = _run_baselines(plan, run_dir, flops, tokens, console)
    return write_report(run_dir, plan, records, baselines)

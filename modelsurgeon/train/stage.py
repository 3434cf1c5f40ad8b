"""One training stage, end to end: validate (headers, surgeon.json, data) before loading
weights, train with the Trainer in a work directory beside OUT (its checkpoints are what
--resume continues from), then write OUT atomically and remove the work directory."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from modelsurgeon.arch.registry import layout_of, resolve_spec
from modelsurgeon.arch.spec import ArchSpec, Layout
from modelsurgeon.data import build_blocks, parse_data_spec
from modelsurgeon.errors import MissingManifestError, TrainError, TrainInterrupted
from modelsurgeon.io.reader import Checkpoint, open_checkpoint
from modelsurgeon.io.writer import DEFAULT_MAX_SHARD, atomic_directory, check_free_space, check_output_path
from modelsurgeon.manifest import read_manifest
from modelsurgeon.threads import pin_for_launcher
from modelsurgeon.train.methods import MethodPlan, changed_tensors, plan_method, trainable_params
from modelsurgeon.train.options import TrainOptions
from modelsurgeon.train.ramp import BranchRamp, RampPlan, plan_ramp
from modelsurgeon.train.sharded import adam_moments, check_engine, gather, is_sharded

# Options that may change between an interrupted run and its --resume (intervals only).
RESUMABLE_CHANGES = {"eval_every", "save_every", "log_every"}
# Any one of these lets AutoTokenizer build a tokenizer (fast, sentencepiece or BPE files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


@dataclass
class StageResult:
    """What a finished stage did; `rows` are its metrics.jsonl rows."""

    out: Path
    method: str
    steps: int
    tokens: int
    seq_len: int
    trainable: int
    total_params: int
    seconds: float
    tokens_per_s: float
    rows: list[dict] = field(default_factory=list)
    data_stats: dict = field(default_factory=dict)
    shared: dict | None = None  # --share-duplicates: tensor groups and bytes held once
    written: bool = False  # this process wrote OUT (the main one, under `accelerate launch`)

    def _last(self, key: str, first: bool = False) -> float | None:
        values = [r[key] for r in self.rows if key in r]
        return (values[0] if first else values[-1]) if values else None

    @property
    def first_loss(self) -> float | None:
        return self._last("loss", first=True)

    @property
    def final_loss(self) -> float | None:
        return self._last("loss")

    @property
    def initial_eval_loss(self) -> float | None:
        return next((r["eval_loss"] for r in self.rows if "eval_loss" in r and r["step"] == 0), None)

    @property
    def final_eval_loss(self) -> float | None:
        return self._last("eval_loss")

    def table(self):
        """The final summary, as a rich table."""
        from rich.table import Table

        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.4f}"

        t = Table(title=f"train-stage {self.method} -> {self.out}", show_header=False)
        t.add_row("steps / tokens", f"{self.steps:,} / {self.tokens:,} (seq {self.seq_len})")
        t.add_row(
            "trainable params",
            f"{self.trainable:,} of {self.total_params:,} ({100 * self.trainable / max(self.total_params, 1):.2f}%)",
        )
        t.add_row("train loss first -> last", f"{fmt(self.first_loss)} -> {fmt(self.final_loss)}")
        t.add_row("eval loss start -> end", f"{fmt(self.initial_eval_loss)} -> {fmt(self.final_eval_loss)}")
        t.add_row("time / throughput", f"{self.seconds:.1f} s / {self.tokens_per_s:,.0f} tokens/s")
        return t


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hide a deprecation warning peft and the Trainer trigger inside transformers (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def work_dir(out: Path) -> Path:
    """Where the Trainer checkpoints while OUT does not exist yet: a hidden sibling of OUT."""
    out = out.resolve()
    return out.parent / f".{out.name}.work"


@dataclass
class _Setup:
    ckpt: Checkpoint
    spec: ArchSpec
    layout: Layout
    plan: MethodPlan
    ramp: RampPlan | None = None  # ramp_new: the new layers' branch modules and tensors


def _setup(model: Path, options: TrainOptions) -> _Setup:
    """Everything checkable from headers and surgeon.json, before tokenizer, data or weights."""
    ckpt = open_checkpoint(model)
    spec = resolve_spec(ckpt.config, ckpt.names)
    layout = layout_of(spec, ckpt.config, ckpt.names, str(model))
    ramp = plan_ramp(options.ramp_new and options.ramp_new.steps, model, spec, layout)
    return _Setup(ckpt, spec, layout, plan_method(options, model, spec, layout), ramp)


def _run_record(model: Path, options: TrainOptions, world_size: int) -> dict:
    """What must not change between an interrupted run and its --resume."""
    return {"model": str(model.resolve()), "world_size": world_size, "options": options.model_dump(mode="json")}


def _differences(old: dict, new: dict) -> list[str]:
    opts = [
        f"{k}: {old['options'].get(k)!r} -> {new['options'].get(k)!r}"
        for k in sorted(set(old["options"]) | set(new["options"]))
        if old["options"].get(k) != new["options"].get(k) and k not in RESUMABLE_CHANGES
    ]
    return [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in ("model", "world_size") if old.get(k) != new[k]] + opts


def _open_work(work: Path, record: dict, resume: bool, force: bool) -> Path | None:
    """Create or reuse the work directory; return the checkpoint to resume from (or None)."""
    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import last_checkpoint

    if resume:
        found = last_checkpoint(work)
        if found is None or not (work / "run.json").is_file():
            raise TrainError(
                f"--resume: no Trainer checkpoint in {work}", hint="run without --resume to start the stage"
            )
        changed = _differences(json.loads((work / "run.json").read_text()), record)
        if changed:
            raise TrainError(
                f"--resume: this command differs from the interrupted run ({', '.join(changed)})",
                hint="resume with the same model, data, options and number of processes, or start over with --force",
            )
        return found
    if last_checkpoint(work) is not None and not force:
        raise TrainError(
            f"an interrupted run of this stage left checkpoints in {work}",
            hint="continue it with --resume, or start over with --force (deletes them)",
        )
    shutil.rmtree(work, ignore_errors=True)  # no checkpoint (a run that failed early), or --force
    work.mkdir(parents=True)
    (work / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return None


def _check_inputs(model: Path, options: TrainOptions) -> None:
    """What can be checked without the training stack: every --data spec (local paths exist,
    options parse) and that MODEL has tokenizer files."""

    for spec in options.data:
        parse_data_spec(spec)
    if not any((model / name).is_file() for name in TOKENIZER_FILES):
        raise TrainError(
            f"{model}: no tokenizer files ({', '.join(TOKENIZER_FILES)})",
            hint="copy the tokenizer files of the model MODEL was made from into MODEL",
        )


def _load_data(model: Path, ckpt: Checkpoint, options: TrainOptions, seq_len: int, max_tokens: int):
    from transformers import AutoTokenizer

    specs = [parse_data_spec(s) for s in options.data]
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise TrainError(
            f"{model}: no usable tokenizer ({exc})",
            hint="copy the tokenizer files of the model MODEL was made from into MODEL",
        ) from None
    return build_blocks(
        specs,
        tokenizer,
        seq_len,
        max_tokens=max_tokens,
        eval_fraction=options.eval_fraction,
        eval_tokens=options.eval_tokens,
        skip_docs=options.skip_docs,
        seed=options.seed,
        text_field=options.text_field,
        max_positions=_max_positions(ckpt.config),
    )


def _max_positions(config: dict) -> int | None:
    return config.get("max_position_embeddings") or config.get("n_positions")


def _load_model(model: Path, options: TrainOptions, setup: _Setup):
    """The model in float32 for training (a LoRA base in bfloat16 with --bf16: it stays frozen),
    seeded so that LoRA initialisation is reproducible, with the method applied."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    method = options.train_method
    dtype = getattr(torch, method.base_dtype(options.bf16))
    shared = None
    if options.share_duplicates:
        # lazy: modelsurgeon.train.shared imports torch/transformers
        from modelsurgeon.train.shared import load_shared

        base, info = load_shared(model, dtype)
        shared = {"groups": len(info.groups), "bytes_loaded": info.bytes_loaded, "bytes_shared": info.bytes_shared}
    else:
        base = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    set_seed(options.seed)
    with quiet():
        return method.attach(base, setup.plan, options, setup.spec), shared


def _carried(model_dir: Path, options: TrainOptions, net) -> dict | None:
    """AdamW moments from the parent stage, mapped through MODEL's layer map (T2's carry_state)."""
    if options.carry_optimizer in (None, "reset"):
        return None
    # lazy: modelsurgeon.train.carry imports torch/transformers
    from modelsurgeon.train.carry import carry_state

    parent = options.optimizer_from
    if parent is None:
        manifest = read_manifest(model_dir)
        source = manifest.source.path if manifest is not None else None
        if source is None:
            raise MissingManifestError(
                f"--carry-optimizer: {model_dir} has no surgeon.json naming the checkpoint it was grown from",
                hint="pass the parent stage's OUT/optimizer with --optimizer-from",
            )
        parent = Path(source) / "optimizer"
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    return carry_state(Path(parent), model_dir, names, options.carry_optimizer)


def _stage_record(options: TrainOptions, setup: _Setup, result: StageResult, resumed: bool) -> dict:
    return {
        "kind": "train",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": options.method,
        **setup.plan.describe(),
        "data": options.data,
        "data_stats": json.loads(json.dumps(result.data_stats, default=str)),
        "steps": result.steps,
        "tokens": result.tokens,
        "seq_len": result.seq_len,
        "seed": options.seed,
        "trainable_params": result.trainable,
        "total_params": result.total_params,
        "initial_eval_loss": result.initial_eval_loss,
        "final_train_loss": result.final_loss,
        "final_eval_loss": result.final_eval_loss,
        "resumed": resumed,
        "shared": result.shared,
        "options": options.model_dump(mode="json"),
    }


def _write(
    out: Path,
    setup: _Setup,
    net,
    trainer,
    options: TrainOptions,
    work: Path,
    stage: dict,
    max_shard_size: int,
    folds: dict | None = None,
    moments: dict | None = None,
) -> None:
    """Write OUT from the unsharded `net`; `moments` (gathered under FSDP) replace reading the
    optimizer's own state, which is sharded there; None with a sharded run: no optimizer/."""
    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import unwrapped_optimizer

    # lazy: modelsurgeon.train.output imports torch/transformers
    from modelsurgeon.train.output import finish_files, save_optimizer, stage_source, write_weights

    method = options.train_method
    base = method.trained_model(net)
    check_free_space(out, setup.ckpt.total_bytes)
    source = stage_source(setup.ckpt, setup.spec.model_type, setup.layout.num_layers)
    optimizer, scheduler = unwrapped_optimizer(trainer), trainer.lr_scheduler
    if moments is None and not is_sharded(trainer):
        moments = adam_moments(net, optimizer)
    with atomic_directory(out) as tmp:
        write_weights(
            tmp, setup.ckpt, changed_tensors(setup.plan, setup.spec, setup.layout), base, max_shard_size, folds
        )
        method.save_extras(net, tmp)
        if moments is not None:
            save_optimizer(
                tmp / "optimizer",
                moments,
                optimizer,
                scheduler,
                step=stage["steps"],
                method=method.name,
                naming=method.optimizer_naming,
            )
        finish_files(
            tmp, setup.ckpt, work, stage, source, f"{setup.ckpt.path.name}: {options.method}, {stage['steps']} steps"
        )


def _claim_work(probe, work: Path, record: dict, resume: bool, force: bool) -> Path | None:
    """One process creates or checks the work directory; all learn the checkpoint to resume from."""
    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import last_checkpoint

    with probe.main_process_first(local=False):
        if probe.process_index == 0:
            return _open_work(work, record, resume, force)
        return last_checkpoint(work) if resume else None


def _train(
    net,
    data,
    options: TrainOptions,
    work: Path,
    resume_from: Path | None,
    total: int,
    carried: dict | None,
    callbacks: list,
    overrides: dict,
):
    """Run the Trainer (a stop signal: checkpoint and TrainInterrupted); return it and the seconds it ran."""
    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import make_trainer, training_arguments

    # lazy: modelsurgeon.train.callbacks imports torch/transformers
    from modelsurgeon.train.callbacks import InterruptCallback

    interrupt = InterruptCallback()
    args = training_arguments(options, work, total, eval_on_start=resume_from is None, **overrides)
    trainer = make_trainer(net, data.train, data.eval, args, [interrupt, *callbacks], carried)
    start = time.perf_counter()
    with interrupt.installed(), quiet():
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if interrupt.stopped_at is not None:
        import signal

        name = signal.Signals(interrupt.signum).name
        raise TrainInterrupted(
            f"training interrupted by {name} at step {interrupt.stopped_at} of {total}; "
            f"a resumable checkpoint is in {work}",
            hint="run the same command again with --resume to continue",
            signum=interrupt.signum,
        )
    return trainer, time.perf_counter() - start


def train_stage(
    model: str | Path,
    out: str | Path,
    options: TrainOptions,
    *,
    force: bool = False,
    resume: bool = False,
    console=None,
    callbacks: tuple = (),
    max_shard_size: int = DEFAULT_MAX_SHARD,
    **trainer_overrides,
) -> StageResult:
    """Train MODEL for one stage and write the merged checkpoint to OUT.

    `callbacks` are extra TrainerCallbacks; `trainer_overrides` are TrainingArguments fields.
    Raises TrainError (bad method, targets, layers, resume state), DataError (data),
    CheckpointError/OutputError (MODEL/OUT), TrainInterrupted (Ctrl-C, SIGTERM, SIGHUP; checkpoint saved)."""
    model, out = Path(model), Path(out)
    check_output_path(out, model, force)
    setup = _setup(model, options)
    _check_inputs(model, options)  # a typo in --data fails in a second, before torch and transformers load
    pin_for_launcher()  # N processes of a launcher share the cores instead of each taking all of them
    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import last_checkpoint, training_arguments

    # lazy: modelsurgeon.train.callbacks imports torch/transformers
    from modelsurgeon.train.callbacks import MetricsCallback, RichProgressCallback, read_metrics

    seq_len = options.sequence_length(_max_positions(setup.ckpt.config))
    work = work_dir(out)
    probe = training_arguments(options, work, 1)  # world size and rank under `accelerate launch`
    total, per_step = options.total_steps(seq_len, probe.world_size), options.tokens_per_step(seq_len, probe.world_size)
    data = _load_data(model, setup.ckpt, options, seq_len, options.data_tokens(seq_len, probe.world_size))
    resume_from = _claim_work(probe, work, _run_record(model, options, probe.world_size), resume, force)
    ramp = BranchRamp(setup.ramp) if setup.ramp else None
    cbs = [MetricsCallback(work / "metrics.jsonl", per_step), *callbacks, *([ramp.callback()] if ramp else [])]
    if console is not None:
        cbs.append(RichProgressCallback(console, per_step))
    check_engine(options.share_duplicates)
    try:
        net, shared = _load_model(model, options, setup)
        if ramp:
            ramp.attach(net)
        carried = None if resume_from else _carried(model, options, net)
        trainer, seconds = _train(net, data, options, work, resume_from, total, carried, cbs, trainer_overrides)
    except BaseException:
        if probe.process_index == 0 and last_checkpoint(work) is None:  # nothing to resume: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    done = trainer.state.global_step - (int(resume_from.name.rsplit("-", 1)[1]) if resume_from else 0)
    trainable, total_params = trainable_params(net)
    result = StageResult(
        out,
        options.method,
        trainer.state.global_step,
        trainer.state.global_step * per_step,
        seq_len,
        trainable,
        total_params,
        seconds,
        done * per_step / max(seconds, 1e-9),
        read_metrics(work / "metrics.jsonl"),
        dict(data.stats),
        shared,
    )
    gathered = gather(trainer, lambda: _load_model(model, options, setup)[0]) if is_sharded(trainer) else None
    if trainer.is_world_process_zero():
        check_output_path(out, model, force)
        stage = _stage_record(options, setup, result, resume_from is not None)
        _write(
            out,
            setup,
            gathered.model if gathered else net,
            trainer,
            options,
            work,
            stage,
            max_shard_size,
            ramp.folds() if ramp else None,
            gathered.moments if gathered else None,
        )
        shutil.rmtree(work, ignore_errors=True)
        result.written = True
    trainer.accelerator.wait_for_everyone()
    return result

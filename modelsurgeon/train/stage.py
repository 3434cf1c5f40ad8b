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

from modelsurgeon.errors import MissingManifestError, TrainInterrupted
from modelsurgeon.io.writer import DEFAULT_MAX_SHARD, atomic_directory, check_free_space, check_output_path
from modelsurgeon.manifest import read_manifest
from modelsurgeon.threads import pin_for_launcher
from modelsurgeon.train.inputs import Setup, check_inputs, load_data, max_positions, read_setup
from modelsurgeon.train.methods import changed_tensors, trainable_params
from modelsurgeon.train.options import TrainOptions
from modelsurgeon.train.ramp import BranchRamp
from modelsurgeon.train.sharded import adam_moments, check_engine, gather, is_sharded
from modelsurgeon.train.workdir import claim_work, removed_unless_resumable, run_record, work_dir


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


@dataclass
class _Run:
    """The stage as this process runs it (one of several under `accelerate launch`)."""

    work: Path
    owner: bool  # process 0: it creates, and on failure removes, the work directory
    seq_len: int
    total: int  # optimizer steps
    per_step: int  # tokens per optimizer step, all processes together
    data: object  # the train and eval blocks
    resume_from: Path | None  # the Trainer checkpoint --resume continues from


def _load_model(model: Path, options: TrainOptions, setup: Setup):
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


def _stage_record(options: TrainOptions, setup: Setup, result: StageResult, resumed: bool) -> dict:
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
    setup: Setup,
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


def _prepare_run(model: Path, out: Path, options: TrainOptions, setup: Setup, resume: bool, force: bool) -> _Run:
    """Budget the stage for this world size, tokenize its data, then claim the work directory."""
    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import training_arguments

    seq_len = options.sequence_length(max_positions(setup.ckpt.config))
    work = work_dir(out)
    probe = training_arguments(options, work, 1)  # world size and rank under `accelerate launch`
    total, per_step = options.total_steps(seq_len, probe.world_size), options.tokens_per_step(seq_len, probe.world_size)
    data = load_data(model, setup.ckpt, options, seq_len, options.data_tokens(seq_len, probe.world_size))
    resume_from = claim_work(probe, work, run_record(model, options, probe.world_size), resume, force)
    return _Run(work, probe.process_index == 0, seq_len, total, per_step, data, resume_from)


def _callbacks(run: _Run, extra: tuple, ramp: BranchRamp | None, console) -> list:
    # lazy: modelsurgeon.train.callbacks imports torch/transformers
    from modelsurgeon.train.callbacks import MetricsCallback, RichProgressCallback

    cbs = [MetricsCallback(run.work / "metrics.jsonl", run.per_step), *extra, *([ramp.callback()] if ramp else [])]
    if console is not None:
        cbs.append(RichProgressCallback(console, run.per_step))
    return cbs


def _train(net, options: TrainOptions, run: _Run, carried: dict | None, callbacks: list, overrides: dict):
    """Run the Trainer (a stop signal: checkpoint and TrainInterrupted); return it and the seconds it ran."""
    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import make_trainer, training_arguments

    # lazy: modelsurgeon.train.callbacks imports torch/transformers
    from modelsurgeon.train.callbacks import InterruptCallback

    interrupt = InterruptCallback()
    args = training_arguments(options, run.work, run.total, eval_on_start=run.resume_from is None, **overrides)
    trainer = make_trainer(net, run.data.train, run.data.eval, args, [interrupt, *callbacks], carried)
    start = time.perf_counter()
    with interrupt.installed(), quiet():
        trainer.train(resume_from_checkpoint=str(run.resume_from) if run.resume_from else None)
    if interrupt.stopped_at is not None:
        import signal

        name = signal.Signals(interrupt.signum).name
        raise TrainInterrupted(
            f"training interrupted by {name} at step {interrupt.stopped_at} of {run.total}; "
            f"a resumable checkpoint is in {run.work}",
            hint="run the same command again with --resume to continue",
            signum=interrupt.signum,
        )
    return trainer, time.perf_counter() - start


def _result(out: Path, options: TrainOptions, run: _Run, trainer, net, seconds: float, shared: dict | None):
    # lazy: modelsurgeon.train.callbacks imports torch/transformers
    from modelsurgeon.train.callbacks import read_metrics

    # tokens/s over the steps this call ran: a resumed checkpoint's steps took none of `seconds`
    done = trainer.state.global_step - (int(run.resume_from.name.rsplit("-", 1)[1]) if run.resume_from else 0)
    trainable, total_params = trainable_params(net)
    return StageResult(
        out,
        options.method,
        trainer.state.global_step,
        trainer.state.global_step * run.per_step,
        run.seq_len,
        trainable,
        total_params,
        seconds,
        done * run.per_step / max(seconds, 1e-9),
        read_metrics(run.work / "metrics.jsonl"),
        dict(run.data.stats),
        shared,
    )


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
    setup = read_setup(model, options)
    check_inputs(model, options)  # a typo in --data fails in a second, before torch and transformers load
    pin_for_launcher()  # N processes of a launcher share the cores instead of each taking all of them
    run = _prepare_run(model, out, options, setup, resume, force)
    ramp = BranchRamp(setup.ramp) if setup.ramp else None
    cbs = _callbacks(run, callbacks, ramp, console)
    check_engine(options.share_duplicates)
    with removed_unless_resumable(run.work, run.owner):
        net, shared = _load_model(model, options, setup)
        if ramp:
            ramp.attach(net)
        carried = None if run.resume_from else _carried(model, options, net)
        trainer, seconds = _train(net, options, run, carried, cbs, trainer_overrides)
    result = _result(out, options, run, trainer, net, seconds, shared)
    gathered = gather(trainer, lambda: _load_model(model, options, setup)[0]) if is_sharded(trainer) else None
    if trainer.is_world_process_zero():
        check_output_path(out, model, force)
        stage = _stage_record(options, setup, result, run.resume_from is not None)
        _write(
            out,
            setup,
            gathered.model if gathered else net,
            trainer,
            options,
            run.work,
            stage,
            max_shard_size,
            ramp.folds() if ramp else None,
            gathered.moments if gathered else None,
        )
        shutil.rmtree(run.work, ignore_errors=True)
        result.written = True
    trainer.accelerator.wait_for_everyone()
    return result

"""The `surgeon` command line: thin commands that parse, call one library function, render."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from modelsurgeon.cli_options import flag, with_model_options
from modelsurgeon.errors import SurgeonError
from modelsurgeon.train.options import TrainOptions, load_options

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Grow trained language models from their checkpoints.")
plan_app = typer.Typer(no_args_is_help=True, help="Check growth plans.")
app.add_typer(plan_app, name="plan")
out = Console()
err = Console(stderr=True, soft_wrap=True)  # never wrap paths in error messages

SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_byte_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not m or m.group(2) not in SIZE_UNITS:
        raise typer.BadParameter(f"{text!r} is not a size; use e.g. 5GB, 500MB, 2GiB or a byte count")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2)])


def handled(fn):
    """Turn SurgeonErrors into a message on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SurgeonError as exc:
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            if exc.hint:  # escaped: a hint like `pip install modelsurgeon[gguf]` must print as written
                err.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


@app.command()
@handled
def grow(
    model: Annotated[Path, typer.Argument(help="Source checkpoint directory (config.json + safetensors).")],
    plan: Annotated[Path, typer.Option("--plan", "-p", help="Growth plan YAML (or a mergekit passthrough config).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory (created atomically).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the layer map and sizes; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB, 500MB.")] = "5GB",
    drift: Annotated[bool, typer.Option("--drift", help="With --dry-run: grow into a temp dir and report verify's logit drift.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="After writing, run `surgeon verify` (transformers) on OUTPUT; exit non-zero if it fails.")] = False,
) -> None:
    """Apply a growth plan to a checkpoint."""
    from modelsurgeon.grow.engine import grow as grow_fn
    from modelsurgeon.grow.engine import prepare
    from modelsurgeon.grow.tables import layer_map_table, summary_table, width_table

    shard = parse_byte_size(max_shard_size)
    if not dry_run and output is None:
        raise typer.BadParameter("-o/--output is required unless --dry-run", param_hint="--output")
    if dry_run and verify:
        raise typer.BadParameter("--verify checks a written output; use --drift with --dry-run", param_hint="--verify")
    prep = prepare(model, plan) if dry_run else _grow_with_progress(grow_fn, model, plan, output, force, shard)
    if prep.loaded.translation:
        out.print(prep.loaded.translation, highlight=False)
    out.print(layer_map_table(prep))
    if prep.width is not None:
        out.print(width_table(prep))
    out.print(summary_table(prep))
    if dry_run and drift:
        from modelsurgeon.verify.drift import measure_drift

        _, report = measure_drift(model, prep.loaded)
        line = f"measured drift (surgeon verify on a temporary grown copy): {report.drift_line()}"
        out.print(line, highlight=False, soft_wrap=True)
    if not dry_run:
        out.print(f"[green]wrote[/] {output} ({len(prep.tensors)} tensors)")
    if verify and not dry_run:  # the output stays: it was written correctly, it just fails its promise
        from modelsurgeon.verify.api import verify_and_show

        verify_and_show(model, output, out)


def _grow_with_progress(grow_fn, model, plan, output, force, shard):
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress("[progress.description]{task.description}", *columns, console=err, transient=True) as bar:
        task = bar.add_task("writing", total=None)
        return grow_fn(model, plan, output, force=force, max_shard_size=shard, progress=lambda n: bar.advance(task, n))


@app.command()
@handled
def inspect(
    model: Annotated[Path, typer.Argument(help="Checkpoint directory.")],
    as_json: Annotated[bool, flag("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a checkpoint's family, layers, parameters, dtypes, shards and per-layer config lists."""
    from modelsurgeon.checkpoint_summary import checkpoint_table, summarize_checkpoint

    info = summarize_checkpoint(model)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        out.print(checkpoint_table(info))


@plan_app.command("check")
@handled
def plan_check(
    plan: Annotated[Path, typer.Argument(help="Growth plan YAML.")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Also check the plan against this checkpoint's headers.")] = None,
) -> None:
    """Validate a plan (schema; with --model, layer ranges, family and shapes too)."""
    from modelsurgeon.plan import load_plan

    loaded = load_plan(plan)
    if loaded.translation:
        out.print(loaded.translation, highlight=False)
    if model is None:
        out.print(f"[green]ok[/] {plan}: {len(loaded.plan.steps)} step(s), schema valid")
        return
    from modelsurgeon.grow.engine import prepare

    prep = prepare(model, loaded)
    out.print(f"[green]ok[/] {plan} fits {model}: {prep.layout.num_layers} -> {len(prep.layer_map)} layers, {prep.equivalence}")


@app.command()
@handled
def demo(
    workdir: Annotated[Optional[Path], typer.Option(help="Where to write the demo models (default: a temp dir).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Grow this checkpoint instead of a tiny one built here.")] = None,
) -> None:
    """Build a tiny model locally, grow it with two shipped plans, check the results."""
    from modelsurgeon.demo import run_demo

    run_demo(workdir, out, model)


@app.command()
@handled
def convert(
    model: Annotated[Path, typer.Argument(help="Source checkpoint directory (safetensors, or pytorch_model*.bin).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output directory, or one NAME.gguf file (created atomically).")] = None,
    to: Annotated[Optional[str], typer.Option(help="Output format: safetensors, bin or gguf (default: gguf for -o NAME.gguf, else safetensors).")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Cast floating tensors to float32, bfloat16 or float16 (default: keep).")] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB (GGUF: always one file). torch.save builds a whole .bin shard in memory, so for --to bin this also bounds memory.")] = "5GB",
    dry_run: Annotated[bool, flag("--dry-run", help="Print tensors, dtypes, shards and sizes; write nothing.")] = False,
    force: Annotated[bool, flag("--force", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Convert a checkpoint's format (.bin, safetensors, GGUF), dtype or sharding, one tensor at a time."""
    from modelsurgeon.convert import convert as convert_fn
    from modelsurgeon.convert import prepare_conversion
    from modelsurgeon.convert.report import describe

    shard = parse_byte_size(max_shard_size)
    if not dry_run and output is None:
        raise typer.BadParameter("-o/--output is required unless --dry-run", param_hint="--output")
    if dry_run:
        conv = prepare_conversion(model, to, dtype, shard, output)
    else:
        conv = _with_progress(lambda advance: convert_fn(model, output, to, dtype, shard, force, progress=advance))
    out.print(describe(conv), highlight=False, markup=False, soft_wrap=True)
    out.print("dry run: nothing written" if dry_run else f"[green]wrote[/] {output}", highlight=False)


def _with_progress(run):
    """Call run(advance) under a transient byte progress bar on stderr."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress("[progress.description]{task.description}", *columns, console=err, transient=True) as bar:
        task = bar.add_task("writing", total=None)
        return run(lambda n: bar.advance(task, n))


@app.command()
@handled
def verify(
    source: Annotated[Path, typer.Argument(help="Source checkpoint directory.")],
    grown: Annotated[Path, typer.Argument(help="Grown checkpoint directory (its surgeon.json gives the class and layer map).")],
    engine: Annotated[str, typer.Option(help="torch (transformers), vllm (GROWN in vLLM vs transformers' greedy tokens), or both.")] = "torch",
    prompts: Annotated[Optional[Path], typer.Option(help="Prompts file: one per line, or JSONL with a 'text' field.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens generated per prompt.")] = 16,
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16.")] = "float32",
    expect: Annotated[Optional[str], typer.Option(help="exact, approx or none; overrides surgeon.json (needed without one).")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here ('-': print only JSON).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on any transformers load warning too.")] = False,
    layerwise: Annotated[bool, typer.Option("--layerwise", help="Load one decoder layer at a time (models larger than RAM).")] = False,
    vllm_python: Annotated[Optional[Path], typer.Option(help="Python with vLLM (default: $SURGEON_VLLM_PYTHON, .vllm-venv).")] = None,
) -> None:
    """Check that GROWN behaves as its equivalence class promises; exit 0 only if it does."""
    from modelsurgeon.verify import verify_checkpoint
    from modelsurgeon.verify.report import render

    report = verify_checkpoint(source, grown, engine=engine, prompts=prompts, max_new_tokens=max_new_tokens, dtype=dtype,
                               expect=expect, strict=strict, layerwise=layerwise, vllm_python=vllm_python)  # fmt: skip
    if json_path is not None and str(json_path) != "-":
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if str(json_path) == "-":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(render(report))
    report.raise_if_failed()


@app.command("merge-lora")
@handled
def merge_lora(
    base: Annotated[Path, typer.Argument(help="Checkpoint the adapter was trained on.")],
    adapter: Annotated[Path, typer.Argument(help="peft LoRA adapter directory (adapter_config.json + adapter_model.safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (created atomically).")],
    force: Annotated[bool, flag("--force", help="Replace OUTPUT if it exists.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB, 500MB.")] = "5GB",
) -> None:
    """Merge a LoRA adapter into BASE one tensor at a time (memory does not grow with the model)."""
    from modelsurgeon.train.merge import merge_lora as merge_fn

    shard = parse_byte_size(max_shard_size)
    s = _with_progress(lambda advance: merge_fn(base, adapter, output, force=force, max_shard_size=shard, progress=advance))
    out.print(f"merged {s['merged']} LoRA module(s), replaced {s['replaced']} tensor(s), copied {s['copied']} of {s['tensors']}")
    out.print(f"[green]wrote[/] {output}", highlight=False)


@app.command("train-stage")
@handled
@with_model_options(TrainOptions, panel="Training options (also accepted in --config)")
def train_stage(
    model: Annotated[Path, typer.Argument(help="Checkpoint directory to train (with its tokenizer).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (created atomically).")],
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="YAML file of training options (names as below, e.g. lora_r: 8); flags override it."),
    ] = None,
    resume: Annotated[bool, flag("--resume", help="Continue an interrupted run of this command from its last checkpoint.")] = False,
    force: Annotated[bool, flag("--force", help="Replace OUTPUT if it exists; discard an interrupted run's checkpoints.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB, 500MB.")] = "5GB",
    **fields,
) -> None:
    """Train MODEL for one stage (LoRA, full, or the layers a grow added) and write the merged checkpoint."""
    import shlex

    from modelsurgeon.errors import TrainInterrupted
    from modelsurgeon.train import train_stage as train_fn

    options = load_options(config, fields)
    try:
        result = train_fn(model, output, options, force=force, resume=resume, console=err, max_shard_size=parse_byte_size(max_shard_size))
    except TrainInterrupted as exc:
        exc.hint = "continue with: " + shlex.join(["surgeon", *sys.argv[1:], *([] if resume else ["--resume"])])
        raise
    if result.written:  # under `accelerate launch`, one process reports
        out.print(result.table())
        out.print(f"[green]wrote[/] {output}", highlight=False)


@app.command()
@handled
def progressive(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML: start model, data, eval, train/grow stages, baselines.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory: stages/, baselines/, report.md, summary.json, plots.")],
    resume: Annotated[bool, flag("--resume", help="Continue RUN_DIR: finished stages are skipped, an interrupted one resumes.")] = False,
    force: Annotated[bool, flag("--force", help="Delete RUN_DIR and start over.")] = False,
) -> None:
    """Run a grow-train recipe and its FLOP-matched baselines; write a report with the verdict at equal compute."""
    from modelsurgeon.progressive import run_recipe

    summary = run_recipe(recipe, output, resume=resume, force=force, console=err)
    for line in summary["verdict"]:
        out.print(line, highlight=False)
    out.print(f"[green]wrote[/] {output / 'report.md'}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

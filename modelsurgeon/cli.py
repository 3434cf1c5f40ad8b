"""The `surgeon` command line: thin commands that parse, call one library function, render.

Each command imports its implementation inside its body: every invocation builds all commands
(for --help), so a module-level import is paid by every command. `surgeon grow` of a depth plan
runs at disk speed, and `progressive` alone pulled in torch (importing cli.py took 1.1 s on the
loaded 2-core VM, 0.19 s without it); tests/test_cli_imports.py keeps the pure-copy grow free of
torch, transformers and numpy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from modelsurgeon.cli_common import err, handled, out, parse_byte_size, resolve
from modelsurgeon.cli_options import flag
from modelsurgeon.cli_train import train_app
from modelsurgeon.grow.engine import grow as grow_fn  # the package's __init__ imports it anyway
from modelsurgeon.grow.engine import prepare
from modelsurgeon.io.atomic import clean as clean_fn
from modelsurgeon.plan import load_plan
from modelsurgeon.progress import Progress

# Plain help (rich_markup_mode=None): typer's rich help shows a flag as `--dry-run <bool>`, as if it took a value.
app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 160},
    help="Grow trained language models from their checkpoints.",
)
plan_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Check growth plans; list the shipped ones.")
app.add_typer(plan_app, name="plan")
app.add_typer(train_app)  # train-stage, progressive, sweep (cli_train.py), listed after the commands here


def _print_version(value: bool) -> None:
    if value:
        # lazy: modelsurgeon.verify.runner imports torch/transformers
        from modelsurgeon import __version__

        print(f"surgeon (modelsurgeon) {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Grow trained language models from their checkpoints."""


@app.command()
@handled
def grow(
    model: Annotated[
        Path,
        typer.Argument(help="Source checkpoint directory (config.json + safetensors) or hub id org/name[@revision]."),
    ],
    plan: Annotated[
        Path,
        typer.Option(
            "--plan",
            "-p",
            help="Growth plan YAML, a shipped plan's name (`surgeon plan list`), or a mergekit passthrough config.",
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output directory (created atomically).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the layer map and sizes; write nothing.")] = False,
    force: Annotated[bool, flag("--force", help="Replace OUTPUT if it exists.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB, 500MB.")] = "5GB",
    drift: Annotated[
        bool, typer.Option("--drift", help="With --dry-run: grow into a temp dir and report verify's logit drift.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="After writing, run `surgeon verify` (transformers) on OUTPUT; exit non-zero if it fails."
        ),
    ] = False,
) -> None:
    """Apply a growth plan to a checkpoint."""
    from modelsurgeon.grow.tables import layer_map_table, summary_table, width_table

    model = resolve(model)

    shard = parse_byte_size(max_shard_size)
    if not dry_run and output is None:
        raise typer.BadParameter("-o/--output is required unless --dry-run", param_hint="--output")
    if dry_run and verify:
        raise typer.BadParameter("--verify checks a written output; use --drift with --dry-run", param_hint="--verify")
    prep = prepare(model, plan, shard) if dry_run else _grow_with_progress(grow_fn, model, plan, output, force, shard)
    if prep.loaded.translation:
        out.print(prep.loaded.translation, highlight=False)
    out.print(layer_map_table(prep))
    if prep.width is not None:
        out.print(width_table(prep))
    out.print(summary_table(prep))
    if dry_run and drift:
        # lazy: modelsurgeon.verify.drift imports torch/transformers
        from modelsurgeon.verify.drift import measure_drift

        _, report = measure_drift(model, prep.loaded)
        line = f"measured drift (surgeon verify on a temporary grown copy): {report.drift_line()}"
        out.print(line, highlight=False, soft_wrap=True)
    if not dry_run:
        out.print(f"[green]wrote[/] {output} ({len(prep.tensors)} tensors)")
    if verify and not dry_run:  # the output stays: it was written correctly, it just fails its promise
        # lazy: modelsurgeon.verify.api imports torch/transformers
        from modelsurgeon.verify.api import verify_and_show

        verify_and_show(model, output, out)


def _grow_with_progress(grow_fn, model, plan, output, force, shard):
    return _with_progress(
        lambda progress: grow_fn(model, plan, output, force=force, max_shard_size=shard, progress=progress), "grow"
    )


@app.command()
@handled
def inspect(
    model: Annotated[Path, typer.Argument(help="Checkpoint directory or hub id org/name[@revision].")],
    as_json: Annotated[bool, flag("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a checkpoint's family, layers, parameters, dtypes, shards and per-layer config lists."""
    from modelsurgeon.checkpoint_summary import checkpoint_table, summarize_checkpoint

    model = resolve(model)
    info = summarize_checkpoint(model)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        out.print(checkpoint_table(info))


@plan_app.command("check")
@handled
def plan_check(
    plan: Annotated[Path, typer.Argument(help="Growth plan YAML or a shipped plan's name.")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Also check the plan against this checkpoint's headers.")
    ] = None,
) -> None:
    """Validate a plan (schema; with --model, layer ranges, family and shapes too)."""

    loaded = load_plan(plan)
    if loaded.translation:
        out.print(loaded.translation, highlight=False)
    if model is None:
        out.print(f"[green]ok[/] {plan}: {len(loaded.plan.steps)} step(s), schema valid")
        return

    model = resolve(model)
    prep = prepare(model, loaded)
    out.print(
        f"[green]ok[/] {plan} fits {model}: {prep.layout.num_layers} -> {len(prep.layer_map)} layers, "
        f"{prep.equivalence}"
    )


@plan_app.command("list")
def plan_list() -> None:
    """List the shipped plans, recipes and sweeps: pass a name where a file is taken (`--plan double`)."""
    from modelsurgeon.plan.shipped import shipped_table

    out.print(shipped_table(), highlight=False)


@app.command()
@handled
def demo(
    workdir: Annotated[Path | None, typer.Option(help="Where to write the demo models (default: a temp dir).")] = None,
    model: Annotated[Path | None, typer.Option(help="Grow this checkpoint instead of a tiny one built here.")] = None,
) -> None:
    """Build a tiny model locally, grow it with two shipped plans, check the results."""
    # lazy: modelsurgeon.demo imports torch/transformers
    from modelsurgeon.demo import run_demo

    run_demo(workdir, out, model)


@app.command()
@handled
def convert(
    model: Annotated[Path, typer.Argument(help="Source checkpoint directory (safetensors, or pytorch_model*.bin).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output directory, or one NAME.gguf file (created atomically)."),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            help="Output format: safetensors, bin or gguf (default: gguf for -o NAME.gguf, else safetensors)."
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="Cast floating tensors to float32 (fp32), bfloat16 (bf16) or float16 (fp16) (default: keep)."
        ),
    ] = None,
    max_shard_size: Annotated[
        str,
        typer.Option(
            help="Largest output shard, e.g. 5GB (GGUF: always one file). torch.save builds a whole .bin shard in "
            "memory, so for --to bin this also bounds memory."
        ),
    ] = "5GB",
    dry_run: Annotated[bool, flag("--dry-run", help="Print tensors, dtypes, shards and sizes; write nothing.")] = False,
    force: Annotated[bool, flag("--force", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Convert a checkpoint's format (.bin, safetensors, GGUF), dtype or sharding, one tensor at a time."""
    model = resolve(model)
    # lazy: modelsurgeon.convert imports torch/transformers
    from modelsurgeon.convert import convert as convert_fn

    # lazy: modelsurgeon.convert imports torch/transformers
    from modelsurgeon.convert import prepare_conversion

    # lazy: modelsurgeon.convert.report imports torch/transformers
    from modelsurgeon.convert.report import describe

    shard = parse_byte_size(max_shard_size)
    if not dry_run and output is None:
        raise typer.BadParameter("-o/--output is required unless --dry-run", param_hint="--output")
    if dry_run:
        conv = prepare_conversion(model, to, dtype, shard, output)
    else:
        conv = _with_progress(
            lambda advance: convert_fn(model, output, to, dtype, shard, force, progress=advance), "convert"
        )
    out.print(describe(conv), highlight=False, markup=False, soft_wrap=True)
    out.print("dry run: nothing written" if dry_run else f"[green]wrote[/] {output}", highlight=False)


def _with_progress(run, label: str = "writing"):
    """Call run(advance) under byte progress on stderr: a bar on a terminal, steady plain lines in logs."""

    with Progress(label, console=err) as progress:
        return run(progress)


@app.command()
@handled
def verify(
    source: Annotated[Path, typer.Argument(help="Source checkpoint directory.")],
    grown: Annotated[
        Path, typer.Argument(help="Grown checkpoint directory (its surgeon.json gives the class and layer map).")
    ],
    engine: Annotated[
        str, typer.Option(help="torch (transformers), vllm (GROWN in vLLM vs transformers' greedy tokens), or both.")
    ] = "torch",
    prompts: Annotated[
        Path | None, typer.Option(help="Prompts file: one per line, or JSONL with a 'text' field.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens generated per prompt.")] = 16,
    dtype: Annotated[
        str | None,
        typer.Option(help="float32 (fp32), bfloat16 (bf16) or float16 (fp16) (default: GROWN's weight dtype)."),
    ] = None,
    expect: Annotated[
        str | None, typer.Option(help="exact, approx or none; overrides surgeon.json (needed without one).")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON here ('-': print only JSON).")
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on any transformers load warning too.")] = False,
    layerwise: Annotated[
        bool, typer.Option("--layerwise", help="Load one decoder layer at a time (models larger than RAM).")
    ] = False,
    vllm_python: Annotated[
        Path | None, typer.Option(help="Python with vLLM (default: $SURGEON_VLLM_PYTHON, .vllm-venv).")
    ] = None,
) -> None:
    """Check that GROWN behaves as its equivalence class promises; exit 0 only if it does."""
    source, grown = resolve(source), resolve(grown)
    # lazy: modelsurgeon.verify.runner imports torch/transformers
    from modelsurgeon.verify import verify_checkpoint
    from modelsurgeon.verify.report import render

    with Progress("verify", unit="", console=err, heartbeat=True):  # a log line every interval while models run
        report = verify_checkpoint(
            source,
            grown,
            engine=engine,
            prompts=prompts,
            max_new_tokens=max_new_tokens,
            dtype=dtype,
            expect=expect,
            strict=strict,
            layerwise=layerwise,
            vllm_python=vllm_python,
        )
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
    adapter: Annotated[
        Path, typer.Argument(help="peft LoRA adapter directory (adapter_config.json + adapter_model.safetensors).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (created atomically).")],
    force: Annotated[bool, flag("--force", help="Replace OUTPUT if it exists.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB, 500MB.")] = "5GB",
) -> None:
    """Merge a LoRA adapter into BASE one tensor at a time (memory does not grow with the model)."""
    from modelsurgeon.train.merge import merge_lora as merge_fn

    base, adapter = resolve(base), resolve(adapter)
    shard = parse_byte_size(max_shard_size)
    s = _with_progress(
        lambda advance: merge_fn(base, adapter, output, force=force, max_shard_size=shard, progress=advance),
        "merge-lora",
    )
    out.print(
        f"merged {s['merged']} LoRA module(s), replaced {s['replaced']} tensor(s), copied {s['copied']} of "
        f"{s['tensors']}"
    )
    out.print(f"[green]wrote[/] {output}", highlight=False)


@app.command()
@handled
def clean(
    directory: Annotated[
        Path, typer.Argument(help="Directory to scan (recursively), e.g. an output's parent or a run directory.")
    ],
    dry_run: Annotated[bool, flag("--dry-run", help="List what would be removed; remove nothing.")] = False,
) -> None:
    """Remove temporary output directories left by killed writers (SIGKILL, power loss); never a live one's."""

    for line in clean_fn(directory, dry_run=dry_run).lines(dry_run):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

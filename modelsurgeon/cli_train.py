"""The training commands of `surgeon` (train-stage, progressive, sweep), merged into cli.py's app.
Each imports its implementation inside its body, as in cli.py: they pull in torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from modelsurgeon.cli_common import err, handled, out, parse_byte_size, resolve
from modelsurgeon.cli_options import flag, with_model_options
from modelsurgeon.errors import TrainInterrupted
from modelsurgeon.train.options import TrainOptions, load_options  # train-stage's flags, built for --help

train_app = typer.Typer(rich_markup_mode=None)


@train_app.command("train-stage")
@handled
@with_model_options(TrainOptions, panel="Training options (also accepted in --config)")
def train_stage(
    model: Annotated[Path, typer.Argument(help="Checkpoint directory to train (with its tokenizer).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory (created atomically).")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML file of training options (names as below, e.g. lora_r: 8); flags override it."
        ),
    ] = None,
    resume: Annotated[
        bool, flag("--resume", help="Continue an interrupted run of this command from its last checkpoint.")
    ] = False,
    force: Annotated[
        bool, flag("--force", help="Replace OUTPUT if it exists; discard an interrupted run's checkpoints.")
    ] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB, 500MB.")] = "5GB",
    **fields,
) -> None:
    """Train MODEL for one stage (LoRA, full, or the layers a grow added) and write the merged checkpoint."""
    model = resolve(model)
    import shlex

    # lazy: modelsurgeon.train.shared imports torch/transformers
    from modelsurgeon.train import train_stage as train_fn
    from modelsurgeon.train.sharded import close_process_group

    options = load_options(config, fields)
    try:
        result = train_fn(
            model,
            output,
            options,
            force=force,
            resume=resume,
            console=err,
            max_shard_size=parse_byte_size(max_shard_size),
        )
    except TrainInterrupted as exc:
        exc.hint = "continue with: " + shlex.join(["surgeon", *sys.argv[1:], *([] if resume else ["--resume"])])
        raise
    close_process_group()
    if result.written:  # under `accelerate launch`, one process reports
        out.print(result.table())
        out.print(f"[green]wrote[/] {output}", highlight=False)


@train_app.command()
@handled
def progressive(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="Recipe YAML (start model, data, eval, train/grow stages, baselines) or a shipped recipe's name."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Run directory: stages/, baselines/, report.md, summary.json, plots.")
    ],
    resume: Annotated[
        bool,
        flag("--resume", help="Continue the run in OUTPUT: finished stages are skipped, an interrupted one resumes."),
    ] = False,
    force: Annotated[bool, flag("--force", help="Delete OUTPUT and start over.")] = False,
) -> None:
    """Run a grow-train recipe and its FLOP-matched baselines; write a report with the verdict at equal compute."""
    # lazy: modelsurgeon.progressive.planning imports torch (ops.width)
    from modelsurgeon.progressive import run_recipe

    summary = run_recipe(recipe, output, resume=resume, force=force, console=err)
    for line in summary["verdict"]:
        out.print(line, highlight=False)
    out.print(f"[green]wrote[/] {output / 'report.md'}", highlight=False)


@train_app.command()
@handled
def sweep(
    spec: Annotated[
        str, typer.Argument(help="Sweep YAML (base recipe, seeds, axes), or `report` to aggregate RUN_DIR.")
    ],
    run_dir: Annotated[Path | None, typer.Argument(help="With `report`: the sweep directory.")] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Sweep directory: runs/, tuning/, results.csv, summary.json, report.md."),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Runs at a time, each in its own process.")] = 1,
    threads_per_run: Annotated[
        int | None,
        typer.Option("--threads-per-run", min=1, help="Torch threads per run (default: CPU cores / workers)."),
    ] = None,
    resume: Annotated[
        bool, flag("--resume", help="Continue DIR: finished runs are kept, unfinished ones resume.")
    ] = False,
    force: Annotated[bool, flag("--force", help="Delete DIR and start over.")] = False,
    emit_commands: Annotated[
        bool,
        flag(
            "--emit-commands",
            help="Write the runs' recipes into DIR and print one `surgeon progressive` command per run; run nothing.",
        ),
    ] = False,
    compare_to: Annotated[
        str | None,
        typer.Option(
            "--compare-to",
            help="With `sweep report`: also compare every arm with this one, paired by seed (e.g. arm=full).",
        ),
    ] = None,
) -> None:
    """Run a recipe over axes x seeds (tuned baselines, statistics over seeds), or `sweep report DIR`."""
    from modelsurgeon.sweep import emit, report_dir, run_sweep

    if spec == "report":
        if run_dir is None:
            raise typer.BadParameter("`surgeon sweep report DIR` needs the sweep directory")
        summary = report_dir(run_dir, compare_to)
        out.print(
            f"[green]wrote[/] {run_dir / 'report.md'} ({summary['finished']} of {summary['expected']} runs finished)",
            highlight=False,
        )
        return
    if output is None:
        raise typer.BadParameter("give the sweep directory with -o DIR")
    if emit_commands:
        commands, note = emit(Path(spec), output, threads=threads_per_run, force=force)
        typer.echo("\n".join(commands))  # plain: no markup or wrapping, one command per line
        err.print(note, highlight=False)
        return
    summary = run_sweep(
        Path(spec), output, workers=workers, threads=threads_per_run, resume=resume, force=force, console=err
    )
    out.print(f"[green]wrote[/] {output / 'report.md'} ({summary['finished']} runs)", highlight=False)

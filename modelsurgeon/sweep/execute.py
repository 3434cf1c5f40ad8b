"""Run a sweep: claim DIR, write each run's expanded recipe into its own directory, then run the
pending ones with `surgeon progressive`'s run_recipe (resumable), N at a time in worker
processes that split the CPU threads, grid runs first when something is tuned. The same
recipes back `--emit-commands`, so a cluster runs exactly what this process would have run."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import yaml

from modelsurgeon.errors import OutputError, SweepError, TrainInterrupted
from modelsurgeon.progressive import run_recipe
from modelsurgeon.sweep.collect import is_done
from modelsurgeon.sweep.expand import Job, SweepManifest, expand
from modelsurgeon.sweep.patch import seeded
from modelsurgeon.sweep.report import tuning_table, write_sweep_report
from modelsurgeon.sweep.schema import load_sweep
from modelsurgeon.sweep.tune import tuned_recipe
from modelsurgeon.threads import pin_threads, pinned_threads, threads_per_worker

MANIFEST_FILE = "sweep.json"
RECIPE_FILE = "recipe.yaml"  # the name `surgeon progressive` gives its own copy: the run reuses it


def read_manifest(out_dir: Path) -> SweepManifest:
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        raise SweepError(
            str(out_dir),
            [f"no {MANIFEST_FILE}: not a sweep directory"],
            hint="run `surgeon sweep SWEEP.yaml -o DIR` (or --emit-commands) first",
        )
    return SweepManifest.model_validate_json(path.read_text())


def _same(a: SweepManifest, b: SweepManifest) -> bool:
    analysis = {"sweep_file", "compare_to"}  # how results are read, not what runs
    return a.model_dump(exclude=analysis) == b.model_dump(exclude=analysis)


def claim(out_dir: Path, source_text: str, manifest: SweepManifest, reuse: bool, force: bool) -> None:
    """Create DIR, or reuse it (--resume, --emit-commands) when it holds this very sweep."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if force:
            shutil.rmtree(out_dir)
        elif not reuse:
            raise OutputError(
                f"sweep directory {out_dir} already exists and is not empty",
                hint="continue it with --resume, pick another -o, or start over with --force",
            )
        elif not _same(read_manifest(out_dir), manifest):
            raise SweepError(
                str(out_dir),
                ["its sweep.json differs from this sweep's expansion (the sweep file or its recipe changed)"],
                hint="use the same sweep and recipe, another -o, or --force to start over",
            )
        else:
            return
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.yaml").write_text(source_text)
    tmp = out_dir / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST_FILE)


def job_recipe(manifest: SweepManifest, job: Job, chosen: dict[str, list[float]]) -> dict | None:
    """The recipe data of one run; None for a tuned arm's run while its grid is unfinished."""
    arm = manifest.arm(job.arm)
    mults = job.multipliers if job.phase == "tuning" else chosen.get(arm.name) if arm.tuned else None
    if arm.tuned and mults is None:
        return None
    problems: list[str] = []
    data = tuned_recipe(arm, mults, problems) if mults is not None else arm.template
    if data is None:
        raise SweepError(arm.name, problems, hint="the sweep was validated with these paths; was its recipe edited?")
    return seeded(data, job.seed)


def write_recipe(out_dir: Path, job: Job, data: dict) -> Path:
    """DIR/<run>/recipe.yaml (kept if it already says the same; an error if it says otherwise)."""
    path = out_dir / job.dir / RECIPE_FILE
    if path.is_file():
        if yaml.safe_load(path.read_text()) != data:
            raise SweepError(
                str(path),
                ["this run's recipe differs from the sweep's expansion"],
                hint="the sweep or its recipe changed since the run started; use another -o or --force",
            )
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# {job.arm}, seed {job.seed} ({job.phase}): expanded by surgeon sweep; run with\n"
        f"# surgeon progressive {path.resolve()} -o {path.parent.resolve()} --resume\n"
    )
    tmp = path.with_name(f".{RECIPE_FILE}.tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path


def command(out_dir: Path, job: Job, threads: int | None) -> str:
    run_dir = (out_dir / job.dir).resolve()
    env = f"OMP_NUM_THREADS={threads} " if threads else ""
    return f"{env}surgeon progressive {shlex.quote(str(run_dir / RECIPE_FILE))} -o {shlex.quote(str(run_dir))} --resume"


_SWEEP_PID: int | None = None  # in a worker: the sweep process that started it


def run_job(recipe: str, run_dir: str) -> float:
    """One run (in a worker or in this process): `surgeon progressive RECIPE -o RUN_DIR --resume`."""

    start = time.perf_counter()
    try:
        run_recipe(recipe, run_dir, resume=True)
    finally:
        if _SWEEP_PID is not None and os.getppid() != _SWEEP_PID:
            # orphaned (the run stopped on the kernel's SIGTERM, checkpoint saved): the pool's task
            # queue would block this worker forever, since the worker holds its write end too
            os._exit(128 + signal.SIGTERM)
    return time.perf_counter() - start


def _init_worker(threads: int, parent: int) -> None:
    """A worker's set-up: its share of the threads, and on Linux SIGTERM when the sweep process
    dies, however it dies (SIGKILL, OOM): an orphaned worker would train on for hours beside the
    next sweep. SIGTERM lets a training worker save a resumable checkpoint first."""
    global _SWEEP_PID
    _SWEEP_PID = parent
    pin_threads(threads)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1  # <linux/prctl.h>
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != parent:  # the sweep died before prctl took effect
        os._exit(128 + signal.SIGTERM)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every live worker (a training run checkpoints at the end of its step) and wait for
    them: leaving the pool's `with` on an exception would otherwise wait for every running job."""
    # the executor's own process table: Python < 3.14 has no public terminate_workers()
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, ValueError):
            if proc.is_alive():
                proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)


def execute(out_dir: Path, jobs: list[Job], workers: int, threads: int, console=None) -> None:
    """Run the unfinished `jobs`; every failure is collected and raised together at the end."""
    todo = [j for j in jobs if not is_done(out_dir / j.dir)]
    failures: list[str] = []
    args = {j.dir: (str(out_dir / j.dir / RECIPE_FILE), str(out_dir / j.dir)) for j in todo}
    if workers <= 1:
        with pinned_threads(threads):
            for i, job in enumerate(todo, 1):
                _say(console, f"[{i}/{len(todo)}] {job.dir} ...")
                try:
                    run_job(*args[job.dir])
                except TrainInterrupted:
                    raise
                except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
                    failures.append(f"{job.dir}: {type(exc).__name__}: {exc}")
    else:
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads, os.getpid())
        ) as pool:
            try:
                _collect(pool, todo, args, failures, console)
            except BaseException:  # a stop signal (Interrupted) or a bug here: no worker may outlive the sweep
                _stop_workers(pool)
                raise
    if failures:
        raise SweepError(
            str(out_dir), failures, hint="fix the cause, then rerun with --resume (finished runs are kept)"
        )


def _collect(pool, todo: list[Job], args: dict, failures: list[str], console) -> None:
    futures = {pool.submit(run_job, *args[j.dir]): j for j in todo}
    pending, done_n = set(futures), 0
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for f in finished:
            done_n += 1
            job = futures[f]
            if f.exception() is not None:
                failures.append(f"{job.dir}: {type(f.exception()).__name__}: {f.exception()}")
            _say(console, f"[{done_n}/{len(todo)}] {job.dir}: {'failed' if f.exception() else 'done'}")


def tuning_choices(out_dir: Path, manifest: SweepManifest) -> dict[str, list[float]]:
    """Chosen multipliers of every tuned arm whose grid has finished (report.tuning_table's choice)."""

    return {arm: t["chosen"]["multipliers"] for arm, t in tuning_table(out_dir, manifest).items() if t["chosen"]}


def prepare(sweep_path: Path, out_dir: Path, reuse: bool, force: bool) -> SweepManifest:
    loaded = load_sweep(sweep_path)
    manifest = expand(loaded)
    claim(out_dir, loaded.source_text, manifest, reuse, force)
    return manifest


def _write_phase(out_dir: Path, manifest: SweepManifest, phase: str) -> list[Job]:
    chosen = tuning_choices(out_dir, manifest) if phase == "run" else {}
    jobs = [j for j in manifest.jobs if j.phase == phase]
    for job in jobs:
        data = job_recipe(manifest, job, chosen)
        if data is None:
            raise SweepError(
                job.dir, ["the tuning grid of this arm has not finished"], hint="run the tuning commands first"
            )
        write_recipe(out_dir, job, data)
    return jobs


def run_sweep(
    sweep_path,
    out_dir,
    *,
    workers: int = 1,
    threads: int | None = None,
    resume: bool = False,
    force: bool = False,
    console=None,
) -> dict:
    """Expand and check SWEEP, run every run in OUT_DIR (grids first), write the report; return
    summary.json's data. Raises SweepError (before anything runs, or listing failed runs)."""

    out_dir = Path(out_dir)
    manifest = prepare(Path(sweep_path), out_dir, resume, force)
    threads = threads or threads_per_worker(workers)
    for phase in ("tuning", "run"):
        execute(out_dir, _write_phase(out_dir, manifest, phase), workers, threads, console)
    return write_sweep_report(out_dir)


def emit_commands(sweep_path, out_dir, *, threads: int | None = None, force: bool = False) -> tuple[list[str], str]:
    """The `surgeon progressive` commands of the next phase (the grids while any is unfinished,
    then the runs), their recipes written into OUT_DIR; and a note on what comes after."""
    out_dir = Path(out_dir)
    manifest = prepare(Path(sweep_path), out_dir, True, force)
    grid = _write_phase(out_dir, manifest, "tuning")
    if any(not is_done(out_dir / j.dir) for j in grid):
        note = (
            f"tuning phase: {len(grid)} grid runs; when they have finished, run the same --emit-commands again "
            f"for the {sum(j.phase == 'run' for j in manifest.jobs)} runs that use the chosen values"
        )
        return [command(out_dir, j, threads) for j in grid], note
    runs = _write_phase(out_dir, manifest, "run")
    note = f"{len(runs)} runs; then `surgeon sweep report {out_dir}` aggregates whatever has finished"
    return [command(out_dir, j, threads) for j in runs], note

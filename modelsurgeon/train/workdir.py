"""The work directory beside OUT where the Trainer checkpoints while OUT does not exist yet: its
checkpoints are what --resume continues from, and its run.json what --resume must not change."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from modelsurgeon.errors import TrainError
from modelsurgeon.train.options import TrainOptions

# Options that may change between an interrupted run and its --resume (intervals only).
RESUMABLE_CHANGES = {"eval_every", "save_every", "log_every"}


def work_dir(out: Path) -> Path:
    """Where the Trainer checkpoints while OUT does not exist yet: a hidden sibling of OUT."""
    out = out.resolve()
    return out.parent / f".{out.name}.work"


def run_record(model: Path, options: TrainOptions, world_size: int) -> dict:
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


def claim_work(probe, work: Path, record: dict, resume: bool, force: bool) -> Path | None:
    """One process creates or checks the work directory; all learn the checkpoint to resume from."""
    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import last_checkpoint

    with probe.main_process_first(local=False):
        if probe.process_index == 0:
            return _open_work(work, record, resume, force)
        return last_checkpoint(work) if resume else None


@contextlib.contextmanager
def removed_unless_resumable(work: Path, owner: bool) -> Iterator[None]:
    """On any failure (Ctrl-C included), the owning process removes a work directory that holds
    no checkpoint: nothing to resume, so nothing is left behind."""
    # lazy: modelsurgeon.train.backend imports torch/transformers
    from modelsurgeon.train.backend import last_checkpoint

    try:
        yield
    except BaseException:
        if owner and last_checkpoint(work) is None:
            shutil.rmtree(work, ignore_errors=True)
        raise

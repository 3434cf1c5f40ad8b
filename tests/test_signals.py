"""Preemption and leftovers: SIGTERM, SIGHUP and SIGINT during a write remove the temporary
directory and exit 128 + signal; after SIGKILL the next writer to the same OUT (or `surgeon
clean`) removes the stale directory and says how much it freed; a live writer's directory is
never touched. The matrix runs a real `surgeon grow` process held at a point of its write."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.io import atomic, writer

DOUBLE = "name: d\nsteps:\n  - op: interpolate\n    factor: 2\n    new: zero\n"
TERM, HUP, INT, KILL = signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL

# The real CLI in a child process, with the writer patched to stop at one point of the write
# (HOLD_AT: before the first shard byte, after the first tensor, after the last shard) and
# announce it, so the test signals a process in a known state.
CHILD = """
import os, sys, time
from pathlib import Path
import modelsurgeon.io.writer as w

point, marker = os.environ["HOLD_AT"], Path(os.environ["HOLD_MARKER"])

def hold(here):
    if here == point:
        marker.write_text(str(os.getpid()))
        time.sleep(120)

write_computed, write_shards = w._write_computed, w.write_shards

def tensor_then_hold(t, fd, pos):
    pos = write_computed(t, fd, pos)  # new: zero computes tensors, so shards are written in this thread
    hold("during")
    return pos

def shards_with_holds(*a, **k):
    hold("before")
    result = write_shards(*a, **k)
    hold("after")
    return result

w._write_computed, w.write_shards = tensor_then_hold, shards_with_holds
import importlib  # grow's engine bound write_shards when the package was imported
importlib.import_module("modelsurgeon.grow.engine").write_shards = shards_with_holds
from modelsurgeon.cli import main
sys.argv = ["surgeon", *sys.argv[1:]]
main()
"""


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if atomic.LEFTOVER.match(p.name))


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(DOUBLE)
    return path


def start_held(model: Path, plan: Path, out: Path, point: str) -> tuple[subprocess.Popen, Path]:
    """A `surgeon grow` child stopped at `point`; returns it and its temporary directory."""
    marker = out.parent / f"held-{point}"
    env = {**os.environ, "HOLD_AT": point, "HOLD_MARKER": str(marker), "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [sys.executable, "-c", CHILD, "grow", str(model), "--plan", str(plan), "-o", str(out)]
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"child never reached {point}: rc {child.poll()}\n{child.communicate()[1]}")
        time.sleep(0.05)
    tmp = out.parent / f".{out.name}.tmp-{child.pid}"
    assert tmp.is_dir() and (tmp / atomic.OWNER_FILE).is_file()
    return child, tmp


def signal_held(child: subprocess.Popen, signum: int) -> tuple[int, str]:
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    return child.returncode, stderr


def check_signal_at(tiny, tmp_path, plan, signum, point):
    out = tmp_path / "out"
    child, tmp = start_held(tiny("llama", max_shard_size="40KB"), plan, out, point)
    written = sorted(p.name for p in tmp.glob("*.safetensors"))
    assert written if point != "before" else not written  # the hold really is before/inside/after the shards
    rc, stderr = signal_held(child, signum)
    assert rc == 128 + signum, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_sigterm_during_the_shard_writes(tiny, tmp_path, plan):
    check_signal_at(tiny, tmp_path, plan, TERM, "during")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before", "during", "after"])
@pytest.mark.parametrize("signum", [TERM, HUP, INT], ids=["TERM", "HUP", "INT"])
def test_each_signal_at_each_point(tiny, tmp_path, plan, signum, point):
    check_signal_at(tiny, tmp_path, plan, signum, point)


def test_sigkill_then_rerun_frees_the_leftover(tiny, tmp_path, plan, caplog):
    """SIGKILL cannot be caught: the directory stays, and the next write to OUT removes it."""
    model, out = tiny("llama", max_shard_size="40KB"), tmp_path / "out"
    child, tmp = start_held(model, plan, out, "during")
    rc, _ = signal_held(child, KILL)
    assert rc == -KILL and tmp.is_dir()
    size = atomic.disk_usage(tmp)
    assert size > 0
    result = CliRunner().invoke(app, ["grow", str(model), "--plan", str(plan), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert leftovers(tmp_path) == [] and (out / "config.json").is_file()
    assert not (out / atomic.OWNER_FILE).exists()
    notice = [r.getMessage() for r in caplog.records if r.name == atomic.__name__]
    freed = atomic.format_bytes(size)
    assert notice == [f"removed 1 leftover temporary directory ({freed} freed) of {out}: {tmp.name}"]


def test_a_live_writers_directory_is_left_alone(tiny, tmp_path, plan):
    """While one writer is held mid-write, `clean` and a second writer to the same OUT keep its
    directory; SIGTERM then lets the first writer remove it itself."""
    model, out = tiny("llama", max_shard_size="40KB"), tmp_path / "out"
    child, tmp = start_held(model, plan, out, "during")
    try:
        report = atomic.clean(tmp_path)
        assert [x.path for x in report.kept] == [tmp] and report.removed == []
        assert "still running" in report.kept[0].why
        result = CliRunner().invoke(app, ["grow", str(model), "--plan", str(plan), "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert tmp.is_dir() and (tmp / atomic.OWNER_FILE).is_file()
    finally:
        rc, _ = signal_held(child, TERM)
    assert rc == 128 + TERM and not tmp.exists() and (out / "config.json").is_file()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fake(parent: Path, name: str, owner: dict | None, payload: int = 10_000) -> Path:
    path = parent / name
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"x" * payload)
    if owner is not None:
        (path / atomic.OWNER_FILE).write_text(json.dumps(owner))
    return path


def test_clean_settles_each_kind_of_leftover(tmp_path):
    """Dead owner (by pid, by a reused pid, by a reboot, by the name of an owner-less directory):
    removed; another host's and a live one's: kept; a --force swap killed midway: the previous
    OUT put back; train-stage's resumable work directory: listed, kept."""
    here, dead, me = socket.gethostname(), _dead_pid(), os.getpid()
    ticks = atomic._start_ticks(me)
    runs = tmp_path / "runs"
    (runs / "stage").mkdir(parents=True)
    removed = [
        _fake(runs, f".a.tmp-{dead}", {"host": here, "pid": dead}),
        _fake(runs, f".b.tmp-{dead}", None),  # written by an older version: no owner file
        _fake(runs / "stage", f".model.tmp-{me}", {"host": here, "pid": me, "start_ticks": ticks + 1}),
        _fake(runs, f".c.tmp-{me}", {"host": here, "pid": me, "boot_id": "an-earlier-boot"}),
    ]
    kept = [
        _fake(runs, f".d.tmp-{dead}", {"host": "another-node", "pid": dead}),
        _fake(runs, f".e.tmp-{me}", {"host": here, "pid": me, "start_ticks": ticks, "boot_id": atomic._boot_id()}),
    ]
    swapped = _fake(runs, f".f.old-{dead}", None)
    (runs / ".g.work" / "checkpoint-4").mkdir(parents=True)
    freed = atomic.format_bytes(sum(atomic.disk_usage(p) for p in removed))

    dry = CliRunner().invoke(app, ["clean", str(runs), "--dry-run"])
    assert dry.exit_code == 0 and all(p.is_dir() for p in removed + kept + [swapped])
    assert "would remove 4 leftover temporary directories" in dry.output
    result = CliRunner().invoke(app, ["clean", str(runs)])
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in removed) and all(p.is_dir() for p in kept)
    assert (runs / "f" / "model.safetensors").is_file() and not swapped.exists()
    assert (runs / ".g.work").is_dir()
    text = " ".join(result.output.split())
    assert f"removed 4 leftover temporary directories ({freed} freed)" in text
    for why in (
        "no longer running",
        "now another process",
        "before this machine last booted",
        "another-node",
        "still running",
        "resumable train-stage state",
    ):
        assert why in text


def test_clean_names_leftovers_beside_an_output(tmp_path):
    """`surgeon clean OUT` also finds OUT's own leftovers, which lie beside it."""
    (tmp_path / "out").mkdir()
    stale = _fake(tmp_path, f".out.tmp-{_dead_pid()}", None)
    unrelated = _fake(tmp_path, f".other.tmp-{_dead_pid()}", None)
    assert [x.path for x in atomic.clean(tmp_path / "out").removed] == [stale]
    assert unrelated.is_dir() and not stale.exists()


def _kill_at_first_tensor(monkeypatch, signum):
    write_computed = writer._write_computed

    def write_then_signal(t, fd, pos):
        pos = write_computed(t, fd, pos)
        os.kill(os.getpid(), signum)
        return pos

    monkeypatch.setattr(writer, "_write_computed", write_then_signal)


@pytest.mark.parametrize("command", ["grow", "convert", "merge-lora"])
def test_every_writing_command_cleans_up_on_sigterm(tiny, tmp_path, plan, monkeypatch, command):
    from test_merge_lora import CONFIGS, make_adapter

    model, out = tiny("llama"), tmp_path / "out"
    args = {"grow": ["grow", model, "--plan", plan], "convert": ["convert", model, "--dtype", "bfloat16"]}
    if command == "merge-lora":
        args[command] = ["merge-lora", model, make_adapter(model, tmp_path / "adapter", **CONFIGS["llama"])]
    _kill_at_first_tensor(monkeypatch, TERM)
    result = CliRunner().invoke(app, [str(a) for a in args[command]] + ["-o", str(out)])
    assert result.exit_code == 128 + TERM, result.output
    assert not out.exists() and leftovers(tmp_path) == []

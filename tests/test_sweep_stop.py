"""A stopped `surgeon sweep` leaves no worker behind: killed outright (SIGKILL, the OOM killer),
its workers get SIGTERM from the kernel; stopped with SIGTERM (preemption), it stops its workers
and exits 143. Before, orphaned workers trained on for hours beside the next sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker processes from /proc"),
]

RECIPE = """name: long
init: {family: llama, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
       num_key_value_heads: 2, max_position_embeddings: 64}
data: ["synthetic:arith:n=300,max_k=2"]
defaults: {seq_len: 32, batch_size: 2, log_every: 1, eval_every: 0, save_every: 0, lr: 0.003}
stages:
  - train: {method: full, steps: 100000}
"""
SWEEP = """name: long
recipe: {recipe}
seeds: [0, 1]
axes: {{arm: {{only: {{}}}}}}
baselines: none
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _workers(parent: int) -> list[int]:
    """Live processes whose parent is `parent` and which run multiprocessing's spawn entry point."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmd:
            found.append(int(entry.name))
    return found


def _start(tmp_path: Path) -> tuple[subprocess.Popen, list[int], Path]:
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    (tmp_path / "long.yaml").write_text(SWEEP.format(recipe=tmp_path / "recipe.yaml"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "modelsurgeon", "sweep", str(tmp_path / "long.yaml"), "-o", str(out)]
    proc = subprocess.Popen(
        [*argv, "--workers", "2", "--threads-per-run", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the test signals the sweep process alone, not its group
    )
    deadline = time.time() + 240
    # both workers training: each run's first stage has logged a step
    while time.time() < deadline and len(list(out.glob("runs/*/seed-*/stages/*/.model.work/metrics.jsonl"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.5)
    workers = _workers(proc.pid)
    assert len(workers) == 2, f"expected 2 training workers, found {workers}"
    return proc, workers, out


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def _cleanup(proc: subprocess.Popen, workers: list[int]) -> None:
    for pid in [proc.pid, *workers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()


def test_workers_die_with_a_killed_sweep(tmp_path):
    proc, workers, out = _start(tmp_path)
    try:
        proc.kill()  # SIGKILL: no handler runs in the sweep process
        proc.wait()
        assert _gone_within(workers, 60) == [], "workers outlived the killed sweep"
        # the kernel's SIGTERM reached them mid-training: each saved a resumable checkpoint first
        assert len(list(out.glob("runs/*/seed-*/stages/*/.model.work/checkpoint-*"))) == 2
    finally:
        _cleanup(proc, workers)


def test_sigterm_stops_the_workers_and_exits_143(tmp_path):
    proc, workers, out = _start(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        assert _gone_within(workers, 10) == [], "workers outlived the stopped sweep"
        # each worker was stopped by SIGTERM mid-training: it saved a resumable checkpoint
        assert len(list(out.glob("runs/*/seed-*/stages/*/.model.work/checkpoint-*"))) == 2
    finally:
        _cleanup(proc, workers)

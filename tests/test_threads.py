"""Thread pinning: the test session runs torch on the pinned count, and processes started by a
launcher share the cores instead of each taking all of them."""

from __future__ import annotations

import os

import torch
from conftest import TEST_THREADS

from modelsurgeon.threads import THREAD_ENV, pin_for_launcher, threads_per_worker


def test_session_is_pinned():
    assert torch.get_num_threads() == TEST_THREADS and os.environ["OMP_NUM_THREADS"] == str(TEST_THREADS)


def test_share_per_worker():
    assert (
        threads_per_worker(4, cpus=16) == 4
        and threads_per_worker(3, cpus=2) == 1
        and threads_per_worker(1, cpus=8) == 8
    )


def test_launcher_processes_share_the_cores(monkeypatch):
    for var in THREAD_ENV:
        monkeypatch.setenv(var, "7")  # recorded, so the test restores them
        monkeypatch.delenv(var)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    try:
        assert pin_for_launcher() == 2
        assert torch.get_num_threads() == 2 and all(os.environ[v] == "2" for v in THREAD_ENV)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
        assert pin_for_launcher() is None
    finally:
        torch.set_num_threads(TEST_THREADS)

"""Torch's intra-op threads, pinned so that parallel workers, tests and other jobs sharing the
cores do not oversubscribe them (each torch process otherwise starts one thread per core, and N
processes on C cores then run N*C spinning threads)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask: a SLURM or container limit), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """An even share of the cores for each of `workers` processes, at least one."""
    return max(1, (cpus or available_cpus()) // max(1, workers))


def pin_threads(n: int) -> None:
    """Use n intra-op threads here and in child processes (the variables are read when torch,
    OpenMP or MKL start; torch is told directly when it is already imported)."""
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """pin_threads(n) for the duration of a block, then the caller's settings back (an in-process
    sweep must not leave its worker share behind in the caller's process)."""
    saved = {var: os.environ.get(var) for var in THREAD_ENV}
    torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    pin_threads(n)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if torch_threads is not None:
            sys.modules["torch"].set_num_threads(torch_threads)


def pin_for_launcher() -> int | None:
    """Under torchrun / `accelerate launch` with several local processes, give each its share of
    the cores unless the user chose a thread count (OMP_NUM_THREADS); the count set, or None."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    n = threads_per_worker(local)
    pin_threads(n)
    return n

"""Temporary output directories that do not outlive their writer.

A writer works in a hidden sibling `.OUT.tmp-<pid>` holding an owner file (host, pid, boot id,
process start time). SIGTERM, SIGHUP and SIGINT (preemption on SLURM, Kubernetes, systemd; a
closed terminal; Ctrl-C) raise `Interrupted`, which unwinds like KeyboardInterrupt so the
writer's cleanup removes the directory; the CLI then exits with 128 + the signal number.
SIGKILL and power loss cannot be caught: the next writer to the same OUT, or `surgeon clean`,
removes directories whose owner is provably gone and never one whose owner may be alive."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_FILE = ".surgeon-owner.json"
# .OUT.tmp-<pid>: a writer's temporary output; .OUT.old-<pid>: the previous OUT during --force's swap.
LEFTOVER = re.compile(r"^\.(?P<out>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, n))


class Interrupted(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt, so `except Exception`
    in library code cannot swallow it while cleanup in `finally`/`except BaseException` runs."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Inside, SIGTERM/SIGHUP/SIGINT raise Interrupted in the main thread; a second signal while
    the first unwinds takes its default action at once (a stuck cleanup can still be stopped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux); tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22; the name before ")" may hold spaces


def owner_record() -> dict:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "boot_id": _boot_id(),
        "start_ticks": _start_ticks(pid),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def owner_state(owner: dict) -> tuple[bool | None, str]:
    """(alive, why): True/False when this host can tell, None when the owner is on another host."""
    host, pid = owner.get("host"), int(owner["pid"])
    if host is not None and host != socket.gethostname():
        return None, f"owned by pid {pid} on host {host}, which this host cannot check"
    if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
        return False, f"pid {pid} ran before this machine last booted"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"pid {pid} is no longer running"
    except PermissionError:  # exists, owned by another user
        pass
    start = owner.get("start_ticks")
    if start is not None and _start_ticks(pid) not in (None, start):
        return False, f"pid {pid} is now another process"
    return True, f"pid {pid} is still running"


def claim_temp(out: Path) -> Path:
    """Remove OUT's stale leftovers, then create OUT's temporary sibling with an owner file."""
    out = out.resolve()
    tidy_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # this process's own, from an earlier failed attempt
    tmp.mkdir(parents=True)
    (tmp / OWNER_FILE).write_text(json.dumps(owner_record()) + "\n")
    return tmp


def release_temp(tmp: Path) -> None:
    """Drop the owner file before the rename makes `tmp` the output (the pid in the name still
    marks it as live for a concurrent scan)."""
    (tmp / OWNER_FILE).unlink(missing_ok=True)


@dataclass
class Leftover:
    path: Path
    alive: bool | None
    why: str
    bytes: int = 0


@dataclass
class CleanReport:
    removed: list[Leftover] = field(default_factory=list)
    restored: list[tuple[Leftover, Path]] = field(default_factory=list)  # .old-<pid> put back as OUT
    kept: list[Leftover] = field(default_factory=list)
    work_dirs: list[Path] = field(default_factory=list)  # train-stage's resumable state: never removed

    @property
    def freed(self) -> int:
        return sum(x.bytes for x in self.removed)

    def summary(self) -> str:
        parts = [
            f"removed {len(self.removed)} leftover temporary director{'y' if len(self.removed) == 1 else 'ies'}"
            f" ({format_bytes(self.freed)} freed)"
        ]
        if self.restored:
            parts.append(f"restored {len(self.restored)} previous output(s) a killed --force left aside")
        if self.kept:
            parts.append(f"kept {len(self.kept)} whose owner may be alive")
        return "; ".join(parts)

    def lines(self, dry_run: bool = False) -> list[str]:
        """One line per leftover, then the summary (what `surgeon clean` prints)."""
        verb = "would remove" if dry_run else "removed"
        rows = [f"{verb} {x.path} ({format_bytes(x.bytes)}): {x.why}" for x in self.removed]
        restore = "would restore" if dry_run else "restored"
        rows += [f"{restore} {out} from {x.path}: {x.why}" for x, out in self.restored]
        rows += [f"kept {x.path}: {x.why}" for x in self.kept]
        work = "resumable train-stage state (continue with --resume, or delete it)"
        rows += [f"kept {w}: {work}" for w in self.work_dirs]
        summary = self.summary()
        return rows + [summary.replace("removed", "would remove", 1) if dry_run else summary]


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def disk_usage(path: Path) -> int:
    """Bytes of disk the tree under `path` occupies (allocated blocks, so sparse files count right)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def inspect_leftover(path: Path) -> Leftover | None:
    """A leftover's owner state, from its owner file, else from the pid in its name (directories of
    older versions, or a writer killed between mkdir and the owner file: assumed on this host)."""
    m = LEFTOVER.match(path.name)
    if m is None or not path.is_dir() or path.is_symlink():
        return None
    owner = None
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads((path / OWNER_FILE).read_text())
    if not isinstance(owner, dict) or "pid" not in owner:
        owner = {"pid": int(m["pid"])}
    alive, why = owner_state(owner)
    return Leftover(path, alive, why)


def _settle(item: Leftover, report: CleanReport, dry_run: bool) -> None:
    if item.alive is not False:
        report.kept.append(item)
        return
    m = LEFTOVER.match(item.path.name)
    out = item.path.parent / m["out"]
    if m["kind"] == "old" and not out.exists():  # killed between --force's two renames: OUT was the old one
        if not dry_run:
            os.replace(item.path, out)
        report.restored.append((item, out))
        return
    item.bytes = disk_usage(item.path)
    if not dry_run:
        shutil.rmtree(item.path, ignore_errors=True)
    report.removed.append(item)


def tidy_leftovers(out: Path) -> CleanReport:
    """Settle the leftovers of earlier writers to OUT (beside it), logging what was freed."""
    report = CleanReport()
    if not out.parent.is_dir():
        return report
    for path in sorted(out.parent.glob(f".{glob_escape(out.name)}.*-*")):
        item = inspect_leftover(path)
        if item is not None and LEFTOVER.match(path.name)["out"] == out.name:
            _settle(item, report, dry_run=False)
    if report.removed or report.restored:
        names = ", ".join(x.path.name for x in report.removed)
        log.warning("%s of %s: %s", report.summary(), out, names or "-")
    return report


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def clean(directory: Path, dry_run: bool = False) -> CleanReport:
    """Settle every leftover under DIRECTORY (recursively) and beside it; list train-stage work
    directories (resumable, so never removed here)."""
    directory = directory.resolve()
    report = CleanReport()
    candidates = list(directory.parent.glob(f".{glob_escape(directory.name)}.*-*"))
    for root, dirs, _ in os.walk(directory):
        for name in list(dirs):
            if LEFTOVER.match(name):
                candidates.append(Path(root, name))
                dirs.remove(name)  # its insides are the leftover, not more candidates
            elif name.startswith(".") and name.endswith(".work"):
                report.work_dirs.append(Path(root, name))
    for path in sorted(candidates):
        item = inspect_leftover(path)
        if item is not None:
            _settle(item, report, dry_run)
    return report

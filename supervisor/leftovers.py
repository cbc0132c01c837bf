"""Processes a dead supervisor left behind, found and stopped before a new run starts.

A supervisor killed with SIGKILL cannot stop its job. PR_SET_PDEATHSIG sends the launcher
SIGTERM, but a launcher that ignores it (or a rank orphaned from it) lives on, holding
host and GPU memory the next attempt needs. The next `guardrun run` of the job finds
them two ways, and stops them (SIGTERM, the recipe's grace, SIGKILL) before it starts:

- the launcher recorded in state.json at spawn, as (pid, start time): a pid alone may
  have been reused by now, the pair may not;
- every process whose environment carries `GUARDRUN_JOB_DIR=<this job's state dir>`:
  the supervisor puts it in its own environment before the first spawn, so each
  process of the job inherits it, orphans and double-forked workers included (the way
  tests/conftest.py finds a test's leftovers).

Only a supervisor that holds the job's lock calls this, so no live supervisor owns
what is found.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .clock import Clock
from .proctree import GONE, ProcId, ProcTree

MARK = "GUARDRUN_JOB_DIR"
#: How often the wait for leftovers to exit looks again (same as proc.GRACE_POLL).
POLL = 0.05
#: A leftover alive this long after SIGKILL is stuck in the kernel (D state): report it.
KILL_TIMEOUT = 5.0


@dataclass(frozen=True)
class Cleanup:
    found: tuple[int, ...]   # pids found, launcher first
    killed: tuple[int, ...]  # pids that needed SIGKILL after the grace
    left: tuple[int, ...]    # pids still alive after SIGKILL (D state): empty on success


def mark_value(job_dir: Path) -> str:
    return str(job_dir.resolve())


def mark_environment(job_dir: Path, env: dict | None = None) -> None:
    """Put the job's mark into the supervisor's environment, for its job to inherit."""
    (os.environ if env is None else env)[MARK] = mark_value(job_dir)


def carries_mark(environ: bytes, value: str) -> bool:
    """Whether a /proc/PID/environ block has MARK=value among its NUL-separated entries."""
    return f"{MARK}={value}".encode() in environ.split(b"\0")


def recorded_launcher(state: Mapping | None) -> ProcId | None:
    """The launcher state.json recorded at spawn, if it recorded one."""
    if not state:
        return None
    pid, start = state.get("launcher_pid"), state.get("launcher_start")
    if isinstance(pid, int) and isinstance(start, int) and pid > 0:
        return ProcId(pid, start)
    return None


def find(job_dir: Path, state: Mapping | None, proc_root: str = "/proc",
         me: int | None = None) -> list[ProcId]:
    """The leftover processes of the job: its recorded launcher and that launcher's
    descendants, if that very process still runs, then every process carrying the
    job's mark (never `me`)."""
    me = os.getpid() if me is None else me
    tree = ProcTree(proc_root)
    found: dict[int, ProcId] = {}
    launcher = recorded_launcher(state)
    if launcher is not None and launcher.pid != me and tree.alive(launcher):
        # Its descendants too: a launcher run with a cleared environment hides the mark.
        found.update((ident.pid, ident) for ident in tree.walk(launcher.pid, (me,)).values)
    value = mark_value(job_dir)
    for name in os.listdir(proc_root):
        if not name.isdigit() or int(name) == me or int(name) in found:
            continue
        try:
            with open(os.path.join(proc_root, name, "environ"), "rb") as handle:
                if not carries_mark(handle.read(), value):
                    continue
            ident = tree.identity(int(name))
        except (PermissionError, *GONE):
            continue  # another user's process, or it exited while we looked
        if ident is not None:
            found[ident.pid] = ident
    tree.files.close()
    return list(found.values())


def stop(leftovers: Iterable[ProcId], grace: float, clock: Clock, proc_root: str = "/proc") -> Cleanup:
    """SIGTERM each, wait up to `grace` for all to exit, SIGKILL the rest, check they went.

    They are not our children (re-parented to init or another subreaper), so "gone"
    means the pid no longer names that process (a zombie counts as gone).
    """
    tree = ProcTree(proc_root)
    targets = list(leftovers)
    try:
        for ident in targets:
            tree.signal(ident, signal.SIGTERM)
        alive = _wait(tree, targets, clock, grace)
        killed = tuple(ident.pid for ident in alive if tree.signal(ident, signal.SIGKILL))
        left = _wait(tree, alive, clock, KILL_TIMEOUT)
    finally:
        tree.files.close()
    return Cleanup(tuple(i.pid for i in targets), killed, tuple(i.pid for i in left))


def _wait(tree: ProcTree, targets: list[ProcId], clock: Clock, timeout: float) -> list[ProcId]:
    deadline = clock.monotonic() + timeout
    while True:
        alive = [ident for ident in targets if tree.alive(ident)]
        now = clock.monotonic()
        if not alive or now >= deadline:
            return alive
        clock.sleep(min(POLL, deadline - now))


def start_time(pid: int, proc_root: str = "/proc") -> int | None:
    """The start time (clock ticks after boot) of a live process, to record with its pid."""
    tree = ProcTree(proc_root)
    try:
        ident = tree.identity(pid)
    except GONE:
        return None
    finally:
        tree.files.close()
    return ident.start if ident else None

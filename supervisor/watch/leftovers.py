"""Processes a dead supervisor left behind, found and stopped before a new run starts.

A supervisor killed with SIGKILL cannot stop its job. PR_SET_PDEATHSIG sends the launcher
SIGTERM, but a launcher that ignores it (or a rank orphaned from it) lives on, holding
host and GPU memory the next attempt needs. The next `guardrun run` of the job finds
them by every handle the job has, and stops them before it starts (issue 12 §4):

- the launcher recorded in state.json at spawn, as (pid, start time): a pid alone may
  have been reused by now, the pair may not;
- the launcher's session and process group (it was spawned with start_new_session, so
  both are numbered by its pid): a worker that cleared its environment and whose
  launcher died is still in them. Linux keeps a pid number allocated while any process
  still uses it as a session or group id, so a process found there is the old job's,
  unless that number was freed and reused: taken only while no other process holds
  that pid, and only members started after the launcher;
- every process whose environment carries `GUARDRUN_JOB_DIR=<this job's state dir>`:
  the supervisor puts it in its own environment before the first spawn, so each
  process of the job inherits it (the way tests/conftest.py finds a test's leftovers);
- parent chains: every descendant of a process found, so a rank in a session of its own
  whose worker was started with an empty environment is found through the rank.

Nothing older than the dead supervisor (state.json's supervisor_start) is ever taken,
nor this process or its ancestors. The scan runs again after every signal and every
poll of the stop (proc.stop_members, the one stop shared with an attempt's stop_tree),
so a process that forks on SIGTERM has each new child found and stopped too.

Only a supervisor that holds the job's lock calls this, so no live supervisor owns
what is found. Left undone: a process that cleared its environment, left the session
and lost its parent, all three, is out of reach without a cgroup.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..core.clock import Clock
from . import proc
from .proctree import GONE, ProcId, ProcTree, exited, parse_stat, read_raw

MARK = "GUARDRUN_JOB_DIR"


@dataclass(frozen=True)
class Cleanup:
    found: tuple[int, ...]   # every pid found, launcher first, then as found by the re-scans
    killed: tuple[int, ...]  # pids that needed SIGKILL after the grace
    left: tuple[int, ...]    # pids still alive after SIGKILL (D state): empty on success
    took: float = 0.0        # seconds the stop took


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
    if not isinstance(state, Mapping):
        return None
    pid, start = state.get("launcher_pid"), state.get("launcher_start")
    if _positive_int(pid) and _positive_int(start):
        return ProcId(pid, start)
    return None


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class _Proc:
    ident: ProcId
    ppid: int
    pgrp: int
    session: int


class Finder:
    """The job's live processes by every handle, asked again as often as needed.

    Each call scans /proc once (stat of each process, environ of the candidates: 0.55 ms
    for the 75 processes of this project's VM, 7 us each) and returns the members,
    launcher first. What one call found
    seeds the next, so the children of a member are followed even after the member
    is gone from every other handle.
    """

    def __init__(self, job_dir: Path, state: Mapping | None, proc_root: str = "/proc",
                 me: int | None = None):
        self.proc_root = proc_root
        self._mark = f"{MARK}={mark_value(job_dir)}".encode()
        self._launcher = recorded_launcher(state)
        since = state.get("supervisor_start") if isinstance(state, Mapping) else None
        self._since = since if _positive_int(since) else 0
        self._prefix = os.fsencode(proc_root.rstrip("/")) + b"/"
        self._spare = _self_and_ancestors(self._prefix, os.getpid() if me is None else me)
        self._found: dict[int, ProcId] = {}

    def __call__(self) -> list[ProcId]:
        procs = self._scan()
        seeds = [pid for pid, seen in procs.items() if self._is_seed(pid, seen, procs)]
        members = _descendants(seeds, procs, self._spare)
        launcher = self._launcher
        members.sort(key=lambda pid: (procs[pid].ident != launcher, pid))
        found = [procs[pid].ident for pid in members]
        self._found.update((ident.pid, ident) for ident in found)
        return found

    def _is_seed(self, pid: int, seen: _Proc, procs: dict[int, _Proc]) -> bool:
        if pid in self._spare or seen.ident.start < self._since:
            return False
        launcher = self._launcher
        if seen.ident == launcher or self._found.get(pid) == seen.ident:
            return True
        if launcher is not None and launcher.pid in (seen.session, seen.pgrp) \
                and seen.ident.start >= launcher.start \
                and procs.get(launcher.pid, _Proc(launcher, 0, 0, 0)).ident == launcher:
            return True  # its session or group, while no newcomer holds that number
        return self._carries_mark(pid)

    def _carries_mark(self, pid: int) -> bool:
        try:
            environ = read_raw(self._prefix + b"%d/environ" % pid, 65536)
        except (*GONE, PermissionError):
            return False  # gone, or another user's process
        return self._mark in environ.split(b"\0")

    def _scan(self) -> dict[int, _Proc]:
        procs: dict[int, _Proc] = {}
        for name in os.listdir(self._prefix):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                fields = parse_stat(read_raw(self._prefix + name + b"/stat", 1024))
            except GONE:
                continue
            if not exited(fields):
                procs[pid] = _Proc(ProcId(pid, int(fields[19])), int(fields[1]), int(fields[2]),
                                   int(fields[3]))
        return procs


def _descendants(seeds: list[int], procs: dict[int, _Proc], spare: frozenset[int]) -> list[int]:
    """The seeds and, by parent links, all their live descendants (never `spare`)."""
    children: dict[int, list[int]] = {}
    for pid, seen in procs.items():
        children.setdefault(seen.ppid, []).append(pid)
    order, taken = list(seeds), set(seeds)
    for pid in order:  # grows as children are found
        for child in children.get(pid, ()):
            if child not in taken and child not in spare:
                taken.add(child)
                order.append(child)
    return order


def _self_and_ancestors(prefix: bytes, me: int) -> frozenset[int]:
    """This process and its parent chain: never the job's, whatever they carry."""
    chain, pid = {me}, me
    while pid > 1:
        try:
            pid = int(parse_stat(read_raw(prefix + b"%d/stat" % pid, 1024))[1])
        except (*GONE, ValueError, IndexError):
            break
        chain.add(pid)
    return frozenset(chain)


def find(job_dir: Path, state: Mapping | None, proc_root: str = "/proc",
         me: int | None = None) -> list[ProcId]:
    """The job's leftover processes, found once (Finder, for a stop that looks again)."""
    return Finder(job_dir, state, proc_root, me)()


def stop(leftovers: Callable[[], Iterable[ProcId]] | Iterable[ProcId], grace: float, clock: Clock,
         proc_root: str = "/proc", hurry: Callable[[], bool] | None = None) -> Cleanup:
    """SIGTERM each, wait up to `grace` for all to exit, SIGKILL the rest, check they went.

    `leftovers` is a Finder (asked again after each signal, so what they fork is stopped
    too) or a fixed list. They are not our children (re-parented to init or another
    subreaper), so "gone" means the pid no longer names that process (a zombie counts
    as gone). `hurry()` true (a second ^C) cuts the grace short.
    """
    members = leftovers if callable(leftovers) else (lambda fixed=tuple(leftovers): fixed)
    tree = ProcTree(proc_root)
    try:
        report = proc.stop_members(members, tree, grace=grace, clock=clock, hurry=hurry)
    finally:
        tree.files.close()
    return Cleanup(report.found, report.killed, report.left, report.took)


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

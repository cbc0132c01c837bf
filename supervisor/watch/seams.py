"""The run's two seams to the machine: processes (spawn, the tree, its stop) and memory.

The Supervisor and each attempt take a ProcessOps and a MemorySource (the real ones by
default), so a test can run the loop on fakes (tests/fakes.py) without a process or
the real clock. The real processes stay behind these calls and no others.
"""
from __future__ import annotations

import os
import subprocess
from typing import IO, Callable, Iterable, Protocol, Sequence

from ..core.clock import Clock
from . import proc
from .cgroupfs import Group
from .memory import HostMemory, TreeSample
from .proctree import ProcTree


class Launched(Protocol):
    """The launcher's process as the attempt uses it (subprocess.Popen's subset)."""

    pid: int
    returncode: int | None
    stdout: IO[bytes] | None

    def poll(self) -> int | None: ...
    def send_signal(self, sig: int) -> None: ...
    def wait(self, timeout: float | None = None) -> int: ...


class Tree(Protocol):
    """The launcher's process tree, found by parent links (supervisor.watch.proctree)."""

    def pids(self, root_pid: int | None, exclude: Iterable[int] = ()) -> list[int]: ...


class ProcessOps(Protocol):
    def adopt_orphans(self) -> bool:
        """Become the reaper of the job's orphans (False where the kernel cannot)."""

    def spawn(self, argv: Sequence[str], *, env: dict[str, str], cwd: str,
              join: bytes | None, stdout: IO[bytes] | None = None) -> Launched:
        """The launcher, its output (stdout and stderr) on one pipe, or into `stdout` (a
        helper's log file); `join`: the cgroup.procs it moves into before exec
        (SubprocessError when it cannot)."""

    def tree(self) -> Tree:
        """A fresh view of a launcher's tree (guardrun adopting its orphans)."""

    def stop_tree(self, launched: Launched, tree: Tree, *, grace: float, clock: Clock,
                  hurry: Callable[[], bool], group: Group | None, on_event: proc.Emit) -> proc.StopReport:
        """SIGTERM, the grace, SIGKILL; the tree is gone (or its survivors named) on return.
        `group`: the attempt's cgroup, whose members are stopped too (and killed at once
        where the kernel can). Each signal sent is told to `on_event` (proc.term_sent, ...)."""


class MemorySource(Protocol):
    def sample_tree(self, root_pid: int | None, adopter: int | None = None) -> TreeSample: ...
    def pss(self, pids: Iterable[int]) -> int: ...
    def host(self) -> HostMemory: ...


class RealProcesses:
    """ProcessOps on this machine's processes (supervisor.watch.proc)."""

    def adopt_orphans(self) -> bool:
        return proc.set_child_subreaper()

    def spawn(self, argv: Sequence[str], *, env: dict[str, str], cwd: str,
              join: bytes | None, stdout: IO[bytes] | None = None) -> subprocess.Popen:
        return proc.spawn(list(argv), env=env, cwd=cwd, stdout=subprocess.PIPE if stdout is None else stdout,
                          stderr=subprocess.STDOUT, join=join)

    def tree(self) -> ProcTree:
        return ProcTree(adopter=os.getpid())

    def stop_tree(self, launched, tree, *, grace, clock, hurry, group, on_event) -> proc.StopReport:
        return proc.stop_tree(launched, tree, grace=grace, clock=clock, hurry=hurry, on_event=on_event,
                              **group_stop(group))


def group_stop(group: Group | None) -> dict:
    """stop_tree's arguments for the attempt's cgroup: its members, its kill switch."""
    return {} if group is None else {"group": group.procs, "group_kill": group.kill_switch}

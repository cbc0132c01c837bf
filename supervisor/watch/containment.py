"""Whether a job runs contained (a memory cgroup of its own), and what the loop needs of it.

`containment: auto` (the default) puts the job in a cgroup where this machine allows it
(supervisor.cgroupv1; a delegated v2 is detected by supervisor.cgroup but not used yet)
and falls back to /proc with the reason otherwise; `cgroup` makes it a requirement (the
run is refused, exit 2, when it is impossible); `off` never tries. Nothing here may
fail a run: every error in creating, joining or removing a cgroup becomes a reason
said on the console, in the journal and in `guardrun status`, and the attempt is
watched through /proc as before.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from guardrun.launcher.recipe import Recipe
from guardrun.launcher.units import format_bytes

from . import cgroup, cgroupv1
from .leftovers import start_time
from .memory import HostMemory, ProcfsMemory, TreeSample
from .proctree import ProcId

#: The default hard limit above `limits.host_memory`: guardrun stops the job gracefully
#: at host_memory; the kernel's kill is the backstop for a spike within one interval.
HARD_OVER = cgroup.MAX_OVER_LIMIT


class ContainmentRequired(Exception):
    """`containment: cgroup` and no cgroup could be made: the message says why."""


def hard_limit(recipe: Recipe, total: int) -> int | None:
    """limits.hard_memory in bytes: given, `off` (None), or host_memory + 10% by default."""
    limits = recipe.limits
    given = getattr(limits, "hard_memory", None)
    if given == "off":
        return None
    if given is not None:
        return given.resolve(total)
    if limits.host_memory is None:
        return None
    return int(limits.host_memory.resolve(total) * (1 + HARD_OVER))


class CgroupMemory:
    """ProcfsMemory's interface as the watch loop uses it, read from the attempt's cgroup:
    one memory.stat read, flat in the number of processes; PSS is the same figure."""

    kind = "cgroup"

    def __init__(self, group: cgroupv1.Group, host_source: ProcfsMemory,
                 on_fallback: Callable[[str], None] = lambda why: None):
        self.group, self._host, self._on_fallback = group, host_source, on_fallback
        self.failed = ""  # why the cgroup could not be read: /proc from then on

    def sample_tree(self, root_pid: int | None, adopter: int | None = None,
                    exclude: Iterable[int] = (), reuse: bool = True) -> TreeSample:
        if not self.failed:
            try:
                return TreeSample((root_pid,) if root_pid else (), self.group.anon())
            except (OSError, ValueError) as err:  # removed or emptied under us: never the run's end
                self.failed = f"cannot read {self.group.path / 'memory.stat'} ({err}); sampling through /proc"
                self._on_fallback(self.failed)
        return self._host.sample_tree(root_pid, adopter, exclude, reuse)

    def pss(self, pids: Iterable[int]) -> int:
        if self.failed:
            return self._host.pss(pids)
        try:
            return self.group.anon()  # each page is counted once already: a fresh read
        except (OSError, ValueError):
            return self._host.pss(pids)

    def host(self) -> HostMemory:
        return self._host.host()


@dataclass
class Containment:
    """The job's cgroup (None: watched through /proc) and the attempts' hard limit."""

    job: cgroupv1.JobCgroup | None
    kind: str    # "cgroup v1" or "procfs"
    reason: str  # why, for `guardrun status`
    hard_limit: int | None = None

    def attempt(self, number: int, say: Callable[[str], None],
                emit: Callable[..., None]) -> cgroupv1.Group | None:
        """Attempt `number`'s cgroup, or None (and why, said) when it cannot be made."""
        if self.job is None:
            return None
        try:
            group = self.job.attempt(number, self.hard_limit)
        except cgroupv1.CgroupError as err:
            self.fell_back(f"{err}; this attempt is watched through /proc", say, emit, number)
            return None
        emit("cgroup.attempt", attempt=number, path=str(group.path), hard_limit=self.hard_limit)
        return group

    def fell_back(self, why: str, say: Callable[[str], None], emit: Callable[..., None],
                  number: int) -> None:
        say(f"containment: {why}")
        emit("cgroup.fallback", attempt=number, why=why)

    def finish(self, emit: Callable[..., None]) -> None:
        """Remove the job's (empty) cgroups at the end of the run."""
        if self.job is None:
            return
        left = self.job.remove()
        emit("cgroup.removed", path=str(self.job.path), left=left)


def prepare(recipe: Recipe, job_dir: Path, total: int, mount: Path = cgroupv1.V1_MEMORY) -> Containment:
    """The run's containment, from the recipe's `containment:` and what this machine allows."""
    mode = getattr(recipe, "containment", "auto")
    if mode == "off":
        return Containment(None, "procfs", "containment: off in the recipe")
    why = cgroupv1.why_not(mount)
    if not why:
        try:
            job = cgroupv1.JobCgroup.create(recipe.name, job_dir, mount=mount)
        except cgroupv1.CgroupError as err:
            why = str(err)
        else:
            limit = hard_limit(recipe, total)
            said = f"hard limit {format_bytes(limit)}" if limit else "no hard limit"
            return Containment(job, "cgroup v1", f"the job's own memory cgroup {job.path} ({said})",
                               limit)
    v2 = cgroup.detect()
    why = f"{why}; {v2.reason}" if not v2.cgroup_ok else f"{why}; a delegated cgroup v2 exists, not used yet"
    if mode == "cgroup":
        raise ContainmentRequired(f"containment: cgroup, but no cgroup can be made here: {why}")
    return Containment(None, "procfs", why)


def leftover_members(job_cgroup: Path, proc_root: str = "/proc") -> Callable[[], list[ProcId]]:
    """The live members of a dead supervisor's job cgroup, asked again on each call."""
    group = cgroupv1.Group(job_cgroup)

    def members() -> list[ProcId]:
        found = []
        for pid in group.procs():
            start = start_time(pid, proc_root)
            if start is not None:
                found.append(ProcId(pid, start))
        return found
    return members

"""Whether a job runs contained (a memory cgroup of its own), and what the loop needs of it.

`containment: auto` (the default) puts the job in a cgroup where this machine allows it
(a writable v1 memory hierarchy, supervisor.watch.cgroupv1, first: on a hybrid host memory
is there; else a delegated v2 subtree, supervisor.watch.cgroupv2) and falls back to /proc
with the reasons otherwise; `cgroup` makes it a requirement (the
run is refused, exit 2, when it is impossible); `off` never tries. Nothing here may
fail a run: every error in creating, joining or removing a cgroup becomes a reason
said on the console, in the journal and in `guardrun status`, and the attempt is
watched through /proc as before.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from guardrun.launcher.spec import Recipe
from guardrun.launcher.units import format_bytes

from ..core import events
from ..core.context import Context
from . import cgroupfs, cgroupv1, cgroupv2
from .leftovers import start_time
from .memory import HostMemory, ProcfsMemory, TreeSample
from .proctree import ProcId

#: The default hard limit above `limits.host_memory`: guardrun stops the job gracefully
#: at host_memory; the kernel's kill is the backstop for a spike within one interval.
HARD_OVER = 0.10


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


def high_limit(recipe: Recipe, total: int) -> int | None:
    """v2's memory.high: limits.host_memory, where the kernel starts reclaiming and
    throttling the job before guardrun's own stop (None: no host_memory, no memory.high)."""
    host = recipe.limits.host_memory
    return host.resolve(total) if host is not None else None


class CgroupMemory:
    """ProcfsMemory's interface as the watch loop uses it, read from the attempt's cgroup:
    one memory.stat read, flat in the number of processes; PSS is the same figure."""

    kind = "cgroup"

    def __init__(self, group: cgroupfs.Group, host_source: ProcfsMemory,
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

    job: cgroupfs.JobCgroup | None
    kind: str    # "cgroup v1", "cgroup v2" or "procfs"
    reason: str  # why, for `guardrun status`
    hard_limit: int | None = None
    high: int | None = None  # v2's memory.high (host_memory)

    def attempt(self, number: int, ctx: Context) -> cgroupfs.Group | None:
        """Attempt `number`'s cgroup, or None (and why, said) when it cannot be made."""
        if self.job is None:
            return None
        try:
            group = self.job.attempt(number, self.hard_limit, self.high)
        except cgroupfs.CgroupError as err:
            self.fell_back(f"{err}; this attempt is watched through /proc", ctx)
            return None
        ctx.emit(events.CGROUP_ATTEMPT, attempt=number, path=str(group.path), hard_limit=self.hard_limit)
        return group

    def fell_back(self, why: str, ctx: Context) -> None:
        """Said and journaled (the attempt's context: its emit names the attempt)."""
        ctx.say(f"containment: {why}")
        ctx.emit(events.CGROUP_FALLBACK, why=why)

    def finish(self, emit: Callable[..., None]) -> None:
        """Remove the job's (empty) cgroups at the end of the run."""
        if self.job is None:
            return
        left = self.job.remove()
        emit(events.CGROUP_REMOVED, path=str(self.job.path), left=left)


def prepare(recipe: Recipe, job_dir: Path, total: int, mount: Path = cgroupv1.V1_MEMORY,
            root: Path | None = None, self_cgroup: str | None = None) -> Containment:
    """The run's containment, from the recipe's `containment:` and what this machine allows:
    the first of v1 and v2 that can make the job's cgroup, else /proc with both reasons."""
    mode = getattr(recipe, "containment", "auto")
    if mode == "off":
        return Containment(None, "procfs", "containment: off in the recipe")
    limit = hard_limit(recipe, total)
    high = high_limit(recipe, total) if limit else None  # hard_memory: off: the kernel steps in nowhere
    sources = (("cgroup v1", lambda: cgroupv1.why_not(mount, self_cgroup),
                lambda: cgroupv1.JobCgroup.create(recipe.name, job_dir, mount=mount, self_cgroup=self_cgroup)),
               ("cgroup v2", lambda: cgroupv2.why_not(root, self_cgroup),
                lambda: cgroupv2.JobCgroup.create(recipe.name, job_dir, root=root, self_cgroup=self_cgroup)))
    tried = []
    for kind, why_not, create in sources:
        why = why_not()
        if not why:
            try:
                job = create()
            except cgroupfs.CgroupError as err:
                why = str(err)
            else:
                said = f"hard limit {format_bytes(limit)}" if limit else "no hard limit"
                return Containment(job, kind, f"the job's own memory cgroup {job.path} ({said})", limit, high)
        tried.append(f"{kind}: {why}")
    scope = cgroupv2.detect()
    why = "; ".join(tried + [scope.reason] if scope.cgroup_ok else tried)
    if mode == "cgroup":
        raise ContainmentRequired(f"containment: cgroup, but no cgroup can be made here: {why}")
    return Containment(None, "procfs", why)


def leftover_members(job_cgroup: Path, proc_root: str = "/proc") -> Callable[[], list[ProcId]]:
    """The live members of a dead supervisor's job cgroup, asked again on each call."""
    def members() -> list[ProcId]:
        found = []
        for pid in cgroupfs.subtree_procs(job_cgroup):
            start = start_time(pid, proc_root)
            if start is not None:
                found.append(ProcId(pid, start))
        return found
    return members

"""cgroup v2 containment: a delegated subtree of guardrun's own cgroup.

Where guardrun's own v2 cgroup is writable and offers the `memory` controller (a systemd
unit with Delegate=yes, systemd/guardrun@.service; root where the hierarchy holds memory),
guardrun makes (the layout, names and record: supervisor.watch.cgroupfs)

    <own>/guardrun-supervisor                       guardrun itself, moved here where needed
    <own>/guardrun/<job>-u<uid>-<hash>/attempt-N    memory.max = hard_memory, memory.high = host_memory

The move is v2's "no internal processes" rule: a cgroup that hands a controller to its
children (`+memory` in cgroup.subtree_control) may hold no process itself (the real root
excepted), so where the kernel refuses the enable with guardrun in its cgroup, guardrun
moves into the leaf and tries again. Where that fails too (EBUSY: other processes share
the cgroup, a login shell's session scope), the job is watched through /proc, and why is
said.

Then, the same as v1 but from v2's files: the tree's memory is memory.stat's anon + shmem
(one pread of a held fd, each page counted once); a kernel OOM kill in the attempt is
memory.events' oom_kill (hierarchical: ranks in child cgroups count); the kill switch the
stop's SIGKILL begins with is cgroup.kill (Linux >= 5.14: the whole subtree at once,
escapees included); the stop then re-asks the members, as it does alone on v1.

A transient scope of a systemd user manager (`systemd-run --user --scope`) would be the
other way to a v2 cgroup without root; it wraps the launch command, which the attempt
spawns itself, so it is only detected (detect(), for `guardrun doctor`), not used.
"""
from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from . import cgroupfs
from .cgroupfs import MARK_DIR, CgroupError, job_name

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Where a cgroup2 hierarchy is mounted: the whole tree (unified), or beside v1 (hybrid).
V2_ROOTS = (CGROUP_ROOT, CGROUP_ROOT / "unified")
#: The leaf guardrun moves itself into, so that its own cgroup may enable memory below.
LEAF = "guardrun-supervisor"


@dataclass(frozen=True)
class MemorySource:
    """Whether a systemd user manager delegates memory here, and why (`guardrun doctor`)."""

    kind: str           # "procfs": a scope is never used (see the module's docstring)
    reason: str         # why
    cgroup_ok: bool = False  # whether the user manager has the memory controller


def parse_self_cgroup(text: str) -> str | None:
    """The cgroup v2 path in /proc/PID/cgroup (`0::/user.slice/...`), or None."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def find_root(roots: tuple[Path, ...] | None = None) -> Path | None:
    """The cgroup2 mount: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one."""
    return next((root for root in roots or V2_ROOTS if (root / "cgroup.controllers").is_file()), None)


def base_dir(root: Path, self_cgroup: str | None = None) -> Path:
    """guardrun's own v2 cgroup (the one it left for LEAF counts as its own)."""
    relative = parse_self_cgroup(_self_cgroup() if self_cgroup is None else self_cgroup)
    if relative is None:
        raise CgroupError("this process is in no cgroup v2 (/proc/self/cgroup has no 0:: line)")
    own = root / relative.lstrip("/")
    return own.parent if own.name == LEAF else own


def why_not(root: Path | None = None, self_cgroup: str | None = None) -> str:
    """'' when guardrun's own v2 cgroup can hand the memory controller to job cgroups here."""
    root = find_root() if root is None else root
    if root is None:
        return f"no cgroup v2 hierarchy at {' or '.join(map(str, V2_ROOTS))}"
    try:
        base = base_dir(root, self_cgroup)
    except CgroupError as err:
        return str(err)
    try:
        controllers = (base / "cgroup.controllers").read_text().split()
    except OSError:
        return f"this process's cgroup {base} is not visible here"
    if "memory" not in controllers:
        return (f"the memory controller is not available in {base} (cgroup.controllers: "
                f"{' '.join(controllers) or 'none'}; on a hybrid host memory is on v1; "
                "under systemd: Delegate=yes)")
    if not (os.access(base, os.W_OK) and os.access(base / "cgroup.subtree_control", os.W_OK)):
        return f"{base} is not writable by uid {os.getuid()} (needs root or a delegated subtree)"
    return ""


def enter(base: Path, root: Path, self_cgroup: str | None = None, pid: int | None = None) -> None:
    """Let `base` give memory to job cgroups: `+memory` in its cgroup.subtree_control.
    Where the kernel refuses because processes are in `base` (EBUSY: v2's no-internal-
    processes rule, which exempts only the real root), this process moves into `base/LEAF`
    and tries again; if that fails too, it moves back. CgroupError says why."""
    pid = os.getpid() if pid is None else pid
    control = base / "cgroup.subtree_control"
    try:
        if "memory" in control.read_text().split():
            return  # an earlier job of this process, or another guardrun here, did it
        control.write_text("+memory")
        return
    except OSError as err:
        relative = parse_self_cgroup(_self_cgroup() if self_cgroup is None else self_cgroup) or "/"
        if err.errno != errno.EBUSY or root / relative.lstrip("/") == base / LEAF:
            raise CgroupError(_refused(base, err)) from None
    leaf = base / LEAF
    try:
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(pid))
    except OSError as err:
        _leave(leaf, base, pid, moved=False)
        raise CgroupError(f"cannot move guardrun into {leaf}: {err.strerror}") from None
    try:
        control.write_text("+memory")
    except OSError as err:
        _leave(leaf, base, pid, moved=True)
        raise CgroupError(_refused(base, err)) from None


def _refused(base: Path, err: OSError) -> str:
    shared = (f" (other processes share {base}, e.g. a login shell's scope: run guardrun from "
              "a unit of its own with Delegate=yes)") if err.errno == errno.EBUSY else ""
    return f"cannot enable memory for {base}'s children: {err.strerror}{shared}"


def _leave(leaf: Path, base: Path, pid: int, moved: bool) -> None:
    """Undo enter()'s move: back into `base`, the leaf removed if no other guardrun is in it."""
    try:
        if moved:
            (base / "cgroup.procs").write_text(str(pid))
        leaf.rmdir()
    except OSError:
        pass  # another guardrun of this cgroup is in the leaf, or the move back failed: said by the caller


class Group(cgroupfs.Group):
    """One v2 cgroup directory: anon + shmem of memory.stat is the tree's own memory;
    memory.events counts the kernel's OOM kills in it and below it."""

    STAT_KEYS = (b"\nanon ", b"\nshmem ")
    OOM_COUNTER = ("memory.events", "oom_kill")

    def set_limits(self, hard_limit: int | None, high: int | None = None) -> None:
        """memory.high (reclaim and throttle above it) and memory.max (the OOM kill)."""
        if high:
            (self.path / "memory.high").write_text(str(int(high)))
        if hard_limit:
            (self.path / "memory.max").write_text(str(int(hard_limit)))

    def kill_switch(self) -> bool:
        """cgroup.kill, where the kernel has it (5.14 and later)."""
        switch = self.path / "cgroup.kill"
        if not switch.is_file():
            return False
        try:
            switch.write_text("1")
        except OSError:  # removed meanwhile: nobody is left to kill
            return False
        return True


class JobCgroup(cgroupfs.JobCgroup, Group):
    """The job's v2 cgroup; attempts are its children, memory enabled for them."""

    ATTEMPT = Group

    @staticmethod
    def enable(path: Path) -> None:
        (path / "cgroup.subtree_control").write_text("+memory")

    @classmethod
    def create(cls, job: str, job_dir: Path, uid: int | None = None, root: Path | None = None,
               self_cgroup: str | None = None) -> JobCgroup:
        root = find_root() if root is None else root
        if root is None:
            raise CgroupError("no cgroup v2 hierarchy")
        uid = os.getuid() if uid is None else uid
        base = base_dir(root, self_cgroup)
        enter(base, root, self_cgroup)
        return cls.make(base / MARK_DIR / job_name(job, job_dir, uid), job_dir)

    @classmethod
    def fresh_path(cls, job: str, job_dir: Path, uid: int, root: Path | None = None,
                   self_cgroup: str | None = None) -> Path:
        root = find_root() if root is None else root
        if root is None:
            raise CgroupError("no cgroup v2 hierarchy")
        return base_dir(root, self_cgroup) / MARK_DIR / job_name(job, job_dir, uid)


def detect(root: Path = CGROUP_ROOT, self_cgroup: str | None = None,
           env: Mapping[str, str] | None = None, uid: int | None = None,
           which: Callable[[str], str | None] = shutil.which) -> MemorySource:
    """Whether a systemd user manager here delegates the memory controller (a scope could
    contain a job), for `guardrun doctor`; containment.prepare decides what is used."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    why = scope_why_not(root, self_cgroup, env, uid, which)
    if why:
        return MemorySource("procfs", why)
    return MemorySource("procfs", "a systemd user manager delegates memory, but guardrun does not wrap "
                                  "the launch in a systemd-run scope", cgroup_ok=True)


def scope_why_not(root: Path, self_cgroup: str | None, env: Mapping[str, str], uid: int,
                  which: Callable[[str], str | None]) -> str:
    """'' when `systemd-run --user --scope` could give a job a memory cgroup, else why not."""
    if not (root / "cgroup.controllers").is_file():
        return f"no cgroup v2 hierarchy at {root} (cgroup v1 or hybrid)"
    if parse_self_cgroup(_self_cgroup() if self_cgroup is None else self_cgroup) is None:
        return "this process is in no cgroup v2 (/proc/self/cgroup has no 0:: line)"
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if not runtime or not Path(runtime, "systemd", "private").exists():
        return "no systemd user manager (XDG_RUNTIME_DIR/systemd/private is missing)"
    if which("systemd-run") is None:
        return "systemd-run is not installed"
    manager = root / "user.slice" / f"user-{uid}.slice" / f"user@{uid}.service"
    try:
        controllers = (manager / "cgroup.controllers").read_text().split()
    except OSError:
        return f"no cgroup for the user manager at {manager}"
    if "memory" not in controllers:
        return "the memory controller is not delegated to the user manager"
    return ""


def _self_cgroup() -> str:
    try:
        return Path("/proc/self/cgroup").read_text()
    except OSError:
        return ""

"""cgroup v1 containment: each job a memory cgroup of its own, each attempt a child of it.

Where the v1 `memory` hierarchy is writable (root on a v1 or hybrid host, this kind of
machine), guardrun makes (the layout, names and record: supervisor.watch.cgroupfs)

    <mount>/<its own memory cgroup>/guardrun/<job>-u<uid>-<hash of the job's state dir>/attempt-N

Under its own cgroup, not the mount's root: a limit an admin or a container put on the
supervisor keeps applying to the job (moving the job to the root would escape it).

The launcher joins its attempt's cgroup between fork and exec (proc.spawn writes "0" to
cgroup.procs), so every descendant is a member whatever it does: setsid, double fork,
a cleared environment. Then:

- memory: memory.stat's total_rss + total_shmem, one read, each page counted once (the
  figure procfs needs PSS for); not usage_in_bytes, which counts page cache too;
- backstop: memory.limit_in_bytes, the kernel OOM-kills inside the cgroup when a spike
  crosses it faster than one monitor interval; memory.oom_control's `oom_kill` counts it
  (on v1 only in the victim's own cgroup, so it is read from the attempt's);
- stop: every pid in cgroup.procs, asked again until none is left (proc.stop_members).
memsw (swap) limits are left alone: one limit, simply said. The freezer and pids
hierarchies are not used: the stop re-reads cgroup.procs after every SIGKILL round
(10 ms), so a member forking during the stop is caught by the next round.
"""
from __future__ import annotations

import os
from pathlib import Path

from .cgroupfs import MARK_DIR, CgroupError, job_name
from .cgroupfs import Group as _Group
from .cgroupfs import JobCgroup as _JobCgroup

__all__ = ["CgroupError", "Group", "JobCgroup", "V1_MEMORY", "job_name", "mark_dir", "own_path", "why_not"]

V1_MEMORY = Path("/sys/fs/cgroup/memory")


def own_path(self_cgroup: str, controller: str = "memory") -> str | None:
    """The v1 path of `controller` in /proc/PID/cgroup (`4:memory:/a/b`), or None."""
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and controller in parts[1].split(","):
            return parts[2] or "/"
    return None


def mark_dir(mount: Path = V1_MEMORY, self_cgroup: str | None = None) -> Path:
    """The `guardrun` folder under this process's own memory cgroup."""
    if self_cgroup is None:
        self_cgroup = _read("/proc/self/cgroup")
    relative = own_path(self_cgroup)
    if relative is None:
        raise CgroupError("this process is in no cgroup v1 memory hierarchy (/proc/self/cgroup)")
    return mount / relative.lstrip("/") / MARK_DIR


def why_not(mount: Path = V1_MEMORY, self_cgroup: str | None = None) -> str:
    """'' when a v1 memory hierarchy is mounted and writable here, else why not."""
    if not (mount / "memory.stat").is_file():
        return f"no cgroup v1 memory hierarchy at {mount}"
    try:
        base = mark_dir(mount, self_cgroup).parent
    except CgroupError as err:
        return str(err)
    if not os.access(base, os.W_OK):
        return f"{base} is not writable by uid {os.getuid()} (needs root or a delegated hierarchy)"
    return ""


class Group(_Group):
    """One v1 memory cgroup directory: total_rss + total_shmem of memory.stat is the tree's
    own memory; memory.oom_control counts the kernel's kills in it."""

    STAT_KEYS = (b"\ntotal_rss ", b"\ntotal_shmem ")
    OOM_COUNTER = ("memory.oom_control", "oom_kill")

    def set_limit(self, limit: int) -> None:
        (self.path / "memory.limit_in_bytes").write_text(str(int(limit)))

    def set_limits(self, hard_limit: int | None, _high: int | None = None) -> None:
        """memory.limit_in_bytes; v1 has no memory.high (soft_limit_in_bytes only steers
        reclaim between cgroups), so guardrun's own limit is the only one below it."""
        if hard_limit:
            self.set_limit(hard_limit)

    def limit(self) -> int:
        return int((self.path / "memory.limit_in_bytes").read_text())


class JobCgroup(_JobCgroup, Group):
    """The job's v1 cgroup; attempts are its children."""

    ATTEMPT = Group

    @classmethod
    def create(cls, job: str, job_dir: Path, uid: int | None = None, mount: Path = V1_MEMORY,
               self_cgroup: str | None = None) -> JobCgroup:
        uid = os.getuid() if uid is None else uid
        return cls.make(cls.fresh_path(job, job_dir, uid, mount, self_cgroup), job_dir)

    @classmethod
    def fresh_path(cls, job: str, job_dir: Path, uid: int, mount: Path = V1_MEMORY,
                   self_cgroup: str | None = None) -> Path:
        return mark_dir(mount, self_cgroup) / job_name(job, job_dir, uid)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""

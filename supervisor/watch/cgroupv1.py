"""cgroup v1 containment: each job a memory cgroup of its own, each attempt a child of it.

Where the v1 `memory` hierarchy is writable (root on a v1 or hybrid host, this kind of
machine), guardrun makes

    <mount>/<its own memory cgroup>/guardrun/<job>-u<uid>-<hash of the job's state dir>/attempt-N

Under its own cgroup, not the mount's root: a limit an admin or a container put on the
supervisor keeps applying to the job (moving the job to the root would escape it). The
`guardrun` folder marks the cgroups as guardrun's, the uid and the state dir's hash make
a job's name unique to that user and that job, so nothing else is ever touched.

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

import errno
import hashlib
import os
import re
import time
from pathlib import Path

from .cgroup import parse_keyed, subtree_procs

V1_MEMORY = Path("/sys/fs/cgroup/memory")
MARK_DIR = "guardrun"
#: rmdir of a cgroup whose last member just exited can fail with EBUSY for a moment
#: (the exiting task is still linked); retried this long.
RMDIR_WAIT = 2.0


class CgroupError(Exception):
    """Containment could not be set up; the message says why (shown, journaled)."""


def own_path(self_cgroup: str, controller: str = "memory") -> str | None:
    """The v1 path of `controller` in /proc/PID/cgroup (`4:memory:/a/b`), or None."""
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and controller in parts[1].split(","):
            return parts[2] or "/"
    return None


def job_name(job: str, job_dir: Path, uid: int) -> str:
    """`<job>-u<uid>-<8 hex of the state dir>`: two users, or two state dirs, never collide."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", job)[:64] or "job"
    digest = hashlib.sha256(str(Path(job_dir).resolve()).encode()).hexdigest()[:8]
    return f"{safe}-u{uid}-{digest}"


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


class Group:
    """One v1 memory cgroup directory: its members, its memory, its counters."""

    def __init__(self, path: Path):
        self.path = path
        self._stat_fd: int | None = None  # held: pread costs 2.4 us, open+read+close 4.7 (here)

    def procs(self) -> list[int]:
        """Every pid in this cgroup and its children (a gone cgroup has none)."""
        return subtree_procs(self.path)

    def anon(self) -> int:
        """total_rss + total_shmem of memory.stat, bytes: the tree's own memory, each page once.

        One pread of a held fd and two field lookups: 3.3 us against 23 us for read_text and
        a parse of all ~40 lines (an empty cgroup here; the kernel's part is flat in the
        number of processes: it sums per-cpu counters, not tasks)."""
        if self._stat_fd is None:
            self._stat_fd = os.open(self.path / "memory.stat", os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(self._stat_fd, 8192, 0)
        return _field(data, b"\ntotal_rss ") + _field(data, b"\ntotal_shmem ")

    def close(self) -> None:
        if self._stat_fd is not None:
            os.close(self._stat_fd)
            self._stat_fd = None

    def oom_kills(self) -> int:
        try:
            return parse_keyed((self.path / "memory.oom_control").read_text()).get("oom_kill", 0)
        except OSError:
            return 0

    def set_limit(self, limit: int) -> None:
        (self.path / "memory.limit_in_bytes").write_text(str(int(limit)))

    def limit(self) -> int:
        return int((self.path / "memory.limit_in_bytes").read_text())

    def remove(self) -> list[str]:
        """rmdir the children, then this; what could not be removed (still populated), as text."""
        self.close()
        left = []
        if not self.path.is_dir():
            return left
        for child in sorted(p for p in self.path.iterdir() if p.is_dir()):
            left += Group(child).remove()
        try:
            _rmdir(self.path)
        except OSError as err:
            left.append(f"{self.path}: {err.strerror}")
        return left


class JobCgroup(Group):
    """The job's cgroup; attempts are its children."""

    @classmethod
    def create(cls, job: str, job_dir: Path, uid: int | None = None, mount: Path = V1_MEMORY,
               self_cgroup: str | None = None) -> JobCgroup:
        path = cls.path_for(job, job_dir, uid, mount, self_cgroup)
        for _ in range(3):  # another job's remove() may rmdir the shared parent in between
            try:
                path.mkdir(parents=True, exist_ok=True)
                break
            except FileNotFoundError:
                continue
            except OSError as err:
                raise CgroupError(f"cannot create {path}: {err.strerror}") from None
        else:
            raise CgroupError(f"cannot create {path}: its parent kept disappearing")
        return cls(path)

    @staticmethod
    def path_for(job: str, job_dir: Path, uid: int | None = None, mount: Path = V1_MEMORY,
                 self_cgroup: str | None = None) -> Path:
        uid = os.getuid() if uid is None else uid
        return mark_dir(mount, self_cgroup) / job_name(job, job_dir, uid)

    def remove(self) -> list[str]:
        """The job's cgroup, then the shared `guardrun` folder above it if no other job
        uses it now (another job's rmdir or mkdir racing this one only leaves it there)."""
        left = super().remove()
        if not left:
            try:
                os.rmdir(self.path.parent)
            except OSError:
                pass  # ENOTEMPTY/EBUSY: another job of guardrun's is in it
        return left

    def attempt(self, number: int, hard_limit: int | None) -> Group:
        """A fresh child for attempt `number`, with the kernel's hard limit set."""
        group = Group(self.path / f"attempt-{number}")
        if group.path.is_dir():
            group.remove()  # an empty leftover of an earlier run
        try:
            group.path.mkdir()
            if hard_limit:
                group.set_limit(hard_limit)
        except OSError as err:
            group.remove()
            raise CgroupError(f"cannot set up {group.path}: {err.strerror}") from None
        return group


def _field(data: bytes, key: bytes) -> int:
    """The value of `key` (b"\\nname ") in a memory.stat read, 0 where it is absent."""
    start = data.find(key)
    if start < 0:
        return 0
    start += len(key)
    end = data.find(b"\n", start)
    return int(data[start:end if end >= 0 else len(data)])


def _rmdir(path: Path) -> None:
    deadline = time.monotonic() + RMDIR_WAIT
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""

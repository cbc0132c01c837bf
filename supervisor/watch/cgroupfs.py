"""What cgroup v1 and v2 containment share: the layout, the names, members, removal, the record.

Either version, guardrun makes

    <base>/guardrun/<job>-u<uid>-<hash of the job's state dir>/attempt-N

where <base> is its own cgroup (v1: its memory cgroup; v2: its own cgroup, which it left
for a leaf first). The `guardrun` folder marks the cgroups as guardrun's; the uid and the
state dir's hash make a job's name unique to that user and that job, so nothing else is
ever touched. Where a job's cgroup was made is recorded in its state dir (`cgroup`): the
next run finds a dead supervisor's cgroup there even when it starts from another session
(another own cgroup), and trusts the record only for a path of that name in a `guardrun`
folder.

cgroupv1 and cgroupv2 subclass Group and JobCgroup with what differs: the memory.stat keys,
the OOM counter, the limit files, enabling the controller, the kill switch.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from pathlib import Path

from ..record.statedir import replace_file

MARK_DIR = "guardrun"
#: The file in the job's state dir naming its cgroup (one line: the path).
RECORD = "cgroup"
#: rmdir of a cgroup whose last member just exited can fail with EBUSY for a moment
#: (the exiting task is still linked); retried this long.
RMDIR_WAIT = 2.0


class CgroupError(Exception):
    """Containment could not be set up; the message says why (shown, journaled)."""


def parse_keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file (memory.events, memory.stat, cgroup.events): `key value` lines."""
    values = {}
    for line in text.splitlines():
        key, _sep, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def subtree_procs(path: Path) -> list[int]:
    """Every pid in the cgroup at `path` and its children, v1 or v2 (a cgroup removed
    meanwhile, or gone, has none)."""
    pids: list[int] = []
    for directory, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                pids += [int(p) for p in Path(directory, "cgroup.procs").read_text().split()]
            except OSError:
                continue  # removed meanwhile
    return pids


def job_name(job: str, job_dir: Path, uid: int) -> str:
    """`<job>-u<uid>-<8 hex of the state dir>`: two users, or two state dirs, never collide."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", job)[:64] or "job"
    digest = hashlib.sha256(str(Path(job_dir).resolve()).encode()).hexdigest()[:8]
    return f"{safe}-u{uid}-{digest}"


def field(data: bytes, key: bytes) -> int:
    """The value of `key` (b"\\nname ") in a memory.stat read, 0 where it is absent."""
    if data.startswith(key[1:]):  # the first line (v2's anon) has no newline before it
        start = len(key) - 1
    elif (start := data.find(key)) < 0:
        return 0
    else:
        start += len(key)
    end = data.find(b"\n", start)
    return int(data[start:end if end >= 0 else len(data)])


def record(job_dir: Path, path: Path) -> None:
    """Write where the job's cgroup is into its state dir (atomically)."""
    fd = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_file(fd, RECORD, f"{path}\n".encode())
    finally:
        os.close(fd)


def recorded(job: str, job_dir: Path, uid: int) -> Path | None:
    """The job's cgroup as its state dir recorded it, if that is still a cgroup of this job's
    name in a `guardrun` folder (anything else in the record is not trusted, never touched)."""
    try:
        text = (Path(job_dir) / RECORD).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    path = Path(text)
    ours = (path.is_absolute() and ".." not in path.parts and path.name == job_name(job, job_dir, uid)
            and path.parent.name == MARK_DIR)
    return path if ours and (path / "cgroup.procs").is_file() else None


def forget(job_dir: Path, path: Path) -> None:
    """Drop the record once the cgroup it names is gone (a newer record is kept)."""
    try:
        if (Path(job_dir) / RECORD).read_text().strip() == str(path):
            (Path(job_dir) / RECORD).unlink()
    except OSError:
        pass


class Group:
    """One cgroup directory: its members, its memory, removal. Subclasses name the files."""

    #: memory.stat's keys whose sum is the tree's own memory, each page counted once
    STAT_KEYS: tuple[bytes, ...] = ()
    #: Where the kernel counts its OOM kills in this cgroup: (file, key), each version its own.
    OOM_COUNTER: tuple[str, str]

    def __init__(self, path: Path):
        self.path = path
        self._stat_fd: int | None = None  # held: pread costs 2.4 us, open+read+close 4.7 (here)

    def procs(self) -> list[int]:
        """Every pid in this cgroup and its children (a gone cgroup has none)."""
        return subtree_procs(self.path)

    def oom_kills(self) -> int:
        """The kernel's OOM kills in this cgroup so far (0 where the counter cannot be read)."""
        file, key = self.OOM_COUNTER
        try:
            return parse_keyed((self.path / file).read_text()).get(key, 0)
        except OSError:
            return 0

    @property
    def oom_counter(self) -> str:
        """The counter oom_kills reads, as evidence names it: `memory.events oom_kill`."""
        return " ".join(self.OOM_COUNTER)

    def anon(self) -> int:
        """The tree's own memory from memory.stat, bytes: one pread of a held fd and a lookup
        per key (3.3 us against 23 us for read_text and a parse of every line; the kernel's
        part sums per-cpu counters, not tasks: flat in the number of processes)."""
        if self._stat_fd is None:
            self._stat_fd = os.open(self.path / "memory.stat", os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(self._stat_fd, 8192, 0)
        return sum(field(data, key) for key in self.STAT_KEYS)

    def close(self) -> None:
        if self._stat_fd is not None:
            os.close(self._stat_fd)
            self._stat_fd = None

    def kill_switch(self) -> bool:
        """SIGKILL every member at once where the kernel can (v2's cgroup.kill: the whole
        subtree, atomically, so a member forking meanwhile cannot slip out); False where it
        cannot, and the stop kills member by member (proc.stop_members re-asks either way)."""
        return False

    def remove(self) -> list[str]:
        """rmdir the children, then this; what could not be removed (still populated), as text."""
        self.close()
        left = []
        if not self.path.is_dir():
            return left
        for child in sorted(p for p in self.path.iterdir() if p.is_dir()):
            left += Group(child).remove()
        try:
            rmdir(self.path)
        except OSError as err:
            left.append(f"{self.path}: {err.strerror}")
        return left


class JobCgroup(Group):
    """A job's cgroup; attempts are its children (ATTEMPT: their class, with set_limits)."""

    ATTEMPT: type

    def __init__(self, path: Path, job_dir: Path | None = None):
        super().__init__(path)
        self.job_dir = job_dir  # where the record is, dropped when the cgroup goes

    @classmethod
    def make(cls, path: Path, job_dir: Path | None) -> JobCgroup:
        """mkdir `path` (the `guardrun` folder too), enable the memory controller for the
        attempts below it, record it in the job's state dir."""
        for _ in range(3):  # another job's remove() may rmdir the shared parent in between
            try:
                path.parent.mkdir(exist_ok=True)
                cls.enable(path.parent)
                path.mkdir(exist_ok=True)
                break
            except FileNotFoundError:
                continue
            except OSError as err:
                raise CgroupError(f"cannot create {path}: {err.strerror}") from None
        else:
            raise CgroupError(f"cannot create {path}: its parent kept disappearing")
        job = cls(path, job_dir)
        try:
            cls.enable(path)
            if job_dir is not None:
                record(job_dir, path)
        except OSError as err:
            job.remove()
            raise CgroupError(f"cannot set up {path}: {err.strerror}") from None
        return job

    @staticmethod
    def enable(path: Path) -> None:
        """Make the memory controller available to `path`'s children (v2); v1 needs nothing."""

    @classmethod
    def fresh_path(cls, job: str, job_dir: Path, uid: int) -> Path:
        raise NotImplementedError

    @classmethod
    def path_for(cls, job: str, job_dir: Path, uid: int | None = None, *where, **named) -> Path:
        """This job's cgroup: where its state dir recorded it (a dead supervisor's, whatever
        session it ran in) while that is still there, else where this process makes it."""
        uid = os.getuid() if uid is None else uid
        return recorded(job, job_dir, uid) or cls.fresh_path(job, job_dir, uid, *where, **named)

    def remove(self) -> list[str]:
        """The job's cgroup, then the shared `guardrun` folder above it if no other job
        uses it now (another job's rmdir or mkdir racing this one only leaves it there)."""
        left = super().remove()
        if not left:
            if self.job_dir is not None:
                forget(self.job_dir, self.path)
            try:
                os.rmdir(self.path.parent)
            except OSError:
                pass  # ENOTEMPTY/EBUSY: another job of guardrun's is in it
        return left

    def attempt(self, number: int, hard_limit: int | None, high: int | None = None) -> Group:
        """A fresh child for attempt `number`, with the kernel's limits set."""
        group = self.ATTEMPT(self.path / f"attempt-{number}")
        if group.path.is_dir():
            group.remove()  # an empty leftover of an earlier run
        try:
            group.path.mkdir()
            group.set_limits(hard_limit, high)
        except OSError as err:
            group.remove()
            raise CgroupError(f"cannot set up {group.path}: {err.strerror}") from None
        return group


def rmdir(path: Path) -> None:
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

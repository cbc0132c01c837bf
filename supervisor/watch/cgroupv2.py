"""cgroup v2 containment, where a systemd user manager delegates the memory controller.

In a cgroup of its own (a transient scope: `systemd-run --user --scope -p MemoryHigh=
-p MemoryMax= -- CMD`) the job's memory is one read (`memory.current`, and `memory.stat`'s
anon + shmem, each page counted once: the figure procfs needs PSS for), a kernel OOM kill
inside it is counted (`memory.events` oom_kill), pressure is reported (`memory.pressure`),
and the whole subtree dies atomically with `cgroup.kill` (Linux >= 5.14), escapees
included. MemoryMax turns a runaway job into an OOM kill inside its own scope instead of
one the kernel picks anywhere on the machine.

Detection says whether that is possible here; it is not on cgroup v1 or hybrid hosts,
without a user manager (no systemd, a container), or without the memory controller
delegated. Then the procfs tree (supervisor.memory) is the memory source, and
`guardrun status` says so and why. Every path below the cgroup root is a parameter, so
tests use a fake cgroup tree in a temp dir.

Status: on cgroup v1 jobs run contained (supervisor.cgroupv1, chosen by
supervisor.containment); on v2 this module detects, builds the scope command and reads a
cgroup, tested against fake trees, and attempts are still watched through procfs: running
them in a scope needs a host with a delegated cgroup v2 to be tested on first.
"""
from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from guardrun.launcher.failures import Failure, Kind

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: MemoryMax above guardrun's own limit: guardrun stops the job gracefully at the limit;
#: the kernel's hard stop is a backstop for a spike faster than one monitor interval.
MAX_OVER_LIMIT = 0.10


@dataclass(frozen=True)
class MemorySource:
    """Which memory source is in use, and why (shown by `guardrun status`)."""

    kind: str           # "procfs" or "cgroup"
    reason: str         # why this one
    cgroup_ok: bool = False  # whether a delegated cgroup v2 was found


@dataclass(frozen=True)
class Pressure:
    some_avg10: float  # % of the last 10 s some task of the group waited for memory
    full_avg10: float  # % of the last 10 s all of them did
    some_total: int    # microseconds, cumulative
    full_total: int


def parse_self_cgroup(text: str) -> str | None:
    """The cgroup v2 path in /proc/PID/cgroup (`0::/user.slice/...`), or None."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


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


def parse_keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file (memory.events, memory.stat, cgroup.events): `key value` lines."""
    values = {}
    for line in text.splitlines():
        key, _sep, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def parse_pressure(text: str) -> Pressure:
    """memory.pressure: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line."""
    fields: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        head, *pairs = line.split()
        fields[head] = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    some, full = fields.get("some", {}), fields.get("full", {})
    return Pressure(float(some.get("avg10", 0)), float(full.get("avg10", 0)),
                    int(some.get("total", 0)), int(full.get("total", 0)))


def oom_kill_failure(before: Mapping[str, int], after: Mapping[str, int]) -> Failure | None:
    """host_oom when the kernel OOM-killed something in the job's cgroup between two reads."""
    kills = after.get("oom_kill", 0) - before.get("oom_kill", 0)
    if kills <= 0:
        return None
    return Failure(Kind.HOST_OOM, f"the kernel OOM-killed {kills} process(es) in the job's "
                                  f"cgroup (memory.events oom_kill)")


def scope_limits(tree_limit: int) -> tuple[int, int]:
    """(MemoryHigh, MemoryMax) for a job limited to `tree_limit` bytes."""
    return tree_limit, int(tree_limit * (1 + MAX_OVER_LIMIT))


def scope_argv(unit: str, tree_limit: int | None, argv: Sequence[str]) -> list[str]:
    """The launch wrapped in a transient user scope; systemd-run execs it in place, so the
    scope's process is the launcher itself and its pid is the one guardrun spawned."""
    wrapped = ["systemd-run", "--user", "--scope", "--quiet", "--collect", f"--unit={unit}"]
    if tree_limit:
        high, hard = scope_limits(tree_limit)
        wrapped += ["-p", f"MemoryHigh={high}", "-p", f"MemoryMax={hard}"]
    return wrapped + ["--", *argv]


def detect(root: Path = CGROUP_ROOT, self_cgroup: str | None = None,
           env: Mapping[str, str] | None = None, uid: int | None = None,
           which: Callable[[str], str | None] = shutil.which) -> MemorySource:
    """Whether jobs could run in a delegated cgroup v2 scope here, and which source is used."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    why_not = _why_not(root, self_cgroup, env, uid, which)
    if why_not:
        return MemorySource("procfs", why_not)
    return MemorySource("procfs", "a delegated cgroup v2 is available, but guardrun does not "
                                  "run jobs in a scope yet", cgroup_ok=True)


def _why_not(root: Path, self_cgroup: str | None, env: Mapping[str, str], uid: int,
             which: Callable[[str], str | None]) -> str:
    if not (root / "cgroup.controllers").is_file():
        return f"no cgroup v2 hierarchy at {root} (cgroup v1 or hybrid)"
    if self_cgroup is None:
        try:
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            self_cgroup = ""
    if parse_self_cgroup(self_cgroup) is None:
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


def cgroup_of(pid: int, proc_root: str = "/proc", root: Path = CGROUP_ROOT) -> Path | None:
    """The cgroup v2 directory of a process (where its scope put it)."""
    try:
        relative = parse_self_cgroup(Path(proc_root, str(pid), "cgroup").read_text())
    except OSError:
        return None
    return None if relative is None else root / relative.lstrip("/")


class CgroupMemory:
    """Readings and the kill switch of one cgroup v2 directory."""

    def __init__(self, path: Path):
        self.path = path

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def current(self) -> int:
        """memory.current: everything charged, page cache included."""
        return int(self._read("memory.current"))

    def anon(self) -> int:
        """anon + shmem of memory.stat: the job's own memory, each page counted once."""
        stat = parse_keyed(self._read("memory.stat"))
        return stat.get("anon", 0) + stat.get("shmem", 0)

    def events(self) -> dict[str, int]:
        return parse_keyed(self._read("memory.events"))

    def oom_kills(self) -> int:
        """memory.events' oom_kill (hierarchical on v2: the subtree's), 0 when unreadable;
        the same question cgroupv1.Group answers from memory.oom_control."""
        try:
            return self.events().get("oom_kill", 0)
        except OSError:
            return 0

    def set_limits(self, tree_limit: int) -> None:
        """memory.high at guardrun's limit, memory.max 10% above it (scope_limits)."""
        high, hard = scope_limits(tree_limit)
        (self.path / "memory.high").write_text(str(high))
        (self.path / "memory.max").write_text(str(hard))

    def pressure(self) -> Pressure:
        return parse_pressure(self._read("memory.pressure"))

    def populated(self) -> bool:
        return parse_keyed(self._read("cgroup.events")).get("populated", 0) == 1

    def procs(self) -> list[int]:
        """Every pid in the cgroup and its descendants."""
        return subtree_procs(self.path)

    def kill(self) -> str:
        """Kill the whole subtree: cgroup.kill (atomic, Linux >= 5.14), else SIGKILL each pid.
        Returns which way it went, for the journal."""
        switch = self.path / "cgroup.kill"
        if switch.exists():
            switch.write_text("1")
            return "cgroup.kill"
        for pid in self.procs():  # older kernels: a process forking meanwhile may escape
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        return "SIGKILL each pid in cgroup.procs"

"""The real kernel OOM killer for one bench run: a memory cgroup the size of the pretend machine.

Where the cgroup v1 memory hierarchy is writable (root here), the host-memory scenarios run
the runner's whole command (torchrun or guardrun, and all it starts) in a fresh cgroup

    <mount>/<the bench's own memory cgroup>/bench-oom-<bench pid>-<n>

with memory.limit_in_bytes = the pretend machine's size, joined between fork and exec. The
kernel then does what it does on a full machine: reclaims page cache, and OOM-kills the
process with the highest oom_score when anonymous memory does not fit. guardrun's own
containment nests inside it (its job cgroup is made under its own cgroup, this one).

Kills are counted from memory.oom_control's `oom_kill`. On v1 the kernel counts a kill only
in the victim's own cgroup (mm/memcontrol.c memcg_memory_event stops at the first level on
v1), and guardrun removes its attempt cgroups when an attempt ends; so a thread reads every
cgroup of the subtree every 20 ms and keeps each one's highest count. Where the hierarchy is
not writable, why_not() says why and the bench falls back to bench/oomkiller.py.
"""
from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.watch import cgroupv1, leftovers
from guardrun.supervisor.watch.containment import leftover_members

POLL = 0.02  # s between reads of the subtree's counters
_numbers = itertools.count(1)


def why_not(mount: Path = cgroupv1.V1_MEMORY) -> str:
    """'' when a kernel cap can be made here, else why not (the stand-in runs then)."""
    return cgroupv1.why_not(mount)


class KernelCap:
    """One run's memory cgroup: create, join (preexec), count kills, remove."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        base = cgroupv1.mark_dir().parent  # the bench's own memory cgroup
        self.group = cgroupv1.Group(base / f"bench-oom-{os.getpid()}-{next(_numbers)}")
        self.group.path.mkdir()
        try:
            self.group.set_limit(capacity)
        except OSError:
            self.group.remove()
            raise
        self.peak = 0  # highest total_rss + total_shmem seen, bytes
        self._counts: dict[str, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._join = os.fsencode(self.group.path / "cgroup.procs")

    def preexec(self) -> None:
        """Popen's preexec_fn: the child moves itself in before exec (raw syscalls only)."""
        fd = os.open(self._join, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def start(self, _pid: int | None = None) -> None:
        self._thread.start()

    @property
    def kills(self) -> int:
        """OOM kills by the kernel in this cgroup and every cgroup below it, so far."""
        return sum(self._counts.values())

    def _poll(self) -> None:
        while not self._done.wait(POLL):
            self._read()

    def _read(self) -> None:
        try:
            self.peak = max(self.peak, self.group.anon())
        except OSError:
            pass
        for directory, _dirs, _files in os.walk(self.group.path):
            count = cgroupv1.Group(Path(directory)).oom_kills()
            self._counts[directory] = max(count, self._counts.get(directory, 0))

    def close(self) -> list[str]:
        """Stop counting, SIGKILL any member still there, remove the subtree; what is left."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._read()
        # guardrun's own stop of a cgroup's members (SIGKILL at once, re-asked until none is left)
        report = leftovers.stop(leftover_members(self.group.path), grace=0.0, clock=MonotonicClock())
        left = [f"{self.group.path}: pid {pid} survived SIGKILL" for pid in report.left]
        return left + self.group.remove()

"""A stand-in for the kernel's OOM killer, for a machine with `capacity` bytes for the job.

The fallback of bench/kernelcap.py: where no memory cgroup can be made (no writable cgroup v1
memory hierarchy), the machine cannot be run out of memory without taking the other users'
work with it. So the host-memory scenario then gives the job a pretend machine: a thread sums the anonymous RSS (RssAnon) of every
process of the run (the runner and all its descendants: torchrun or guardrun, agents,
ranks) every `every` seconds, and when the sum is over `capacity` it does what the kernel
does: SIGKILL the process with the most memory (the kernel's oom_score is mostly that).
It runs the same way for torchrun and for guardrun.
"""
from __future__ import annotations

import os
import signal
import threading

import psutil


def rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class OomKiller:
    def __init__(self, capacity: int, every: float = 0.05):
        self.capacity, self.every = capacity, every
        self.kills: list[tuple[int, int]] = []  # (pid, its RssAnon) of each process killed
        self.peak = 0
        self._root: int | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, root_pid: int) -> None:
        """Start watching the tree of `root_pid` (the runner the bench just spawned)."""
        self._root = root_pid
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(self.every):
            try:
                root = psutil.Process(self._root)
                pids = [self._root, *(child.pid for child in root.children(recursive=True))]
            except psutil.NoSuchProcess:
                return
            killed = {pid for pid, _ in self.kills}  # dying: their memory is being freed
            sizes = {pid: rss_anon(pid) for pid in pids if pid not in killed}
            total = sum(sizes.values())
            self.peak = max(self.peak, total)
            if total > self.capacity and sizes:
                victim = max(sizes, key=sizes.get)
                try:
                    os.kill(victim, signal.SIGKILL)
                    self.kills.append((victim, sizes[victim]))
                except ProcessLookupError:
                    pass

"""Hand-written fakes for what this machine cannot give a test on demand.

They stand behind the same interfaces as the real things (supervisor.clock.Clock and
the memory source used by supervisor.attempt), so the loop runs unchanged on them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class FakeClock:
    """Monotonic time that moves only when slept on: tests never wait for real."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


@dataclass
class ScriptedHost:
    total: int
    available: int


@dataclass
class ScriptedTree:
    pids: tuple[int, ...]
    anon: int


@dataclass
class ScriptedMemory:
    """A memory source that replays a list of (fast anon, pss, available) readings."""

    total: int
    readings: list[tuple[int, int, int]]
    pss_calls: int = 0
    position: int = field(default=0)

    def _current(self) -> tuple[int, int, int]:
        return self.readings[min(self.position, len(self.readings) - 1)]

    def sample_tree(self, root_pid: int, adopter: int | None = None, exclude=()) -> ScriptedTree:
        anon = self._current()[0]
        return ScriptedTree((root_pid,), anon)

    def pss(self, pids) -> int:
        self.pss_calls += 1
        return self._current()[1]

    def host(self) -> ScriptedHost:
        reading = self._current()
        self.position += 1
        return ScriptedHost(self.total, reading[2])


from guardrun.launcher.gpus import GpuReading  # noqa: E402  (appended with the GPU fakes)
from guardrun.supervisor.watch.gpu import GpuError  # noqa: E402


class FakeGpuSource:
    """A GPU source (supervisor.gpu.GpuSource) without a GPU: readings come from a
    function the test controls, so a test can make VRAM rise when its job says so.

    `used(index)` gives GPU `index`'s used bytes at each call of devices();
    `procs` maps a GPU index to its processes; `fail` makes every call raise GpuError;
    `process_query` is the supervisor.gpu.QueryChoice it reports (None: not asked yet).
    """

    def __init__(self, count: int = 1, total: int = 80 << 30, used=None, procs=None,
                 name: str = "Fake H100", process_query=None):
        self.count, self.total, self.name = count, total, name
        self.process_query = process_query
        self.used = used or (lambda index: 0)
        self.procs = procs if procs is not None else {}
        self.fail = ""
        self.calls = 0

    def devices(self):
        self.calls += 1
        if self.fail:
            raise GpuError(self.fail)
        return [GpuReading(i, f"GPU-fake-{i}", self.name, used=self.used(i), total=self.total)
                for i in range(self.count)]

    def processes(self, index: int):
        if self.fail:
            raise GpuError(self.fail)
        return list(self.procs.get(index, ()))

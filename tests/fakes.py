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

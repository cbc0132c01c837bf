"""Time as the supervisor sees it: a monotonic reading and a way to wait.

Everything that measures a duration or waits takes a `Clock`, so tests can pass
tests.fakes.FakeClock and never sleep for real. Wall-clock time (`time.time()`) is
never used for durations: it jumps with NTP and with the user's date command.
"""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (its origin means nothing)."""

    def sleep(self, seconds: float) -> None:
        """Wait this long; a negative value waits not at all."""


class MonotonicClock:
    """The real clock: CLOCK_MONOTONIC and time.sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

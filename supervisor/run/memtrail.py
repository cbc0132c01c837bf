"""Sparse memory samples for the journal (`guardrun.memory.sample`), so that `guardrun report`
can draw the job's memory over time against its limits.

The watch loop samples every interval (0.1-0.5 s); journaling each would be ~30,000 lines
an hour. A sample is journaled at the attempt's first reading, then when a figure moved by
more than CHANGE of its last journaled value (at least MIN_CHANGE bytes), when EVERY
seconds passed, and always on the reading that stopped the job. A steady job costs 720
small lines an hour; a ramp is drawn in steps of 5%.
"""
from __future__ import annotations

from typing import Any, Callable

from ..core import events
from .policy import MemoryReading

EVERY = 5.0
CHANGE = 0.05
MIN_CHANGE = 8 << 20


def moved(old: int | None, new: int | None) -> bool:
    if old is None or new is None:
        return old != new
    return abs(new - old) > max(MIN_CHANGE, CHANGE * abs(old))


def sample_fields(reading: MemoryReading, gpu: Any = None) -> dict[str, Any]:
    """The event's fields: the tree (fast and, when measured, PSS), MemAvailable, and each of
    the job's GPUs as [index, used, total, limit] (limit null without `limits.vram`)."""
    fields: dict[str, Any] = {"tree": reading.tree_fast, "pss": reading.tree_pss,
                              "available": reading.available}
    if gpu is not None:
        limit = gpu.limit
        fields["gpus"] = [[r.index, r.used, r.total, limit.resolve(r.total) if limit else None]
                          for r in gpu.gpus()]
    return fields


class MemoryTrail:
    """Decides which readings of one attempt go into the journal, and emits them."""

    def __init__(self, attempt: int, emit: Callable[..., None], every: float = EVERY):
        self.attempt, self.emit, self.every = attempt, emit, every
        self._at: float | None = None
        self._last: dict[str, Any] = {}

    def due(self, now: float, fields: dict[str, Any]) -> bool:
        if self._at is None or now - self._at >= self.every:
            return True
        if any(moved(self._last.get(key), fields.get(key)) for key in ("tree", "available")):
            return True
        old = {g[0]: g[1] for g in self._last.get("gpus") or ()}
        return any(moved(old.get(g[0]), g[1]) for g in fields.get("gpus") or ())

    def record(self, now: float, reading: MemoryReading, gpu: Any = None, force: bool = False) -> None:
        fields = sample_fields(reading, gpu)
        if force or self.due(now, fields):
            self._at, self._last = now, fields
            self.emit(events.MEMORY_SAMPLE, attempt=self.attempt, **fields)

"""What the pieces of a run need from the loop, passed as one thing: the clock, where facts
go (the journal's emit), where lines go (the console's say), and what signals asked for.

The loop makes one for the run and one per attempt (`for_attempt`), whose emit puts
`attempt` on every event (README: every attempt event has it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from .clock import Clock
from .signals import Requests


@dataclass(frozen=True)
class Context:
    clock: Clock
    emit: Callable[..., None]
    say: Callable[[str], None]
    requests: Requests = field(default_factory=Requests)

    def for_attempt(self, number: int) -> Context:
        """The same, with `attempt=number` on every event it emits."""
        emit = self.emit

        def emit_fact(event: str, **fields) -> None:
            emit(event, **{"attempt": number, **fields})
        return dataclasses.replace(self, emit=emit_fact)

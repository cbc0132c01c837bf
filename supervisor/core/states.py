"""The job's states and the one function every transition goes through (supervisord's shape).

A leaf module: `transition` checks the source state, so an impossible move (say,
finished -> running) is a bug that shows at once instead of a journal that lies.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class State(str, enum.Enum):
    STARTING = "starting"      # planning, validating checkpoints, spawning
    RUNNING = "running"        # the job's tree is spawned and watched
    STOPPING = "stopping"      # stopping a launcher still running: SIGTERM, the grace, SIGKILL
    BACKOFF = "backoff"        # between attempts
    FINISHED = "finished"      # the job succeeded (exit 0)
    GAVE_UP = "gave_up"        # restarts used up, ladder exhausted, or user_error
    INTERRUPTED = "interrupted"  # the user or systemd stopped it

    def __str__(self) -> str:
        return self.value


#: The states a run ends in: the supervisor exits once it reaches one.
TERMINAL = frozenset({State.FINISHED, State.GAVE_UP, State.INTERRUPTED})

ALLOWED: dict[State, frozenset[State]] = {
    # STARTING -> FINISHED: nothing was left to train (issue 13: the checkpoint to resume
    # is at the end of training); said and recorded, nothing launched.
    State.STARTING: frozenset({State.RUNNING, State.FINISHED, State.GAVE_UP, State.INTERRUPTED}),
    State.RUNNING: frozenset({State.STOPPING, State.BACKOFF, State.FINISHED, State.GAVE_UP,
                              State.INTERRUPTED}),
    # STOPPING -> FINISHED: the job reached its target, then hung in teardown and was
    # stopped (policy.classify: a success, not relaunched).
    State.STOPPING: frozenset({State.BACKOFF, State.FINISHED, State.GAVE_UP, State.INTERRUPTED}),
    State.BACKOFF: frozenset({State.STARTING, State.GAVE_UP, State.INTERRUPTED}),
    State.FINISHED: frozenset(),
    State.GAVE_UP: frozenset(),
    State.INTERRUPTED: frozenset(),
}


@dataclass(frozen=True)
class GiveUp:
    """Why the run goes to gave_up, as it is said and journaled ("restarts used up (3)")."""

    why: str


class TransitionError(RuntimeError):
    pass


def check_transition(source: State, target: State) -> State:
    """`target` if the move from `source` is allowed, else TransitionError."""
    if target not in ALLOWED[source]:
        raise TransitionError(f"illegal transition {source} -> {target}")
    return target

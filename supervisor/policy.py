"""Pure decisions: is the job over its limits, and why did an attempt end.

No clock, no /proc, no subprocess in here: the loop measures, this module judges, so
every rule is tested with plain values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.units import format_bytes

from .logs import Event, first_failure

#: The fast figure (summed anonymous RSS) over-counts a forked tree's copy-on-write pages
#: (FIELD_NOTES: 65 forked processes summed to 322 MB RSS). Above this share of the limit
#: the loop measures PSS before it acts, so a job is never stopped on a double count.
CONFIRM_AT = 0.9


@dataclass(frozen=True)
class MemoryLimits:
    """The recipe's host limits, resolved to bytes against this machine."""

    tree: int | None        # the job tree's memory (anon + shmem, PSS-confirmed)
    min_available: int | None  # MemAvailable must stay above this


@dataclass(frozen=True)
class MemoryReading:
    tree_fast: int             # summed anonymous RSS of the tree (cheap, over-counts)
    available: int             # MemAvailable
    tree_pss: int | None = None  # PSS anon + shmem, when measured


@dataclass(frozen=True)
class Verdict:
    failure: Failure | None = None
    confirm: bool = False  # measure PSS and ask again before deciding

    @property
    def stop(self) -> bool:
        return self.failure is not None


KEEP_GOING = Verdict()


def judge_memory(reading: MemoryReading, limits: MemoryLimits) -> Verdict:
    """Stop for host_oom, keep going, or ask for a PSS confirmation first."""
    if limits.min_available is not None and reading.available < limits.min_available:
        return Verdict(Failure(Kind.HOST_OOM, (
            f"MemAvailable {format_bytes(reading.available)} fell below min_available "
            f"{format_bytes(limits.min_available)}")))
    if limits.tree is None or reading.tree_fast < CONFIRM_AT * limits.tree:
        return KEEP_GOING
    if reading.tree_pss is None:
        return Verdict(confirm=True)
    if reading.tree_pss >= limits.tree:
        return Verdict(Failure(Kind.HOST_OOM, (
            f"job memory {format_bytes(reading.tree_pss)} (PSS) reached the limit "
            f"{format_bytes(limits.tree)}")))
    return KEEP_GOING


@dataclass(frozen=True)
class AttemptEnd:
    """Everything known when an attempt is over, for `classify`."""

    exit_code: int | None           # the launcher's; negative = killed by that signal
    events: Sequence[Event] = ()    # what the output said, in order
    stopped_for: Failure | None = None  # guardrun stopped it, and why
    interrupted: bool = False       # the user or systemd asked guardrun to stop
    progressed: bool = False        # any training step was seen
    attempt: int = 0
    last_step: int | None = None


def classify(end: AttemptEnd, history: Sequence[Failure] = ()) -> Failure | None:
    """None when the attempt succeeded, else the Failure to record."""
    def failure(kind: Kind, evidence: str) -> Failure:
        return Failure(kind, evidence, attempt=end.attempt, step=end.last_step)

    if end.interrupted:
        return failure(Kind.INTERRUPTED, "stopped on request")
    if end.stopped_for is not None:
        return failure(end.stopped_for.kind, end.stopped_for.evidence)
    if end.exit_code == 0:
        return None
    events = end.events
    if end.progressed:
        # An ImportError printed by a library that then trained fine is not why it died.
        events = [event for event in events if event.kind != "user_error"]
    found = first_failure(events)
    if found is not None and found.kind in _EVENT_KINDS:
        kind = _EVENT_KINDS[found.kind]
    elif end.exit_code in (-9, 137):
        kind = Kind.HOST_OOM  # the launcher itself died of SIGKILL: the kernel's OOM killer
        found = None
    else:
        kind = Kind.UNKNOWN
    evidence = found.text if found is not None else f"exit code {end.exit_code}"
    if kind is Kind.UNKNOWN and not end.progressed and _same_start_error(evidence, history):
        return failure(Kind.USER_ERROR, f"the same error twice before any progress: {evidence}")
    return failure(kind, evidence)


_EVENT_KINDS = {
    "host_oom": Kind.HOST_OOM,
    "cuda_oom": Kind.CUDA_OOM,
    "user_error": Kind.USER_ERROR,
    "transient": Kind.TRANSIENT,
    "nan": Kind.NAN_LOSS,
}


def _same_start_error(evidence: str, history: Sequence[Failure]) -> bool:
    """The crash-loop guard: this attempt died at start exactly as the last one did."""
    if not history:
        return False
    last = history[-1]
    return last.kind is Kind.UNKNOWN and last.step is None and last.evidence == evidence


def backoff(failures_at_rung: int, first: float, cap: float) -> float:
    """Seconds to wait before the next attempt: none after a change of rung, then doubling.

    A new rung is a new configuration, so it starts at once; only a restart of the same
    configuration (transient, unknown) waits, first, 2×first, ... up to cap.
    """
    if failures_at_rung <= 0:
        return 0.0
    return min(cap, first * 2 ** (failures_at_rung - 1))

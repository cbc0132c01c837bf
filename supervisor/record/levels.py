"""How much a line or an event matters: `info`, `warning`, `error`, the names log shippers
and journald know (syslog priorities 6, 4 and 3).

An event's level comes from its name (and, for an attempt's end, its kind): the journal
writes it as `level` (README, "What guardrun keeps"). One of guardrun's console lines
carries its level in the text itself (`warning(...)`, `error(...)`: a str, so every
console, systemd's included, takes it unchanged); on journald the console prefixes it.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..core import events

INFO, WARNING, ERROR = "info", "warning", "error"
#: syslog's priorities, what journald reads from a `<N>` line prefix.
PRIORITY = {ERROR: 3, WARNING: 4, INFO: 6}

#: Events that say something went wrong without ending the run.
_WARNINGS = frozenset({
    events.ATTEMPT_SPAWN_FAILED, events.OUTPUT_STILL_OPEN, events.LIMIT_BREACHED,
    events.DIAGNOSIS_STOP, events.HANG_DETECTED, events.STACKS_SKIPPED, events.CGROUP_FALLBACK,
    events.CGROUP_OOM_KILL, events.CGROUP_NOT_REMOVED, events.GPU_UNAVAILABLE, events.GPU_WARNING,
    events.GPU_STUCK, events.PREFLIGHT_NONE_FITS, events.CHECKPOINT_INCOMPLETE,
    events.CHECKPOINT_NOT_QUARANTINED, events.CHECKPOINT_BATCH_NOT_FIXED,
    events.EXTENSION_LOCK_KEPT, events.LOGGING_SUSPENDED,
})


def of_event(name: str, fields: Mapping[str, Any]) -> str:
    """`error` for giving up, `warning` for a failed attempt and what went wrong, `info` else."""
    if name == events.RUN_GAVE_UP:
        return ERROR
    if name == events.ATTEMPT_ENDED:
        return INFO if fields.get("kind") == "success" else WARNING
    return WARNING if name in _WARNINGS else INFO


class Leveled(str):
    """A console line that is not `info`."""

    level: str

    def __new__(cls, text: str, level: str) -> "Leveled":
        line = super().__new__(cls, text)
        line.level = level
        return line


def warning(text: str) -> str:
    return Leveled(text, WARNING)


def error(text: str) -> str:
    return Leveled(text, ERROR)


def of_line(text: str) -> str:
    return getattr(text, "level", INFO)

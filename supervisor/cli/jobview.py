"""What `guardrun status` and `guardrun list` show, from state.json and the job's lock.

Pure functions: the caller reads the files and the lock holder; these decide what is
true and how it reads. The lock is the truth about liveness: state.json is written by a
supervisor that may have been SIGKILLed since, so a "running" state whose job lock
nobody holds is shown as dead, never as running.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from guardrun.launcher.units import format_duration

LIVE_STATES = frozenset({"starting", "running", "stopping", "backoff"})

#: The types of the state.json fields that status, list and stop compute with; a field of
#: another type (a damaged or hand-edited file) is dropped rather than crash them.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "state": (str,), "pid": (int,), "attempt": (int,), "rung": (int,), "step": (int,),
    "started": (str,), "updated": (str,), "root_cause": (dict,), "gave_up": (str,),
    "memory_source": (str,), "memory_source_why": (str,), "launcher_pid": (int,),
    "launcher_start": (int,), "dead_note": (str,),
}


def well_typed(state: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """state.json's fields without those of the wrong type, and the names of those dropped."""
    kept, dropped = {}, []
    for key, value in (state or {}).items():
        types = FIELD_TYPES.get(key)
        if value is not None and types is not None and (
                not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            dropped.append(key)
        else:
            kept[key] = value
    return kept, dropped



def parse_iso(text: Any) -> float | None:
    """Seconds since the epoch of a state.json time (`2026-11-25T10:55:31+0000`)."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def view(name: str, state: Mapping[str, Any] | None, holder: int | None, now: float) -> dict[str, Any]:
    """One job as `status --json` gives it: state.json plus what is true now.

    `holder` is the pid holding the job's lock (None: no supervisor runs). `alive` and
    `state` come from it; `uptime` is how long the live supervisor has run, `ran` how
    long a finished one did.
    """
    state = dict(state or {})
    recorded = state.get("state", "unknown")
    alive = holder is not None
    if alive and holder != state.get("pid"):
        current = "starting"  # a new supervisor took the lock but has not written yet
        state["pid"] = holder
    elif not alive and recorded in LIVE_STATES:
        current = "dead"
        state["dead_note"] = (f"its supervisor (pid {state.get('pid')}) is gone; it was {recorded} "
                              f"(`guardrun run` again stops what it left)")
    else:
        current = recorded
    started, updated = parse_iso(state.get("started")), parse_iso(state.get("updated"))
    out = {**state, "job": name, "state": current, "recorded_state": recorded, "alive": alive}
    if started is not None:
        out["uptime_s" if alive else "ran_s"] = round((now if alive else (updated or started)) - started)
    return out


def extra_lines(job: Mapping[str, Any]) -> list[str]:
    """What `guardrun status` adds under the per-field lines: liveness, uptime, memory source."""
    lines = []
    if job.get("dead_note"):
        lines.append(f"  {job['dead_note']}")
    if job.get("alive"):
        lines.append(f"  supervisor: pid {job.get('pid')}, up {format_duration(job.get('uptime_s'))}")
    elif "ran_s" in job:
        lines.append(f"  ran: {format_duration(job['ran_s'])}")
    if job.get("memory_source"):
        why = f" ({job['memory_source_why']})" if job.get("memory_source_why") else ""
        lines.append(f"  memory source: {job['memory_source']}{why}")
    return lines


def list_lines(jobs: list[Mapping[str, Any]]) -> list[str]:
    """`guardrun list`: one row per job."""
    rows = [("JOB", "STATE", "ATTEMPT", "RUNG", "STEP", "UPTIME", "PID")]
    for job in jobs:
        up = format_duration(job.get("uptime_s")) if job.get("alive") else "-"
        rows.append((job["job"], job["state"], _cell(job.get("attempt")), _cell(job.get("rung")),
                     _cell(job.get("step")), up, _cell(job.get("pid") if job.get("alive") else None)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _cell(value: Any) -> str:
    return "-" if value in (None, "") else str(value)

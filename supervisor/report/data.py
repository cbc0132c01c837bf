"""From a job's journal (events.jsonl) to what `guardrun report` draws and tabulates.

Pure: a list of event dicts in, a Report out; no files, no matplotlib. The report covers the
journal's last run (from its last `run.started`); times are seconds since that start, from
the events' `ts` (wall clock, as the journal records it).

A damaged journal is read around: an event whose fields have the wrong type (a number
where a name belongs, a string where bytes were counted) is skipped, and Report.skipped
says why, for the one warning line `guardrun report` prints; a `run.started` keeps its
place (it divides the runs) and loses only the bad fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

from guardrun.launcher.units import format_bytes

from ..core import events


@dataclass(frozen=True)
class Attempt:
    number: int
    start: float                   # seconds since the run started
    rung: int = 0
    ranks: int | None = None
    per_device: int | None = None
    grad_accum: int | None = None
    global_batch: int | None = None
    lr: float | None = None
    resume_from: str | None = None
    notes: tuple[str, ...] = ()
    end: float | None = None       # None: never ended in the journal (still running, or killed)
    kind: str | None = None        # success, host_oom, ...
    evidence: str = ""
    exit_code: int | None = None
    step: int | None = None
    root_cause: dict | None = None
    peak: int | None = None        # the tree's peak (PSS where measured, else summed anon RSS)

    def config(self) -> str:
        batch = (f"{self.per_device} × {self.grad_accum} × {self.ranks} = {self.global_batch}"
                 if self.per_device is not None else "")
        return ", ".join(part for part in (f"{self.ranks} rank(s)" if self.ranks else "", batch,
                                           f"lr {self.lr:g}" if self.lr is not None else "") if part)


@dataclass(frozen=True)
class HostPoint:
    t: float
    attempt: int
    tree: int         # PSS where measured, else summed anonymous RSS
    available: int
    held: bool = False  # not a sample: the last one held to where the watching ended


@dataclass(frozen=True)
class GpuPoint:
    t: float
    attempt: int
    used: int
    total: int
    limit: int | None


@dataclass(frozen=True)
class Marker:
    t: float
    kind: str         # "failure" | "rung" | "breach"
    label: str


@dataclass(frozen=True)
class Report:
    job: str
    started_at: str                # the run's start, ISO (UTC)
    outcome: str                   # "finished", "gave up: ...", "stopped: ...", "no end recorded"
    tree_limit: int | None
    min_available: int | None
    attempts: tuple[Attempt, ...]
    host: tuple[HostPoint, ...]
    gpus: dict[int, tuple[GpuPoint, ...]] = field(default_factory=dict)
    markers: tuple[Marker, ...] = ()
    earlier_runs: int = 0
    end: float = 0.0               # the last event's time
    skipped: tuple[str, ...] = ()  # why each unusable event was left out


def seconds(ts: Any) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def last_run(rows: Iterable[dict]) -> tuple[list[dict], int]:
    """The events of the last run, and how many runs came before it."""
    rows = [e for e in rows if seconds(e.get("ts")) is not None]
    starts = [i for i, e in enumerate(rows) if events.name_of(e) == events.RUN_STARTED]
    if not starts:
        return rows, 0
    return rows[starts[-1]:], len(starts) - 1


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _str(value: Any) -> bool:
    return isinstance(value, str)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(map(_str, value))


def _dict(value: Any) -> bool:
    return isinstance(value, dict)


def _gpus(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(row, list) and len(row) == 4 and _int(row[0]) and _num(row[1]) and _num(row[2])
        and (row[3] is None or _num(row[3])) for row in value)


#: The fields build() computes with, per event, and the test each value (when not null) must pass.
FIELDS = {
    events.RUN_STARTED: {"tree_limit": _int, "min_available": _int},
    events.ATTEMPT_STARTED: {"attempt": _int, "rung": _int, "ranks": _int, "per_device": _int,
                             "grad_accum": _int, "global_batch": _int, "lr": _num,
                             "resume_from": _str, "notes": _strings},
    events.ATTEMPT_ENDED: {"attempt": _int, "kind": _str, "evidence": _str, "exit_code": _int,
                           "step": _int, "root_cause": _dict, "peak_pss": _num, "peak_tree": _num},
    events.MEMORY_SAMPLE: {"attempt": _int, "pss": _num, "tree": _num, "available": _num,
                           "gpus": _gpus},
    events.LIMIT_BREACHED: {"kind": _str, "attempt": _int},
    events.DIAGNOSIS_STOP: {"attempt": _int}, events.ATTEMPT_STOPPED: {"attempt": _int},
    events.RUN_GAVE_UP: {"why": _str}, events.RUN_STOPPED: {"why": _str},
}


def usable(rows: Iterable[dict]) -> tuple[list[dict], list[str]]:
    """The events build() can use, and why each other one was left out."""
    kept, skipped = [], []
    for event in rows:
        name = events.name_of(event)
        tests = FIELDS.get(name, {})
        bad = [key for key, test in tests.items() if event.get(key) is not None and not test(event[key])]
        if name == events.ATTEMPT_STARTED and not _int(event.get("attempt")):
            bad = bad or ["attempt"]
        if bad:
            skipped.append(f"{event.get('event')}: {', '.join(bad)} of the wrong type")
        if not bad:
            kept.append(event)
        elif name == events.RUN_STARTED:  # it divides the runs: kept, without the bad fields
            kept.append({k: v for k, v in event.items() if k not in bad})
    return kept, skipped


def build(job: str, rows: Iterable[dict]) -> Report:
    kept, skipped = usable(rows)
    run, earlier = last_run(kept)
    if not run:
        return Report(job, "", "no events", None, None, (), (), earlier_runs=earlier,
                      skipped=tuple(skipped))
    origin = seconds(run[0]["ts"])
    attempts: dict[int, dict] = {}
    host: list[HostPoint] = []
    gpus: dict[int, list[GpuPoint]] = {}
    breaches: list[Marker] = []
    started = run[0] if events.name_of(run[0]) == events.RUN_STARTED else {}
    outcome = "no end recorded"
    current, watching = None, False  # the attempt being watched, and whether it still is
    for event in run:
        name, t = events.name_of(event), seconds(event["ts"]) - origin
        number = event.get("attempt")
        if name == events.ATTEMPT_STARTED:
            attempts[number] = _started(event, t)
            current, watching = number, True
        elif name == events.ATTEMPT_ENDED and number in attempts:
            attempts[number].update(_ended(event, t))
        elif name == events.MEMORY_SAMPLE:
            tree = event.get("pss") if event.get("pss") is not None else event.get("tree")
            host.append(HostPoint(t, number, int(tree or 0), int(event.get("available") or 0)))
            for index, used, total, limit in event.get("gpus") or ():
                gpus.setdefault(index, []).append(GpuPoint(t, number, used, total, limit))
        elif name in WATCH_ENDS and watching:
            watching = False
            _hold(host, gpus, current, t)
            if name == events.LIMIT_BREACHED:
                breaches.append(Marker(t, "breach", event.get("kind", "")))
        elif name == events.RUN_FINISHED:
            outcome = "finished"
        elif name == events.RUN_GAVE_UP:
            outcome = f"gave up: {event.get('why', '')}"
        elif name == events.RUN_STOPPED:
            outcome = f"stopped: {event.get('why', '')}"
    rows = tuple(Attempt(**fields) for _, fields in sorted(attempts.items()))
    return Report(job=job, started_at=run[0]["ts"], outcome=outcome, tree_limit=started.get("tree_limit"),
                  min_available=started.get("min_available"), attempts=rows, host=tuple(host),
                  gpus={i: tuple(points) for i, points in sorted(gpus.items())},
                  markers=tuple(breaches) + markers(rows), earlier_runs=earlier,
                  end=seconds(run[-1]["ts"]) - origin, skipped=tuple(skipped))


#: Events after which an attempt's memory is no longer sampled: the limit or diagnosis stop,
#: else the tree's end. Its last sample is held up to then: a reading that moved by more than
#: the trail's threshold would have been journaled (supervisor/run/memtrail.py).
WATCH_ENDS = (events.LIMIT_BREACHED, events.DIAGNOSIS_STOP, events.ATTEMPT_STOPPED)


def _hold(host: list[HostPoint], gpus: dict[int, list[GpuPoint]], attempt: int | None, t: float) -> None:
    last = next((p for p in reversed(host) if p.attempt == attempt), None)
    if last is not None and last.t < t:
        host.append(HostPoint(t, attempt, last.tree, last.available, held=True))
    for points in gpus.values():
        mine = [p for p in points if p.attempt == attempt]
        if mine and mine[-1].t < t:
            points.append(GpuPoint(t, attempt, mine[-1].used, mine[-1].total, mine[-1].limit))


def _started(event: dict, t: float) -> dict:
    return {"number": event["attempt"], "start": t, "rung": event.get("rung") or 0,
            "ranks": event.get("ranks"), "per_device": event.get("per_device"),
            "grad_accum": event.get("grad_accum"), "global_batch": event.get("global_batch"),
            "lr": event.get("lr"), "resume_from": event.get("resume_from"),
            "notes": tuple(event.get("notes") or ())}


def _ended(event: dict, t: float) -> dict:
    peak = event.get("peak_pss") or event.get("peak_tree")
    return {"end": t, "kind": event.get("kind"), "evidence": event.get("evidence") or "",
            "exit_code": event.get("exit_code"), "step": event.get("step"),
            "root_cause": event.get("root_cause"), "peak": peak}


def markers(attempts: tuple[Attempt, ...]) -> tuple[Marker, ...]:
    """A failure marker where each failed attempt ended, a rung marker where the configuration changed."""
    out: list[Marker] = []
    previous: Attempt | None = None
    for attempt in attempts:
        if previous is not None and attempt.rung != previous.rung:
            out.append(Marker(attempt.start, "rung", f"rung {attempt.rung}: {changes(previous, attempt)}"))
        if attempt.end is not None and attempt.kind not in (None, "success"):
            out.append(Marker(attempt.end, "failure", attempt.kind))
        previous = attempt
    return tuple(out)


def changes(before: Attempt, after: Attempt) -> str:
    """What the rung changed, in the user's terms: `2→1 ranks, accum 1→2`."""
    parts = []
    for label, key in (("ranks", "ranks"), ("micro-batch", "per_device"), ("accum", "grad_accum"),
                       ("global batch", "global_batch"), ("lr", "lr")):
        old, new = getattr(before, key), getattr(after, key)
        if old != new:
            parts.append(f"{label} {_short(old)}→{_short(new)}")
    return ", ".join(parts) or "same batch and ranks"


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_limit(value: int | None) -> str:
    return format_bytes(value) if value else "none"

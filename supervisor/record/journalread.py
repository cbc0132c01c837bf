"""Reading a job's journal (events.jsonl) and state.json, whatever a crash left in them.

Every reader skips what it cannot use, counts it, and says so in one `guardrun: warning:`
line on stderr: a line that is not UTF-8, not JSON, not an object, longer than MAX_LINE,
or an attempt's end with an unknown kind or fields of the wrong type. A torn line (a
supervisor killed mid-write) is expected and only noted; anything else makes `history`
return no history, so `run` starts at rung 0 and says why (see history()).
Files are opened without following symlinks or waiting on FIFOs (statedir.open_regular).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from guardrun.launcher.failures import FATAL, Failure, Kind

from ..core import events
from .statedir import open_regular, reason, warn

#: A journal line longer than this is not an event guardrun wrote (the longest it writes,
#: an attempt.ended with its root cause, is a few KiB): skipped, never held whole in memory.
MAX_LINE = 1 << 20
#: state.json holds a few KiB; a larger one is not guardrun's.
MAX_STATE = 16 << 20


# -- readers: skip what cannot be used, count it, say so in one line -----------------------------
@dataclass
class Skipped:
    """What a reader of events.jsonl could not use: how many lines, and the first one's why."""

    path: Path
    count: int = 0
    first: str = ""
    torn: int = 0          # of them, lines a writer was stopped in (see _numbered_events)
    unreadable: str = ""   # the file as a whole cannot be read (a directory, EIO, ...)

    def add(self, number: int, why: str) -> None:
        if not self.count:
            self.first = f"line {number}: {why}"
        self.count += 1

    @property
    def damaged(self) -> bool:
        """More than a torn last line, the usual trace of a killed writer."""
        return bool(self.unreadable) or self.count > self.torn

    def line(self) -> str:
        """The one warning line ('' when all was used)."""
        if self.unreadable:
            return f"{self.path}: cannot be read ({self.unreadable}): no event of it is used"
        if not self.count:
            return ""
        torn = f"; {self.torn} of them torn" if self.torn and self.count > 1 else ""
        return f"{self.path}: skipped {self.count} unusable line{'s' * (self.count > 1)} ({self.first}{torn})"


_TYPE_NAMES = {list: "an array", int: "a number", float: "a number", str: "a string",
               bool: "a boolean", type(None): "null"}


def _event(raw: bytes) -> tuple[dict | None, str]:
    """One line as an event, or why it is not one ('' with None: a blank line, ignored)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    if not text.strip():
        return None, ""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None, "not JSON"
    if not isinstance(value, dict):
        return None, f"not a JSON object ({_TYPE_NAMES.get(type(value), 'another value')})"
    if not isinstance(value.get("event"), str):
        return None, "no event name"
    return value, ""


TORN = "torn: its writer was stopped mid-line"


def _numbered_events(skipped: Skipped) -> Iterator[tuple[int, dict]]:
    """(line number, event) of events.jsonl; what cannot be used goes into `skipped`.

    A line that is not an event is *torn* (the trace of a supervisor killed mid-write, not
    damage) when it is the last line (Journal may have ended it with a newline since), or
    when the next event is a `run.started`: the next supervisor's first event.
    """
    try:
        fd = open_regular(skipped.path)
    except FileNotFoundError:
        return
    except OSError as err:
        skipped.unreadable = reason(err)
        return
    number, pending = 0, None  # pending: (number, why) of the line before, not an event
    with open(fd, "rb") as handle:
        try:
            while raw := handle.readline(MAX_LINE + 1):
                number += 1
                if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                    while (more := handle.readline(MAX_LINE)) and not more.endswith(b"\n"):
                        pass
                    event, why = None, f"longer than {MAX_LINE >> 20} MiB"
                else:
                    event, why = _event(raw)
                if pending is not None:
                    torn = event is not None and events.name_of(event) == events.RUN_STARTED
                    skipped.torn += torn
                    skipped.add(pending[0], TORN if torn else pending[1])
                    pending = None
                if event is not None:
                    yield number, event
                elif why:
                    pending = (number, why)
        except OSError as err:
            skipped.unreadable = f"{reason(err)} after line {number}"
    if pending is not None:  # the last line
        skipped.torn += 1
        skipped.add(pending[0], TORN)


def read_events(directory: Path, skipped: Skipped | None = None) -> Iterator[dict[str, Any]]:
    """The events of a state directory, oldest first. Lines that are not events (torn, not
    UTF-8, not a JSON object, too long) are skipped; when the caller passes no `skipped`
    to collect them, one warning line says how many once all is read."""
    collect = skipped if skipped is not None else Skipped(directory / "events.jsonl")
    for _number, event in _numbered_events(collect):
        yield event
    if skipped is None and collect.line():
        warn(collect.line())


def read_state(directory: Path, say: Callable[[str], None] | None = warn) -> dict[str, Any] | None:
    """state.json as a dict; None when absent or unusable (then `say` says why, in one line)."""
    path = directory / "state.json"
    try:
        with open(open_regular(path), "rb") as handle:
            data = handle.read(MAX_STATE + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        return _unusable(say, path, reason(err))
    if len(data) > MAX_STATE:
        return _unusable(say, path, f"larger than {MAX_STATE >> 20} MiB")
    if not data.strip():
        return _unusable(say, path, "empty")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        return _unusable(say, path, "not UTF-8")
    except (ValueError, RecursionError):
        return _unusable(say, path, "not JSON")
    if not isinstance(value, dict):
        return _unusable(say, path, f"not a JSON object ({_TYPE_NAMES.get(type(value), 'another value')})")
    return value


def _unusable(say: Callable[[str], None] | None, path: Path, why: str) -> None:
    if say is not None:
        say(f"{path}: {why}: ignored")
    return None


def _failure(event: dict) -> tuple[Failure | None, str]:
    """An attempt.ended event as a Failure, or why its fields cannot be one."""
    kind, evidence = event.get("kind"), event.get("evidence") or ""
    attempt, step = event.get("attempt", 0), event.get("step")
    if not isinstance(kind, str) or kind not in {k.value for k in Kind}:
        return None, f"unknown kind {kind!r}"
    if not isinstance(evidence, str):
        return None, "evidence is not a string"
    if not _integer(attempt) or not (step is None or _integer(step)):
        return None, "attempt or step is not a whole number"
    ranks = event.get("ranks_seen")  # issue 13 §6; absent in older journals
    return Failure(Kind(kind), evidence, attempt=attempt, step=step,
                   ranks_seen=ranks if _integer(ranks) and ranks > 0 else None), ""


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def history(directory: Path, digest: str | None = None,
            say: Callable[[str], None] = warn) -> list[Failure]:
    """The failures recorded so far, oldest first, for the ladder to continue from.

    It starts over after a run that finished, and when the recipe changed since the
    failures were recorded (`digest` differs): a fixed recipe deserves rung 0 again.
    A damaged journal (a line or an attempt's end that cannot be read, anywhere but a
    torn last line) is no history at all: what was lost may be a `run.finished` or a
    failure, and a guess could resume on the wrong rung. `say` tells which it was.
    """
    skipped = Skipped(directory / "events.jsonl")
    failures: list[Failure] = []
    recorded_under = None  # the digest of the recipe the failures so far were recorded with
    for number, event in _numbered_events(skipped):
        name = events.name_of(event)
        if name == events.RUN_FINISHED:
            failures = []
        elif name == events.RUN_STARTED:
            if event.get("digest") != recorded_under:
                failures = []
            recorded_under = event.get("digest")
        elif name == events.ATTEMPT_ENDED and event.get("kind") not in (None, "success"):
            failure, why = _failure(event)
            if failure is None:
                skipped.add(number, why)
            elif failure.kind not in FATAL:  # they end a run at once: no rung climbs from them
                failures.append(failure)
    if skipped.damaged:
        say(f"{skipped.line()}; the failure history is not used: this run starts as if the job had none")
        return []
    if skipped.line():
        say(f"{skipped.line()}; the rest of the history is used")
    return failures if digest is None or digest == recorded_under else []

"""Whether guardrun's own writes into the state dir work, and what a full disk cost.

A full disk (ENOSPC, EDQUOT), a failing one (EIO) or one turned read-only must cost
logs, never the job: each writer (events.jsonl, state.json, an attempt's output.log)
catches the OSError, tells this object, and drops what it could not write, counting it.
While a writer is failing it tries again at most every `retry_every` seconds, so a disk
that stays full is not hammered with a write per line; the first write that works ends
the outage. The supervisor polls `changes()` once per interval to tell the console and
the journal (a write that fails must not itself write to the console: it may run on the
output thread, and the console message belongs to the loop), and `describe()` for
state.json and `guardrun status`.

Thread-safe: the output thread and the loop both report here.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

#: Seconds between retries while a writer fails. A retry costs one write syscall;
#: 2 s keeps a resumed disk's gap short without a syscall per line on a full one.
RETRY_EVERY = 2.0
SUSPENDED = "state dir full: logging suspended"


@dataclass
class Outage:
    """One writer's ongoing failure."""

    reason: str                 # "No space left on device", from the first error
    since: float                # monotonic
    since_wall: str             # for people: when it began
    tried: float                # monotonic time of the last attempt
    lost_lines: int = 0         # output lines not written (output.log)
    lost_events: int = 0        # journal events not written
    lost_bytes: int = 0


@dataclass(frozen=True)
class Change:
    """A writer began failing (`resumed` False) or works again (`resumed` True)."""

    what: str
    resumed: bool
    reason: str
    lost_lines: int = 0
    lost_events: int = 0
    lost_bytes: int = 0
    seconds: float = 0.0


@dataclass
class SpaceWatch:
    retry_every: float = RETRY_EVERY
    clock: Callable[[], float] = time.monotonic
    _outages: dict[str, Outage] = field(default_factory=dict)
    _changes: list[Change] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def may_write(self, what: str) -> bool:
        """Whether `what` should try a write now: always while it works, and once per
        `retry_every` while it fails (the caller then reports `failed` or `worked`)."""
        with self._lock:
            outage = self._outages.get(what)
            if outage is None:
                return True
            now = self.clock()
            if now - outage.tried < self.retry_every:
                return False
            outage.tried = now
            return True

    def failed(self, what: str, err: OSError, *, lines: int = 0, events: int = 0, size: int = 0) -> None:
        """A write of `what` failed with `err`; `lines`/`events`/`size` were lost with it."""
        with self._lock:
            outage = self._outages.get(what)
            if outage is None:
                now = self.clock()
                reason = err.strerror or str(err)
                outage = Outage(reason, now, time.strftime("%H:%M:%S"), now)
                self._outages[what] = outage
                self._changes.append(Change(what, False, reason))
            outage.lost_lines += lines
            outage.lost_events += events
            outage.lost_bytes += size

    def lost(self, what: str, *, lines: int = 0, events: int = 0, size: int = 0) -> None:
        """Dropped without trying (between retries)."""
        with self._lock:
            outage = self._outages.get(what)
            if outage is not None:
                outage.lost_lines += lines
                outage.lost_events += events
                outage.lost_bytes += size

    def worked(self, what: str) -> Outage | None:
        """A write of `what` succeeded: the outage it ends (to say what it cost), if any."""
        with self._lock:
            outage = self._outages.pop(what, None)
            if outage is not None:
                self._changes.append(Change(what, True, outage.reason, outage.lost_lines,
                                            outage.lost_events, outage.lost_bytes,
                                            round(self.clock() - outage.since, 3)))
            return outage

    def failing(self, what: str) -> bool:
        with self._lock:
            return what in self._outages

    def peek(self, what: str) -> Outage | None:
        """A copy of `what`'s ongoing outage, if any."""
        with self._lock:
            outage = self._outages.get(what)
            return replace(outage) if outage is not None else None

    def changes(self) -> list[Change]:
        """What began or ended failing since the last call (oldest first)."""
        with self._lock:
            taken, self._changes = self._changes, []
            return taken

    def describe(self) -> str | None:
        """One line for state.json and `guardrun status`, or None while all writes work."""
        with self._lock:
            if not self._outages:
                return None
            parts = []
            for what, outage in sorted(self._outages.items()):
                lost = [f"{outage.lost_lines} lines" if outage.lost_lines else "",
                        f"{outage.lost_events} events" if outage.lost_events else ""]
                dropped = ", ".join(p for p in lost if p)
                parts.append(f"{what}: {outage.reason} since {outage.since_wall}"
                             + (f", {dropped} not written" if dropped else ""))
            return f"{SUSPENDED} ({'; '.join(parts)}); the job keeps running, still guarded"


def write_all(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Write all of `data` (os.write may take part of it); the bytes written and the error
    that stopped it, if one did. A part written before the error is a torn line the
    writer must end with a newline before its next record."""
    view, done = memoryview(data), 0
    while done < len(view):
        try:
            done += os.write(fd, view[done:])
        except OSError as err:
            return done, err
    return done, None


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def reserve(fd: int, length: int) -> bool:
    """Allocate `length` bytes of disk past the end of `fd`'s file without changing its size
    (fallocate FALLOC_FL_KEEP_SIZE): appends then land in blocks already the file's, so
    the journal can still say "the disk is full" after the job's output filled it.
    Best effort: False where the filesystem does not support it or has no space."""
    try:
        end = os.fstat(fd).st_size
        fallocate = _libc.fallocate
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    return fallocate(fd, _FALLOC_FL_KEEP_SIZE, end, length) == 0


def unreserve(fd: int, length: int) -> None:
    """Give back what `reserve` kept past the end (FALLOC_FL_PUNCH_HOLE): a closed journal
    must not hold disk it will never use. Best effort."""
    try:
        end = os.fstat(fd).st_size
        fallocate = _libc.fallocate
    except (OSError, AttributeError):
        return
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, end, length)

"""The job's state directory: events.jsonl, state.json, one folder per attempt.

Layout (`$XDG_STATE_HOME/guardrun/<job>/`, mode 0700; `GUARDRUN_STATE_DIR` overrides
the parent folder):

    events.jsonl          one JSON object per fact, appended (structlog)
    state.json            the latest summary, replaced atomically (temp file + rename)
    attempts/<n>/output.log   everything attempt n printed

The journal is also the ladder's memory: `history()` rebuilds the failure list from
events.jsonl, so a restarted guardrun continues on the rung it had reached.

Every folder here is 0700 and every file 0600 whatever the umask, made relative to the
job dir's fd that Journal holds from its ownership check; a state root under a parent
another user can write is refused (supervisor/record/statedir.py). The readers, which read
around whatever a crash left (supervisor/record/journalread.py), are re-exported here.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import structlog

from ..core import events
from . import levels
from .journalread import Skipped, history, read_events, read_state
from .spacewatch import SpaceWatch, reserve, unreserve, write_all
from .statedir import (
    StateDirError,
    open_dir,
    open_file,
    open_private_dir,
    replace_file,
    set_aside_wrong_types,
)

__all__ = ["Journal", "Skipped", "StateDirError", "ensure_private_dir", "history", "job_dir",
           "read_events", "read_state", "state_root"]

#: What guardrun keeps in a job dir, and of which type: an entry of another type (a
#: directory named state.json) is set aside when a Journal opens the dir. The names of
#: lock.py and control.py, which import this module.
EXPECTED = {"events.jsonl": "file", "state.json": "file", "attempts": "directory",
            "supervisor.lock": "file", "control.sock": "socket"}


def state_root() -> Path:
    explicit = os.environ.get("GUARDRUN_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "guardrun"


def job_dir(name: str, root: Path | None = None) -> Path:
    return (root or state_root()) / name


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700; refuse a symlink, another user's dir,
    or a parent another user could swap it in (supervisor/record/statedir.py says how)."""
    os.close(open_private_dir(path))
    return path


#: Disk kept allocated past events.jsonl's end, so the journal can still record a full
#: disk (and the run's end) after the job's output filled it: ~800 events of ~300 bytes.
JOURNAL_RESERVE = 256 * 1024
_STAMP = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
_JSON = structlog.processors.JSONRenderer(default=str)


#: Where the events happen, on each (a log shipper indexes many hosts' journals together).
HOST = socket.gethostname()


def _render(job: str, name: str, fields: dict[str, Any]) -> bytes:
    """One events.jsonl line, as structlog renders it: job, the fields, event, level
    (record/levels.py), host, ts."""
    record = {"job": job, **fields, "event": events.journaled(name),
              "level": levels.of_event(name, fields), "host": HOST}
    return (_JSON(None, "info", _STAMP(None, "info", record)) + "\n").encode("utf-8", "replace")


class Journal:
    """Writes one job's state directory: events (each with `job`, `level`, `host`), state.json,
    attempt folders."""

    def __init__(self, name: str, root: Path | None = None):
        self.name = name
        self.dir = job_dir(name, root)
        # Held until close: every file of the job dir is opened relative to it (statedir.py).
        self.dir_fd = open_private_dir(self.dir)
        set_aside_wrong_types(self.dir_fd, self.dir, EXPECTED)
        self._events = os.fdopen(self._open_events(), "a", buffering=1, encoding="utf-8")
        # Writers: a failing disk costs the record (counted, said), never the caller.
        #: The state dir's write health, shared by every writer of this job's files.
        self.space = SpaceWatch()
        self._write_lock = threading.Lock()  # emit runs on the loop and on helper threads
        self._torn = False      # the last append stopped mid-line: start the next on a new line
        self._unreserved = 0    # bytes appended since the last reservation

    def emit(self, event: str, **fields: Any) -> None:
        """Append one event. On a full or failing disk the event is dropped and counted; while
        that lasts a write is tried every few seconds, and the first that works is preceded
        by a `logging.resumed` event saying how many were lost since when."""
        space = self.space
        if not space.may_write("events.jsonl"):
            space.lost("events.jsonl", events=1)
            return
        data = _render(self.name, event, fields)
        outage = space.peek("events.jsonl")
        if outage is not None:
            data = _render(self.name, events.LOGGING_RESUMED, {
                "what": "events.jsonl", "reason": outage.reason, "since": outage.since_wall,
                "lost_events": outage.lost_events}) + data
        with self._write_lock:
            if self._events.closed:
                return  # after close (a late helper thread): nowhere to write, nothing to raise
            if self._torn:
                data = b"\n" + data
            fd = self._events.fileno()
            written, err = write_all(fd, data)
            self._torn = bool(err) and written > 0
            if err is not None:
                space.failed("events.jsonl", err, events=1)
                return
            self._unreserved -= len(data)
            if self._unreserved <= 0 and reserve(fd, JOURNAL_RESERVE):
                self._unreserved = JOURNAL_RESERVE // 2
        space.worked("events.jsonl")

    def _open_events(self) -> int:
        """events.jsonl for appending, 0600; after a torn last line (a writer killed mid-line)
        a newline first, so this run's first event is not glued onto it and lost."""
        fd = open_file("events.jsonl", self.dir / "events.jsonl", self.dir_fd, os.O_RDWR | os.O_APPEND)
        size = os.fstat(fd).st_size
        try:
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")
        except OSError:
            pass  # a full disk: the first emit says so
        return fd

    def attempt_dir(self, attempt: int) -> Path:
        """`attempts/<n>/`, both 0700, made relative to the job dir's fd."""
        shown = self.dir / "attempts"
        parent = open_dir("attempts", shown, self.dir_fd)
        try:
            os.close(open_dir(str(attempt), shown / str(attempt), parent))
        finally:
            os.close(parent)
        return shown / str(attempt)

    def write_state(self, state: dict[str, Any]) -> None:
        """Replace state.json; on a full disk the old one stays (retried every few seconds)."""
        space = self.space
        if not space.may_write("state.json"):
            return
        try:
            replace_file(self.dir_fd, "state.json",  # relative to the held fd (statedir.py)
                         (json.dumps(state, indent=2, default=str) + "\n").encode())
        except OSError as err:
            space.failed("state.json", err)
            return
        space.worked("state.json")

    def close(self) -> None:
        if not self._events.closed:
            unreserve(self._events.fileno(), JOURNAL_RESERVE)
        self._events.close()
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

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
another user can write is refused (supervisor/statedir.py). The readers, which read
around whatever a crash left (supervisor/journalread.py), are re-exported here.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import structlog

from .journalread import Skipped, history, read_events, read_state
from .statedir import StateDirError, open_dir, open_file, open_private_dir, replace_file, set_aside_wrong_types

__all__ = ["Journal", "Skipped", "StateDirError", "ensure_private_dir", "history", "job_dir",
           "read_events", "read_state", "state_root", "write_atomic"]

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
    or a parent another user could swap it in (supervisor/statedir.py says how)."""
    os.close(open_private_dir(path))
    return path


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Journal:
    """Writes one job's state directory. `log` binds `job`; `attempt` is bound per attempt."""

    def __init__(self, name: str, root: Path | None = None):
        self.name = name
        self.dir = job_dir(name, root)
        # Held until close: every file of the job dir is opened relative to it (statedir.py).
        self.dir_fd = open_private_dir(self.dir)
        set_aside_wrong_types(self.dir_fd, self.dir, EXPECTED)
        self._events = os.fdopen(self._open_events(), "a", buffering=1, encoding="utf-8")
        self.log = structlog.wrap_logger(
            structlog.WriteLogger(self._events),
            processors=[structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                        structlog.processors.JSONRenderer(default=str)],
        ).bind(job=name)

    def emit(self, event: str, **fields: Any) -> None:
        self.log.info(f"guardrun.{event}", **fields)

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
        replace_file(self.dir_fd, "state.json",  # relative to the held fd (statedir.py)
                     (json.dumps(state, indent=2, default=str) + "\n").encode())

    def close(self) -> None:
        self._events.close()
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

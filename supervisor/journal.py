"""The job's state directory: events.jsonl, state.json, one folder per attempt.

Layout (`$XDG_STATE_HOME/guardrun/<job>/`, mode 0700; `GUARDRUN_STATE_DIR` overrides
the parent folder):

    events.jsonl          one JSON object per fact, appended (structlog)
    state.json            the latest summary, replaced atomically (temp file + rename)
    attempts/<n>/output.log   everything attempt n printed

The journal is also the ladder's memory: `history()` rebuilds the failure list from
events.jsonl, so a restarted guardrun continues on the rung it had reached.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import structlog

from guardrun.launcher.failures import Failure, Kind


class StateDirError(Exception):
    """The state directory cannot be used safely (owner, symlink, permissions)."""


def state_root() -> Path:
    explicit = os.environ.get("GUARDRUN_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "guardrun"


def job_dir(name: str, root: Path | None = None) -> Path:
    return (root or state_root()) / name


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700; refuse a symlink or another user's dir.

    On a shared server another user could pre-create the folder or point a symlink at
    their own files; guardrun then refuses instead of writing there.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"{path} is a symlink or not a directory: refusing to use it")
    if info.st_uid != os.getuid():
        raise StateDirError(f"{path} belongs to uid {info.st_uid}, not to you: refusing to use it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
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
        self.dir = ensure_private_dir(job_dir(name, root))
        self._events = open(self.dir / "events.jsonl", "a", buffering=1)
        self.log = structlog.wrap_logger(
            structlog.WriteLogger(self._events),
            processors=[structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                        structlog.processors.JSONRenderer(default=str)],
        ).bind(job=name)

    def emit(self, event: str, **fields: Any) -> None:
        self.log.info(f"guardrun.{event}", **fields)

    def attempt_dir(self, attempt: int) -> Path:
        path = self.dir / "attempts" / str(attempt)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def write_state(self, state: dict[str, Any]) -> None:
        write_atomic(self.dir / "state.json", json.dumps(state, indent=2, default=str) + "\n")

    def close(self) -> None:
        self._events.close()


def read_events(directory: Path) -> Iterator[dict[str, Any]]:
    """The events of a state directory, oldest first; a torn last line is skipped."""
    try:
        handle = open(directory / "events.jsonl")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def read_state(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def history(directory: Path, digest: str | None = None) -> list[Failure]:
    """The failures recorded so far, oldest first, for the ladder to continue from.

    It starts over after a run that finished, and when the recipe changed since the
    failures were recorded (`digest` differs): a fixed recipe deserves rung 0 again.
    """
    failures: list[Failure] = []
    recorded_under = None  # the digest of the recipe the failures so far were recorded with
    for event in read_events(directory):
        name = event.get("event")
        if name == "guardrun.run.finished":
            failures = []
        elif name == "guardrun.run.started":
            if event.get("digest") != recorded_under:
                failures = []
            recorded_under = event.get("digest")
        elif name == "guardrun.attempt.ended" and event.get("kind") not in (None, "success"):
            kind = Kind(event["kind"])
            if kind not in (Kind.INTERRUPTED, Kind.USER_ERROR):
                failures.append(Failure(kind, event.get("evidence", ""),
                                        attempt=event.get("attempt", 0), step=event.get("step")))
    return failures if digest is None or digest == recorded_under else []

"""Follow the checkpoint folder while an attempt runs.

inotify (through watchdog) tells when anything under the folder changes; once it has
been quiet for `settle` seconds the folder is validated again (headers and sizes only:
bench/checkpoints.py). So the newest complete checkpoint is known the moment its
writer is done, a relaunch never waits on validation, and a checkpoint that appeared
during the attempt and stayed incomplete is there as evidence when the job dies.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from guardrun.launcher import checkpoints
from guardrun.launcher.checkpoints import Checkpoint

from .clock import Clock

#: Quiet time before a rescan. HF writes a checkpoint's files back to back, the
#: trainer_state.json last; a second of silence means the writer is done or stalled.
SETTLE = 1.0


@dataclass(frozen=True)
class Seen:
    """The folder as last validated."""

    newest: Checkpoint | None = None     # newest valid
    newest_at: float | None = None       # clock reading when it was first seen valid (None: before the attempt)
    incomplete: tuple[Checkpoint, ...] = ()  # appeared during the attempt, newer than `newest`, invalid


class _Changed(FileSystemEventHandler):
    def __init__(self, touch: Callable[[], None]):
        self._touch = touch

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._touch()


class CheckpointFollower:
    """Validate the checkpoint folder again whenever it changed and then went quiet."""

    def __init__(self, directory: Path, pattern: str | None, clock: Clock,
                 emit: Callable[..., None], settle: float = SETTLE):
        self.directory, self.pattern, self.clock, self.emit = directory, pattern, clock, emit
        self.settle = settle
        self._lock = threading.Lock()
        self._changed_at: float | None = None  # last change not yet rescanned
        self._activity_at: float | None = None  # last change seen at all
        self._observer = None
        before = checkpoints.find(directory, pattern)
        self._before = {c.name for c in before}
        valid = [c for c in before if c.valid]
        self.seen = Seen(newest=valid[-1] if valid else None)

    # -- watching ------------------------------------------------------------------------
    def _touch(self) -> None:
        now = self.clock.monotonic()
        with self._lock:
            self._changed_at = self._activity_at = now

    def _ensure_observer(self) -> None:
        """Watch once the folder exists: the trainer creates it only when it starts."""
        if self._observer is not None or not self.directory.is_dir():
            return
        observer = Observer()
        observer.schedule(_Changed(self._touch), str(self.directory), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._touch()  # anything written before the watch began is looked at too

    def stop(self) -> Seen:
        """Stop watching and validate once more: the attempt is over, nothing is writing."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self._rescan()
        return self.seen

    @property
    def last_activity(self) -> float | None:
        """When anything under the folder last changed (for hang detection)."""
        with self._lock:
            return self._activity_at

    # -- rescanning ----------------------------------------------------------------------
    def poll(self) -> Seen:
        """Called every sample interval: rescan when changes have settled."""
        self._ensure_observer()
        now = self.clock.monotonic()
        with self._lock:
            due = self._changed_at is not None and now - self._changed_at >= self.settle
            if due:
                self._changed_at = None
        if due:
            self._rescan()
        return self.seen

    def _rescan(self) -> None:
        found = checkpoints.find(self.directory, self.pattern)
        valid = [c for c in found if c.valid]
        newest = valid[-1] if valid else None
        seen = self.seen
        if newest is not None and (seen.newest is None or newest.path != seen.newest.path):
            self.emit("checkpoint.saved", path=str(newest.path), step=newest.step)
            seen = Seen(newest=newest, newest_at=self.clock.monotonic())
        floor = seen.newest.step if seen.newest else -1
        incomplete = tuple(c for c in found if not c.valid and c.name not in self._before and c.step > floor)
        for each in incomplete:
            if each.name not in {c.name for c in self.seen.incomplete}:
                self.emit("checkpoint.incomplete", path=str(each.path), step=each.step, reason=each.reason)
        self.seen = Seen(seen.newest, seen.newest_at, incomplete)


def describe(seen: Seen, now: float) -> str:
    """`ckpt 40 (2m ago)` for the status line; '' before any checkpoint."""
    if seen.newest is None:
        return ""
    if seen.newest_at is None:
        return f"ckpt {seen.newest.step}"
    minutes = int(now - seen.newest_at) // 60
    return f"ckpt {seen.newest.step} ({minutes}m ago)" if minutes else f"ckpt {seen.newest.step} (just now)"

"""Follow the checkpoint folder while an attempt runs.

inotify (through watchdog) tells when anything under the folder changes. Each entry of
the folder (`checkpoint-40/` and everything inside it, `epoch=0-step=10.ckpt`, `latest`)
settles on its own: once a checkpoint's entry has been quiet for `settle` seconds the
folder is validated again (headers and sizes only: bench/checkpoints.py), leaving out the
entries still being written. Settling the folder as a whole never happened when the
trainer also wrote there every step (LLaMA-Factory appends `trainer_log.jsonl` in its
output_dir at every log step: issue 13 saw only checkpoint-30 of 5..30, at the job's end).
So the newest complete checkpoint is known within `settle` + one poll of its writer being
done, a relaunch never waits on validation, and a checkpoint that appeared during the
attempt and stayed incomplete is there as evidence when the job dies.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from guardrun.launcher import checkpoints
from guardrun.launcher.checkpoints import Checkpoint
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..core import events
from ..core.context import Context
from .netfs import Rescanner, fs_magic, why_rescan

#: Quiet time before a rescan. HF writes a checkpoint's files back to back, the
#: trainer_state.json last; a second of silence means the writer is done or stalled.
SETTLE = 1.0
#: Entries followed one by one; past this many changed names at once (a trainer writing a
#: file per step into the folder) the folder settles as a whole again.
MAX_PENDING = 1024


@dataclass(frozen=True)
class Seen:
    """The folder as last validated."""

    newest: Checkpoint | None = None     # newest valid
    newest_at: float | None = None       # clock reading when it was first seen valid (None: before the attempt)
    incomplete: tuple[Checkpoint, ...] = ()  # appeared during the attempt, newer than `newest`, invalid


#: The watch just began: every entry is looked at once this settles. The folder's own
#: 'modified' events are not counted: watchdog sends one for the parent of every file
#: closed after writing, so a trainer appending a log there every step would keep the
#: first look waiting forever; the entries' own events say all they do.
WHOLE = ""
#: watchdog (7.x) also reports opens and read-only closes. Those are no change, and the
#: follower's own validation makes them: counted, each rescan kept the checkpoints it read
#: busy for one more settle (checkpoint-10 recorded 2.5 s after its last write, not 1.3 s).
_READS = frozenset({"opened", "closed_no_write"})


class _Changed(FileSystemEventHandler):
    def __init__(self, directory: Path, touch: Callable[[str], None]):
        self._directory, self._touch = str(directory), touch

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _READS:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            entry = entry_of(self._directory, os.fsdecode(path)) if path else WHOLE
            if entry != WHOLE:
                self._touch(entry)


def entry_of(directory: str, path: str) -> str:
    """The folder's entry a changed path lies in: 'checkpoint-5' for
    '<dir>/checkpoint-5/global_step5/x.pt'; WHOLE for the folder itself (or a path outside)."""
    prefix = directory.rstrip(os.sep) + os.sep
    if not path.startswith(prefix):
        return WHOLE
    return path[len(prefix):].split(os.sep, 1)[0]


class CheckpointFollower:
    """Validate the checkpoint folder again whenever it changed and then went quiet."""

    def __init__(self, directory: Path, pattern: str | None, ctx: Context, settle: float = SETTLE,
                 nodes: int = 1):
        self.directory, self.pattern, self.clock, self.emit = directory, pattern, ctx.clock, ctx.emit
        self.settle, self.nodes = settle, nodes  # nodes > 1: another node writes the checkpoints
        self._lock = threading.Lock()
        self._changed: dict[str, float] = {}    # entry -> its last change not yet rescanned
        self._activity_at: float | None = None  # last change seen at all
        self._observer = None
        self._rescanner: Rescanner | None = None  # instead of inotify, where it sees no other machine's writes
        before = checkpoints.find(directory, pattern)
        self._before = {c.name for c in before}
        valid = [c for c in before if c.valid]
        self.seen = Seen(newest=valid[-1] if valid else None)

    # -- watching ------------------------------------------------------------------------
    def _touch(self, entry: str = WHOLE) -> None:
        now = self.clock.monotonic()
        with self._lock:
            if entry in self._changed or len(self._changed) < MAX_PENDING:
                self._changed[entry] = now
            else:
                self._changed[WHOLE] = now  # a flood of new names: look at everything once quiet
            self._activity_at = now

    def _ensure_observer(self) -> None:
        """Watch once the folder exists: the trainer creates it only when it starts. On NFS
        and the like, or when another node writes the folder, rescan it at an interval."""
        if self._observer is not None or self._rescanner is not None or not self.directory.is_dir():
            return
        if why_rescan(fs_magic(self.directory), self.nodes):
            self._rescanner = Rescanner(self.directory)
            self._rescanner.changed(self.clock.monotonic())  # the first look: what is there now
            self._touch()
            return
        observer = Observer()
        observer.schedule(_Changed(self.directory, self._touch), str(self.directory), recursive=True)
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
        """Called every sample interval: rescan when a checkpoint's entry has settled."""
        self._ensure_observer()
        now = self.clock.monotonic()
        for entry in self._rescanner.changed(now) if self._rescanner is not None else ():
            self._touch(entry)
        with self._lock:
            settled = [entry for entry, at in self._changed.items() if now - at >= self.settle]
            for entry in settled:
                del self._changed[entry]
            busy = frozenset(self._changed)
        if any(self._may_be_checkpoint(entry) for entry in settled):
            self._rescan(busy)
        return self.seen

    def _may_be_checkpoint(self, entry: str) -> bool:
        """Whether a settled entry can change what the folder holds: a checkpoint's name,
        DeepSpeed's `latest`, or the folder itself; not a log the trainer appends to."""
        return entry in (WHOLE, "latest") or checkpoints.step_of(entry, self.pattern) is not None

    def _rescan(self, busy: frozenset[str] = frozenset()) -> None:
        """Validate the folder; entries still being written (`busy`) are left for later."""
        found = [c for c in checkpoints.find(self.directory, self.pattern) if c.name not in busy]
        valid = [c for c in found if c.valid]
        newest = valid[-1] if valid else None
        seen = self.seen
        if newest is not None and (seen.newest is None or newest.path != seen.newest.path):
            # Saves closer together than `settle` settle in one rescan: each is recorded
            # (a 30-step LLaMA-Factory run on the tiny model saved 5..30 within 0.3 s).
            floor = seen.newest.step if seen.newest else -1
            for each in valid[:-1]:
                if each.step > floor and each.name not in self._before:
                    self.emit(events.CHECKPOINT_SAVED, path=str(each.path), step=each.step)
            self.emit(events.CHECKPOINT_SAVED, path=str(newest.path), step=newest.step)
            seen = Seen(newest=newest, newest_at=self.clock.monotonic())
        floor = seen.newest.step if seen.newest else -1
        incomplete = tuple(c for c in found if not c.valid and c.name not in self._before and c.step > floor)
        for each in incomplete:
            if each.name not in {c.name for c in self.seen.incomplete}:
                self.emit(events.CHECKPOINT_INCOMPLETE, path=str(each.path), step=each.step, reason=each.reason)
        self.seen = Seen(seen.newest, seen.newest_at, incomplete)


def describe(seen: Seen, now: float) -> str:
    """`ckpt 40 (2m ago)` for the status line; '' before any checkpoint."""
    if seen.newest is None:
        return ""
    if seen.newest_at is None:
        return f"ckpt {seen.newest.step}"
    minutes = int(now - seen.newest_at) // 60
    return f"ckpt {seen.newest.step} ({minutes}m ago)" if minutes else f"ckpt {seen.newest.step} (just now)"

"""The job's output, read on a thread: into the attempt's log, onto the console, into events.

Lines are streamed (`lines.iter_pieces` caps each one), never buffered whole, and what is
kept is bounded (the first and last MAX_EVIDENCE // 2 failure lines, tracebacks' last
frames, one NaN run), so a job that floods its output cannot grow guardrun. DeepSpeed's
per-rank log files (`rank_logs`) join the same stream, tagged `[rankN]: `.

Nothing here waits on the watch loop's behalf: the console queues without blocking
(console.py), the log (attemptlog.py) is bounded and survives a full disk, and the loop's
flush of a quiet log is skipped when this thread is busy writing (it flushes by itself
then). `\r` redraws (tqdm: thousands a second; one bar wrote 243 MB in 68 s) are all
parsed for progress but reach the log and the console collapsed: a redraw is held, the
next piece replaces it (as on a terminal), and at most one per REDRAW_EVERY is written.
A launcher's traceback for the signal that stopped it (guardrun's own SIGTERM, mostly)
reaches the console as one line (signalfold.py); the log keeps all of it.
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Generic, TypeVar

from ..record.attemptlog import AttemptLog
from ..record.console import Console
from ..record.spacewatch import SpaceWatch
from .lines import iter_pieces, strip_ansi
from .logs import Event
from .patterns import Patterns
from .ranklogs import RankLogs
from .rootcause import Trace, TraceTracker
from .sentinel import NanState, NanTracker
from .signalfold import SignalFold

#: Seconds a streaming log may stay unflushed (the watch loop flushes a quiet one).
FLUSH_EVERY = 0.1
#: Evidence events kept per attempt (errors, OOMs, nan...); progress only updates counters.
MAX_EVIDENCE = 256
#: Seconds between the redraws (of a `\r` progress bar) that reach the log and console.
REDRAW_EVERY = 5.0
#: logs.max_size's default: bytes of output.log per attempt.
MAX_LOG = 1 << 30

T = TypeVar("T")


class HeadTail(Generic[T]):
    """The first `size` // 2 items and the last `size` // 2: the first failure survives a flood."""

    def __init__(self, size: int):
        self._head: list[T] = []
        self._half = size // 2
        self._tail: deque[T] = deque(maxlen=size - self._half)

    def append(self, item: T) -> None:
        if len(self._head) < self._half:
            self._head.append(item)
        else:
            self._tail.append(item)

    def items(self) -> tuple[T, ...]:
        return (*self._head, *self._tail)


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    lines: int = 0
    per_epoch: bool = False  # the total is one epoch's (Lightning's `Epoch 0: ...| 10/10`), not the run's


#: A progress line whose total counts one epoch, not the whole run (policy.target_of).
_PER_EPOCH = re.compile(r"\bepoch\b", re.IGNORECASE)


class OutputReader:
    """Reads one attempt's merged stdout/stderr until EOF (every writer is gone)."""

    def __init__(self, pipe: IO[bytes], log_path: Path, console: Console, prefix: str, *,
                 patterns: Patterns = Patterns(), rank_logs: Path | None = None,
                 max_log: int = MAX_LOG, space: SpaceWatch | None = None):
        self._pipe = pipe
        self._log = AttemptLog(log_path, max_log, space)
        self._console = console
        self._prefix = prefix
        self._patterns = patterns
        self._rank_logs_dir = rank_logs
        self._rank_logs: RankLogs | None = None
        self._lock = threading.Lock()        # the state below, read by the watch loop
        self._write_lock = threading.Lock()  # the log file: the pipe and rank files both write
        self._held: str | None = None        # the newest redraw, not written yet
        self._fold = SignalFold()            # the console's lines, a signal's traceback folded
        self._redrawn_at = float("-inf")     # when a redraw last reached the log
        self._evidence: HeadTail[Event] = HeadTail(MAX_EVIDENCE)
        self._traces = TraceTracker()
        self._nan = NanTracker()
        self._success = False
        self._progress = Progress()
        self._lines = 0
        self._flushed_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="guardrun-output", daemon=True)

    def start(self) -> "OutputReader":
        self._log.open()
        self._thread.start()
        if self._rank_logs_dir is not None:
            self._rank_logs = RankLogs(self._rank_logs_dir, self._rank_line).start()
        return self

    def stopping(self) -> None:
        """guardrun is stopping the attempt: the launcher's traceback for that signal is folded."""
        self._fold.arm()

    def join(self, timeout: float) -> bool:
        """Wait for EOF (and the rank files' ends); False if the pipe is still open after `timeout`."""
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        if self._rank_logs is not None:
            done = self._rank_logs.stop(timeout) and done
        if done:
            with self._write_lock:
                if self._held is not None:  # the output ended on a redraw: it is the last state
                    self._show(self._held)
                    self._held = None
                for line in self._fold.end():
                    self._console.output(self._prefix, line)
                self._log.close()
        return done

    def progress(self) -> Progress:
        """Asked every interval by the watch loop, which is also when a quiet log is flushed."""
        self._flush(force=True)
        with self._lock:
            return replace(self._progress, lines=self._lines)

    def evidence(self) -> tuple[Event, ...]:
        with self._lock:
            return self._evidence.items()

    def traces(self) -> tuple[Trace, ...]:
        with self._lock:
            return self._traces.traces()

    def nan(self) -> NanState:
        with self._lock:
            return self._nan.state()

    def succeeded(self) -> bool:
        """Whether the recipe's success regex matched a line."""
        with self._lock:
            return self._success

    def _run(self) -> None:
        for raw, redraw in iter_pieces(self._pipe):
            self.feed(raw, redraw)
        self._pipe.close()

    def _rank_line(self, rank: int, raw: str) -> None:
        self.feed(f"[rank{rank}]: {raw}")

    def feed(self, raw: str, redraw: bool = False) -> None:
        """One line of the job's output, from the pipe or a rank's file; `redraw`: it ended
        in a bare '\\r', so the next piece overwrites it on a terminal."""
        line = raw if raw.isprintable() else strip_ansi(raw)  # isprintable: one C pass, no regex
        with self._write_lock:
            if not redraw:
                self._held = None  # overwritten by this line, as on a terminal
                self._show(line)
            elif time.monotonic() - self._redrawn_at >= REDRAW_EVERY:
                self._held, self._redrawn_at = None, time.monotonic()
                self._show(line)
            else:
                self._held = line
            self._take(line)
        self._flush(force=False)

    def _show(self, line: str) -> None:
        self._log.write(line)
        for shown in self._fold.feed(line):
            self._console.output(self._prefix, shown)

    def _flush(self, force: bool) -> None:
        """Flush the log at most every FLUSH_EVERY while lines stream in (a flush per line
        cost ~6 µs of the ~40 µs a line takes here), and on the watch loop's every visit
        (`force`), so a job that went quiet has all its lines in the file within one
        interval. The loop never waits for the lock: if this thread holds it, it is busy
        writing and flushes by itself."""
        now = time.monotonic()
        if not force and now - self._flushed_at < FLUSH_EVERY:
            return
        if not self._write_lock.acquire(blocking=not force):
            return
        try:
            if self._held is not None and now - self._redrawn_at >= REDRAW_EVERY:
                self._show(self._held)  # a bar that stopped moving: its last state, in the file
                self._held, self._redrawn_at = None, now
            self._log.flush()
            self._flushed_at = now
        finally:
            self._write_lock.release()

    def _take(self, line: str) -> None:
        events = self._patterns.events(line)  # the built-in recognisers', then the recipe's
        success = self._patterns.succeeded(line)
        if not events and not success:  # nearly every line: count it, follow tracebacks, done
            with self._lock:
                self._traces.feed(line, events)
                self._lines += 1
            return
        with self._lock:
            progress = self._progress
            step, total, loss, per_epoch = progress.step, progress.total, progress.loss, progress.per_epoch
            for event in events:
                if event.step is not None and event.kind in ("progress", "loss", "nan"):
                    step = event.step
                    self._nan.see_step(event.step)
                if event.total is not None:
                    total = event.total
                    per_epoch = _PER_EPOCH.search(event.text) is not None
                if event.loss is not None:
                    loss = event.loss
                if event.kind in ("loss", "nan"):
                    self._nan.feed(event, step)
                if event.kind not in ("progress", "loss"):
                    self._evidence.append(event)
            self._traces.feed(line, events)
            self._success = self._success or success
            self._lines += 1
            self._progress = Progress(step, total, loss, per_epoch=per_epoch)

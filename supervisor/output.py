"""The job's output, read on a thread: into the attempt's log, onto the console, into events.

Lines are streamed (`lines.iter_lines` caps each one), never buffered whole, and what is
kept is bounded (the first and last MAX_EVIDENCE // 2 failure lines, tracebacks' last
frames, one NaN run), so a job that floods its output cannot grow guardrun. DeepSpeed's
per-rank log files (`rank_logs`) join the same stream, tagged `[rankN]: `.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Generic, TypeVar

from .console import Console
from .lines import iter_lines, strip_ansi
from .logs import Event, parse_line
from .patterns import Patterns
from .ranklogs import RankLogs
from .rootcause import Trace, TraceTracker
from .sentinel import NanState, NanTracker

#: Seconds a streaming log may stay unflushed (the watch loop flushes a quiet one).
FLUSH_EVERY = 0.1
#: Evidence events kept per attempt (errors, OOMs, nan...); progress only updates counters.
MAX_EVIDENCE = 256

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


class OutputReader:
    """Reads one attempt's merged stdout/stderr until EOF (every writer is gone)."""

    def __init__(self, pipe: IO[bytes], log_path: Path, console: Console, prefix: str, *,
                 patterns: Patterns = Patterns(), rank_logs: Path | None = None):
        self._pipe = pipe
        self._log_path = log_path
        self._console = console
        self._prefix = prefix
        self._patterns = patterns
        self._rank_logs_dir = rank_logs
        self._rank_logs: RankLogs | None = None
        self._log: IO[str] | None = None
        self._lock = threading.Lock()        # the state below, read by the watch loop
        self._write_lock = threading.Lock()  # the log file: the pipe and rank files both write
        self._evidence: HeadTail[Event] = HeadTail(MAX_EVIDENCE)
        self._traces = TraceTracker()
        self._nan = NanTracker()
        self._success = False
        self._progress = Progress()
        self._lines = 0
        self._unflushed = False
        self._flushed_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="guardrun-output", daemon=True)

    def start(self) -> "OutputReader":
        self._log = open(self._log_path, "a", encoding="utf-8", errors="replace")
        self._thread.start()
        if self._rank_logs_dir is not None:
            self._rank_logs = RankLogs(self._rank_logs_dir, self._rank_line).start()
        return self

    def join(self, timeout: float) -> bool:
        """Wait for EOF (and the rank files' ends); False if the pipe is still open after `timeout`."""
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        if self._rank_logs is not None:
            done = self._rank_logs.stop(timeout) and done
        if done and self._log is not None:
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
        for raw in iter_lines(self._pipe):
            self.feed(raw)
        self._pipe.close()

    def _rank_line(self, rank: int, raw: str) -> None:
        self.feed(f"[rank{rank}]: {raw}")

    def feed(self, raw: str) -> None:
        """One line of the job's output, from the pipe or a rank's file."""
        line = raw if raw.isprintable() else strip_ansi(raw)  # isprintable: one C pass, no regex
        with self._write_lock:
            if self._log is not None and not self._log.closed:
                self._log.write(line + "\n")
                self._unflushed = True
            self._console.output(self._prefix, line)
            self._take(line)
        self._flush(force=False)

    def _flush(self, force: bool) -> None:
        """Flush the log at most every FLUSH_EVERY while lines stream in (a flush per line
        cost ~6 µs of the ~40 µs a line takes here), and on the watch loop's every visit,
        so a job that went quiet has all its lines in the file within one interval."""
        if not self._unflushed:
            return
        now = time.monotonic()
        if not force and now - self._flushed_at < FLUSH_EVERY:
            return
        with self._write_lock:
            if self._log is not None and not self._log.closed:
                self._log.flush()
            self._unflushed, self._flushed_at = False, now

    def _take(self, line: str) -> None:
        events = parse_line(line) + self._patterns.scan(line)
        success = self._patterns.succeeded(line)
        if not events and not success:  # nearly every line: count it, follow tracebacks, done
            with self._lock:
                self._traces.feed(line, events)
                self._lines += 1
            return
        with self._lock:
            progress = self._progress
            step, total, loss = progress.step, progress.total, progress.loss
            for event in events:
                if event.step is not None and event.kind in ("progress", "loss", "nan"):
                    step = event.step
                    self._nan.see_step(event.step)
                if event.total is not None:
                    total = event.total
                if event.loss is not None:
                    loss = event.loss
                if event.kind in ("loss", "nan"):
                    self._nan.feed(event, step)
                if event.kind not in ("progress", "loss"):
                    self._evidence.append(event)
            self._traces.feed(line, events)
            self._success = self._success or success
            self._lines += 1
            self._progress = Progress(step, total, loss)

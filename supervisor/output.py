"""The job's output, read on a thread: into the attempt's log, onto the console, into events.

Lines are streamed (`lines.iter_lines` caps each one), never buffered whole, and the
events kept are bounded, so a job that floods its output cannot grow guardrun.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .console import Console
from .lines import iter_lines, strip_ansi
from .logs import Event, parse_line

#: Evidence events kept per attempt (errors, OOMs, nan...); progress only updates counters.
MAX_EVIDENCE = 256


@dataclass(frozen=True)
class Progress:
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    lines: int = 0


class OutputReader:
    """Reads one attempt's merged stdout/stderr until EOF (every writer is gone)."""

    def __init__(self, pipe: IO[bytes], log_path: Path, console: Console, prefix: str):
        self._pipe = pipe
        self._log_path = log_path
        self._console = console
        self._prefix = prefix
        self._lock = threading.Lock()
        self._evidence: deque[Event] = deque(maxlen=MAX_EVIDENCE)
        self._progress = Progress()
        self._thread = threading.Thread(target=self._run, name="guardrun-output", daemon=True)

    def start(self) -> "OutputReader":
        self._thread.start()
        return self

    def join(self, timeout: float) -> bool:
        """Wait for EOF; False if the pipe is still open after `timeout` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def progress(self) -> Progress:
        with self._lock:
            return self._progress

    def evidence(self) -> tuple[Event, ...]:
        with self._lock:
            return tuple(self._evidence)

    def _run(self) -> None:
        with open(self._log_path, "a", encoding="utf-8", errors="replace") as log:
            for raw in iter_lines(self._pipe):
                line = strip_ansi(raw)
                log.write(line + "\n")
                log.flush()
                self._console.output(self._prefix, line)
                self._take(line)
        self._pipe.close()

    def _take(self, line: str) -> None:
        events = parse_line(line)
        with self._lock:
            progress = self._progress
            step, total, loss = progress.step, progress.total, progress.loss
            for event in events:
                if event.step is not None and event.kind in ("progress", "loss", "nan"):
                    step = event.step
                if event.total is not None:
                    total = event.total
                if event.loss is not None:
                    loss = event.loss
                if event.kind not in ("progress", "loss"):
                    self._evidence.append(event)
            self._progress = Progress(step, total, loss, progress.lines + 1)

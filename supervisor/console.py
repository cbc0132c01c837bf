"""What the person at the terminal sees: the job's output and one live status line.

On a terminal the status line is redrawn in place under the job's output; elsewhere
(a pipe, a log file, journald) plain lines are written instead, the status at most
every `plain_every` seconds. After a hangup (SIGHUP, a dropped SSH session) or a write
error nothing is written at all: the journal keeps everything.
"""
from __future__ import annotations

import sys
import threading
from typing import TextIO

_CLEAR = "\r\x1b[K"


class Console:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False,
                 tty: bool | None = None, plain_every: float = 30.0):
        self._stream = stream if stream is not None else sys.stdout
        self._tty = self._stream.isatty() if tty is None else tty
        self._quiet = quiet
        self._status = ""
        self._lock = threading.Lock()  # the output reader thread and the loop both write
        self._plain_every = plain_every
        self._last_plain: float | None = None

    @property
    def attached(self) -> bool:
        return self._stream is not None

    def detach(self) -> None:
        """Stop writing (the terminal hung up). Safe to call from a signal handler."""
        self._stream = None

    def output(self, prefix: str, line: str) -> None:
        """One line of the job's output."""
        if not self._quiet:
            self._write(f"{prefix}{line}\n")

    def say(self, text: str) -> None:
        """One of guardrun's own messages, always shown."""
        self._write(f"guardrun: {text}\n")

    def status(self, text: str, now: float) -> None:
        """The live status line (or, off a terminal, a plain line now and then)."""
        if self._tty:
            with self._lock:
                self._status = text
                self._raw(_CLEAR + text)
        elif self._last_plain is None or now - self._last_plain >= self._plain_every:
            self._last_plain = now
            self._write(f"guardrun: {text}\n")

    def clear_status(self) -> None:
        if self._tty:
            with self._lock:
                self._status = ""
                self._raw(_CLEAR)

    def _write(self, text: str) -> None:
        with self._lock:
            if self._tty and self._status:
                self._raw(_CLEAR + text + self._status)
            else:
                self._raw(text)

    def _raw(self, text: str) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # EIO/EPIPE after a hangup, or a closed stream
            self._stream = None

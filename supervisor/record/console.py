"""What the person at the terminal sees: the job's output and one live status line.

On a terminal the status line is redrawn in place under the job's output, fitted to the
terminal's width (record/statusline.py: it never wraps), measured again after a SIGWINCH;
the cursor waits at the line's start, so that a terminal that re-wraps a narrowed line
(tmux, VTE) still has all of it below the cursor, where each redraw erases. Elsewhere
(a pipe, a log file, journald) plain lines are written instead, the status at most
every `plain_every` seconds; when the stream is the journal (systemd's JOURNAL_STREAM
names its device and inode) every line starts with its syslog priority (`<3>` errors and
giving up, `<4>` warnings and failed attempts, `<6>` the rest and all of the job's lines:
guardrun cannot tell how much one of them matters, and an explicit `<6>` keeps a job's
line that begins with `<N>` from being read as a priority). After a hangup (SIGHUP, a
dropped SSH session) or a write error nothing is written at all: the journal keeps everything.

Nobody waits on the terminal. A stream with a file descriptor (the real stdout: a tty,
a pipe, a file) is written by a thread of its own, `guardrun-console`, from a bounded
queue; callers (the output thread, the watch loop) only append to it. A reader that
stops reading (`guardrun run r.yaml | sleep 600`, Ctrl-S, a stalled SSH session) then
blocks that thread alone: the queue fills, the oldest queued lines of the job are dropped
and counted (the newest, a crash's last lines, matter most), and once the reader takes
data again the terminal says "N lines not shown on this terminal (it was not read)"
where they were lost. Before the fix a stalled pipe held the lock the
watch loop needed and a job grew to 800 MB past a 400 MiB limit. guardrun's own lines
are never dropped for the job's (up to OWN_ROOM of them). A write error that does not
end the stream (ENOSPC under a stdout redirected to a full disk) costs that write's lines,
said the same way once a write works again (retried every RETRY_AFTER). At exit the queue is given
EXIT_DRAIN seconds to reach the terminal. A stream without a descriptor (a StringIO in
tests) cannot block and is written at once.
"""
from __future__ import annotations

import atexit
import errno
import os
import select
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TextIO

from ..core import signals
from . import levels
from .statusline import fit

#: Back to the line's start and erase to the end of the screen: all of a status line a
#: narrowed terminal re-wrapped, since the cursor was left at its start.
_CLEAR = "\r\x1b[J"
#: Columns left free at the right: a line that fills the last column wraps on some terminals.
MARGIN = 1
#: The width taken when the terminal cannot be asked (a StringIO with tty=True in tests).
DEFAULT_WIDTH = 80
#: Queue bounds: items and characters (~10,000 lines of 100 bytes: a few seconds of a
#: flooding job on a terminal that reads, but slower; past it, the oldest queued lines of
#: the job are dropped: the newest, a crash's last lines, matter most).
MAX_QUEUED = 10_000
MAX_CHARS = 1 << 20
#: At most this many of guardrun's own lines are queued (they are never dropped for the job's).
OWN_ROOM = 200
#: Characters the writer takes per write: what is in flight stays small.
BATCH_CHARS = 256 * 1024
#: Seconds given, at exit, to what is still queued.
EXIT_DRAIN = 2.0
#: Seconds before writing again after an error that did not end the stream.
RETRY_AFTER = 1.0
#: Errors after which the stream is given up (the reader is gone for good); others
#: (ENOSPC on a redirected stdout, say) cost the lines of that write only.
_GONE = {errno.EPIPE, errno.EIO, errno.EBADF, errno.ENXIO, errno.EINVAL, errno.ECONNRESET}


class Console:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False,
                 tty: bool | None = None, plain_every: float = 30.0):
        self._stream = stream if stream is not None else sys.stdout
        self._tty = self._stream.isatty() if tty is None else tty
        self._journald = not self._tty and _is_journal(self._stream)
        self._quiet = quiet
        self._status = ""    # the status as drawn (fitted, then back to its start)
        self._width = DEFAULT_WIDTH
        self._measured_at: int | None = None  # signals.resizes when the width was measured
        self._lock = threading.Lock()  # the output reader thread and the loop both write
        self._plain_every = plain_every
        self._last_plain: float | None = None
        self._sink = _sink_for(self._stream, self._tty, self._priority(levels.WARNING))

    def detach(self) -> None:
        """Stop writing (the terminal hung up). Safe to call from a signal handler."""
        self._sink.attached = False

    def output(self, prefix: str, line: str) -> None:
        """One line of the job's output."""
        if not self._quiet:
            self._write(f"{self._priority(levels.INFO)}{prefix}{line}\n", own=False)

    def say(self, text: str) -> None:
        """One of guardrun's own messages, always shown (`levels.warning(text)`,
        `levels.error(text)`: with that priority on journald)."""
        priority = self._priority(levels.of_line(text))
        self._write("".join(f"{priority}{line}\n" for line in f"guardrun: {text}".split("\n")), own=True)

    def status(self, text: str, now: float) -> None:
        """The live status line (a statusline.StatusLine, or any text: cropped to fit),
        or, off a terminal, a plain line now and then."""
        if self._tty:
            with self._lock:
                self._status = fit(text, self._columns() - MARGIN) + "\r"
                self._sink.put(_CLEAR + self._status, own=False)  # the next redraw replaces it anyway
        elif self._last_plain is None or now - self._last_plain >= self._plain_every:
            self._last_plain = now
            self._write(f"{self._priority(levels.INFO)}guardrun: {text}\n", own=True)

    def clear_status(self) -> None:
        if self._tty:
            with self._lock:
                self._status = ""
                self._sink.put(_CLEAR, own=False)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` for what is queued to reach the stream; False if it did not
        (a reader that does not read, a disk that stays full)."""
        return self._sink.drain(timeout)

    def _columns(self) -> int:
        """The terminal's width, asked again after each SIGWINCH (the handler only counts)."""
        if self._measured_at != signals.resizes():
            self._measured_at = signals.resizes()
            try:
                self._width = os.get_terminal_size(self._stream.fileno()).columns or DEFAULT_WIDTH
            except (AttributeError, OSError, ValueError):
                pass  # not a real terminal: the width it had
        return self._width

    def _priority(self, level: str) -> str:
        return f"<{levels.PRIORITY[level]}>" if self._journald else ""

    def _write(self, text: str, own: bool) -> None:
        with self._lock:
            if self._tty and self._status:
                self._sink.put(_CLEAR + text + self._status, own=own)
            else:
                self._sink.put(text, own=own)


class _Own(str):
    """One of guardrun's own lines (or the status line): kept when the job's are dropped."""


@dataclass
class _Failed:
    """Lines a write error (not the end of the stream) cost."""

    lines: int
    reason: str


class _Direct:
    """An in-memory stream: written at once, it cannot block."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self.attached = True

    def put(self, text: str, own: bool) -> None:
        if not self.attached:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # EIO/EPIPE after a hangup, or a closed stream
            self.attached = False

    def drain(self, timeout: float) -> bool:
        return True


class _Threaded:
    """A file descriptor written by its own thread from a bounded queue (see the module doc)."""

    def __init__(self, fd: int, encoding: str, tty: bool, warning: str = ""):
        self._fd = fd
        self._encoding = encoding
        self._tty = tty
        self._warning = warning  # the priority prefix of its notices on journald ('' elsewhere)
        self.attached = True
        self._queue: deque[str] = deque()  # the job's lines as str, guardrun's as _Own
        self._chars = 0
        self._owned = 0      # _Own items in the queue
        self._unread = 0     # lines dropped since the last write: said before the next one
        self._busy = False
        self._at_line_start = True
        self._failed: _Failed | None = None  # what the last write error cost, not said yet
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        _DRAIN_AT_EXIT.add(self)

    def put(self, text: str, own: bool) -> None:
        with self._cond:
            if not self.attached:
                return
            item = _Own(text) if own else text
            if own and self._owned >= OWN_ROOM:
                self._unread += text.count("\n")  # a flood of guardrun's own lines: the newest go
                return
            while self._queue and (len(self._queue) >= MAX_QUEUED or self._chars + len(text) > MAX_CHARS):
                self._drop_oldest()
            self._queue.append(item)
            self._chars += len(text)
            self._owned += own
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="guardrun-console", daemon=True)
                self._thread.start()
            if len(self._queue) == 1:  # the writer waits only on an empty queue
                self._cond.notify()

    def _drop_oldest(self) -> None:
        """Drop the oldest of the job's queued lines (the newest matter most: a crash's last
        lines); guardrun's own lines are kept, in their place."""
        kept = []
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Own):
                kept.append(item)
                continue
            self._chars -= len(item)
            self._unread += item.count("\n")
            break
        self._queue.extendleft(reversed(kept))
        if len(kept) == len(self._queue):  # nothing but our own lines: make room anyway
            item = self._queue.popleft()
            self._chars -= len(item)
            self._owned -= 1
            self._unread += item.count("\n")

    def drain(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self.attached or not (
                self._queue or self._busy or self._failed or self._unread), timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._queue or self._unread)
                items = self._take()
                unread, self._unread, self._busy = self._unread, 0, True
            if not self.attached:
                continue
            text = self._notice(unread, "it was not read") if unread else ""
            text += "".join(items)
            if self._failed is not None:  # say what the last error cost before going on
                if self._send(self._notice(self._failed.lines, self._failed.reason)) is not None:
                    self._failed.lines += text.count("\n")
                    time.sleep(RETRY_AFTER)
                    continue
                self._failed = None
            lost = self._send(text)
            if lost is not None:
                self._failed = lost
                time.sleep(RETRY_AFTER)  # not a write per line against a full disk

    def _take(self) -> list[str]:
        """The oldest queued items, up to BATCH_CHARS: what is in flight stays small."""
        items, size = [], 0
        while self._queue and (not items or size + len(self._queue[0]) <= BATCH_CHARS):
            item = self._queue.popleft()
            size += len(item)
            self._owned -= isinstance(item, _Own)
            items.append(item)
        self._chars -= size
        return items

    def _notice(self, lines: int, why: str) -> str:
        return (f"{_CLEAR if self._tty else self._warning}guardrun: {lines} line{'s' if lines != 1 else ''} "
                f"not shown on this terminal ({why})\n")

    def _send(self, text: str) -> _Failed | None:
        """Write all of `text`; what an error (ENOSPC under a redirected stdout, say) cost,
        or None. An error that ends the stream (EPIPE, EIO after a hangup) detaches."""
        if not self._at_line_start:  # a failed write stopped mid-line
            text = "\n" + text
        data = memoryview(text.encode(self._encoding, "replace"))
        while data:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:  # someone made the fd non-blocking: wait until it drains
                select.select([], [self._fd], [], 1.0)
                continue
            except OSError as err:
                if err.errno in _GONE:
                    self.attached = False
                    return None
                return _Failed(bytes(data).count(b"\n"), f"writing it failed: {err.strerror}")
            if written:
                self._at_line_start = self._tty or data[written - 1] == 10
            data = data[written:]
        return None


def _is_journal(stream: TextIO) -> bool:
    """Whether `stream` is systemd's journal: JOURNAL_STREAM is its `device:inode`."""
    try:
        device, inode = (int(part) for part in os.environ.get("JOURNAL_STREAM", "").split(":"))
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def _sink_for(stream: TextIO, tty: bool, warning: str):
    """A thread-written sink for a stream with a descriptor, a direct one otherwise."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return _Direct(stream)
    try:
        stream.flush()  # what was printed through the stream before goes first
    except (OSError, ValueError):
        pass
    return _Threaded(fd, getattr(stream, "encoding", None) or "utf-8", tty, warning)


_DRAIN_AT_EXIT: "weakref.WeakSet[_Threaded]" = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    """Give the last lines (guardrun's verdict) EXIT_DRAIN seconds to reach the terminal;
    a reader that never reads does not keep guardrun from exiting."""
    for sink in list(_DRAIN_AT_EXIT):
        sink.drain(EXIT_DRAIN)

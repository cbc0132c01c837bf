"""An attempt's output.log: buffered, bounded by `logs.max_size`, and never raising.

Bound (head + rolling tail, one file, so `guardrun logs` and the root cause read it as
before): the first half of `max_size` is kept as written; then a fixed-width note line;
then the newest output. Whenever the file reaches `max_size`, the newest quarter of it
(from a line start) is moved up to just after the note and the file is truncated there,
and the note, rewritten in place, says how many bytes and lines were dropped so far. So
the file stays between 3/4 and all of `max_size` once full, the first failure is in the
head and the last one in the tail; moving a quarter every quarter written costs one
extra write of each byte at most. (A `guardrun logs -f` reading while the tail is moved
may miss up to a quarter of `max_size`; the file itself says what was dropped.)

A full or failing disk (spacewatch.py): the lines that could not be written are dropped
and counted; a write is retried every few seconds; the first that works is preceded by
a line saying how many lines were not written, and since when.
"""
from __future__ import annotations

import os
from pathlib import Path

from guardrun.launcher.units import format_bytes

from .spacewatch import SpaceWatch, write_all

WHAT = "output.log"
#: Flush at once past this many buffered characters (the output thread batches ~0.1 s of lines).
BUFFER_MAX = 1 << 20
_COPY = 1 << 20
_NOTE = ("[guardrun] {size:>15} bytes ({lines:>12} lines) of output dropped here: logs.max_size "
         "{limit} keeps the first half and the newest output\n")


class AttemptLog:
    def __init__(self, path: Path, max_size: int, space: SpaceWatch | None = None):
        self.path = path
        self.max_size = max_size
        self.space = space or SpaceWatch()
        self._fd = -1
        self._buf: list[str] = []  # lines not written yet (joined and encoded at flush: C speed)
        self._chars = 0
        self._size = 0           # the file's size (our own offset: no O_APPEND, the tail moves)
        self._tail_at: int | None = None  # where the tail starts, once the head is full
        self._tail_lines = 0
        self._dropped = (0, 0)   # bytes, lines moved out of the tail so far
        self._torn = False

    def open(self) -> "AttemptLog":
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, 0o600)
            self._size = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as err:
            self.space.failed(WHAT, err)
        return self

    def write(self, line: str) -> None:
        """One line (without its end). Buffered: `flush` writes it."""
        self._buf.append(line)
        self._chars += len(line)
        if self._chars >= BUFFER_MAX:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        lines = len(self._buf)
        data = ("\n".join(self._buf) + "\n").encode("utf-8", "replace")
        self._buf.clear()
        self._chars = 0
        if self._fd < 0 or not self.space.may_write(WHAT):
            self.space.lost(WHAT, lines=lines, size=len(data))
            return
        outage = self.space.peek(WHAT)
        if outage is not None:
            lost = f"{outage.lost_lines} lines ({format_bytes(outage.lost_bytes)})"
            data = (f"[guardrun] {lost} not written here: the state dir was full "
                    f"({outage.reason}) from {outage.since_wall}\n").encode() + data
        if self._torn:
            data = b"\n" + data
        if not self._append(data, lines):
            return
        self.space.worked(WHAT)

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the bound ---------------------------------------------------------------------
    def _append(self, data: bytes, lines: int) -> bool:
        """Write `data` within the bound; False (and counted) if the disk refused it."""
        try:
            if self._tail_at is None and self._size + len(data) > self.max_size // 2:
                data = self._fill_head(data)
            if self._tail_at is not None and self._size + len(data) > self.max_size:
                trimmed = self._trim(data)
                # kept + a flush (at most a quarter) fits; after a trim the old tail is
                # older than the dropped start of this flush: keeping it would leave a gap
                keep = 0 if len(trimmed) < len(data) else self.max_size - self.max_size // 4 - self._tail_at
                data = trimmed
                self._compact(keep)
        except OSError as err:  # the head's write, or pread/pwrite/ftruncate moving the tail
            self.space.failed(WHAT, err, lines=lines, size=len(data))
            return False
        written, err = write_all(self._fd, data)
        self._size += written
        if self._tail_at is not None:
            self._tail_lines += data[:written].count(b"\n")
        if written:
            self._torn = not data[:written].endswith(b"\n")
        if err is not None:
            self.space.failed(WHAT, err, lines=lines, size=len(data) - written)
            return False
        return True

    def _fill_head(self, data: bytes) -> bytes:
        """Write the lines of `data` that fit in the head, then the note; the rest is tail."""
        room = self.max_size // 2 - self._size
        cut = data.rfind(b"\n", 0, max(room, 0)) + 1
        head = data[:cut] + self._note()
        written, err = write_all(self._fd, head)
        self._size += written
        if written:
            self._torn = not head[:written].endswith(b"\n")
        if err is not None:
            raise err
        self._tail_at = self._size
        return data[cut:]

    def _trim(self, data: bytes) -> bytes:
        """At most a quarter of `max_size` of one flush, from a line start (a flood's flush
        can be larger than a small bound)."""
        quarter = self.max_size // 4
        if len(data) <= quarter:
            return data
        start = data.find(b"\n", len(data) - quarter) + 1 or len(data)
        size, lines = self._dropped
        self._dropped = (size + start, lines + data.count(b"\n", 0, start))
        return data[start:]

    def _note(self) -> bytes:
        size, lines = self._dropped
        return _NOTE.format(size=size, lines=lines, limit=format_bytes(self.max_size)).encode()

    def _compact(self, keep: int) -> None:
        """Move the newest `keep` bytes of the tail (from a line start) up to the tail's
        start; truncate after them."""
        keep_from = max(self._tail_at, self._size - keep)
        # start the kept part at a line start
        if keep_from > self._tail_at:
            probe = os.pread(self._fd, min(65536, self._size - keep_from), keep_from - 1)
            newline = probe.find(b"\n")  # from the byte before: a kept part may start a line
            keep_from = keep_from + newline if newline >= 0 else self._size
        src, dst, kept_lines = keep_from, self._tail_at, 0
        while src < self._size:
            chunk = os.pread(self._fd, min(_COPY, self._size - src), src)
            os.pwrite(self._fd, chunk, dst)
            kept_lines += chunk.count(b"\n")
            src, dst = src + len(chunk), dst + len(chunk)
        dropped = keep_from - self._tail_at
        self._dropped = (self._dropped[0] + dropped, self._dropped[1] + self._tail_lines - kept_lines)
        self._tail_lines = kept_lines
        os.ftruncate(self._fd, dst)
        self._size = dst
        os.lseek(self._fd, dst, os.SEEK_SET)
        note = self._note()
        os.pwrite(self._fd, note, self._tail_at - len(note))

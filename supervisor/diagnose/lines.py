"""Bounded line reading from the job's merged stdout/stderr pipe, and terminal-code stripping.

A job can print anything: a 10 MB JSON dump on one line, tqdm bars that only ever end in
'\\r', invalid UTF-8, colour codes. `iter_lines` never holds more than about
`max_line` + one 64 KiB read per line, so a flooding job cannot grow guardrun.

Line ends are '\\n', '\\r' and '\\r\\n' (tqdm redraws its bar after a '\\r'). A line longer
than `max_line` bytes is cut: its first `max_line` bytes are yielded with ' …[cut]' appended
and the rest is dropped up to the next line end. Pieces are not yielded because a later
piece would look like the start of a line to the anchored patterns in `logs.py` (a piece
that happens to start with "Killed" or "ImportError:" would be taken for evidence).

Measured (this machine, CPython 3.11, one core): 1,000,000 lines of 80 bytes from a pipe in
about 0.54 s (~1.8M lines/s); a 10 MB single line: tracemalloc peak ~0.4 MB.
"""
from __future__ import annotations

import os
import re
from typing import BinaryIO, Iterator, Union

CHUNK = 64 * 1024
MAX_LINE = 64 * 1024
CUT_MARK = " …[cut]"

_LINE_END = re.compile(rb"[\r\n]")

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST, or unterminated up to the next ESC/end),
# other two-byte and nF ESC sequences, 8-bit CSI, and C0 controls except tab, plus DEL.
_TERMINAL_CODES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[ -/]*[0-~]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x00-\x08\x0a-\x1f\x7f]"
)

Source = Union[int, BinaryIO]


def strip_ansi(text: str) -> str:
    """`text` without terminal control sequences (colours, cursor moves, titles) or C0 controls but tab."""
    return _TERMINAL_CODES.sub("", text)


def iter_lines(source: Source, max_line: int = MAX_LINE) -> Iterator[str]:
    """Yield decoded lines (without their ends) from a binary fd or file object until EOF.

    `source` is an int file descriptor (read with os.read) or a binary file object (read
    with read1 when it has one: one raw read, so no data its buffer already holds is lost
    and it never waits to fill 64 KiB, as read(n) on a pipe would). Decoding is UTF-8 with
    errors='replace'. Blank pieces that end in '\\r' or '\\r\\n' (tqdm clearing its bar)
    are skipped; blank lines ending in a bare '\\n' are kept. A final line without an end
    is yielded too.
    """
    for line, _redraw in iter_pieces(source, max_line):
        yield line


def iter_pieces(source: Source, max_line: int = MAX_LINE) -> Iterator[tuple[str, bool]]:
    """`iter_lines`, each line with whether it ended in a bare '\\r' (a redraw: tqdm's bar,
    which the next piece overwrites on a terminal). A '\\r' that ends a read is held until
    the next read says whether a '\\n' follows it, so a '\\r\\n' split across reads is one
    line end, never a redraw."""
    read = _reader(source)
    pending = b""
    dropping = False   # inside an over-long line whose head was already yielded
    skip_lf = False    # a consumed '\\r' ended the last read: a '\\n' starting this one ends nothing
    while chunk := read(CHUNK):
        if skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        skip_lf = False
        if dropping:
            rest, dropping = _after_line_end(chunk)
            skip_lf = not dropping and not rest and chunk.endswith(b"\r")
            if dropping or not rest:
                continue
            chunk, pending = rest, b""
        data = pending + chunk if pending else chunk
        parts = data.splitlines(keepends=True)
        pending = b""
        if parts and (not parts[-1].endswith((b"\n", b"\r")) or parts[-1].endswith(b"\r")):
            pending = parts.pop()  # no end yet, or a '\\r' that may be half of '\\r\\n'
        for part in parts:
            line = _decoded(part, max_line)
            if line is not None:
                yield line, _is_redraw(part)
        if pending.endswith(b"\r") and len(pending) > max_line + 1:
            yield _cut(pending, max_line), True  # the line did end: nothing to drop after it
            pending, skip_lf = b"", True
        elif len(pending) > max_line and not pending.endswith(b"\r"):
            yield _cut(pending, max_line), False
            pending, dropping = b"", True
    if pending.endswith(b"\r"):
        line = _decoded(pending, max_line)
        if line is not None:
            yield line, True
    elif pending:
        yield (_cut(pending, max_line) if len(pending) > max_line
               else pending.decode("utf-8", "replace")), False


def _is_redraw(part: bytes) -> bool:
    return part.endswith(b"\r")


def _reader(source: Source):
    if isinstance(source, int):
        return lambda size: os.read(source, size)
    return getattr(source, "read1", None) or source.read


def _after_line_end(chunk: bytes) -> tuple[bytes, bool]:
    """The chunk after the first line end, and whether we are still dropping."""
    found = _LINE_END.search(chunk)
    if found is None:
        return b"", True
    end = found.end()
    if chunk[end - 1:end + 1] == b"\r\n":
        end += 1
    return chunk[end:], False


def _decoded(part: bytes, max_line: int) -> str | None:
    """One complete line (its end included) as text, or None for a tqdm clearing piece.

    The length is checked first so that an over-long line gives the same result whether
    its end arrived in the same read or a later one.
    """
    body = part.rstrip(b"\r\n")   # one end only: splitlines gave '\n', '\r' or '\r\n'
    if len(body) > max_line:
        return _cut(body, max_line)
    if part.endswith((b"\r", b"\r\n")) and not body.strip():
        return None
    return body.decode("utf-8", "replace")


def _cut(data: bytes, max_line: int) -> str:
    """The first max_line bytes of an over-long line, backed off to a UTF-8 character start."""
    end = max_line
    while end > max_line - 3 and end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end].decode("utf-8", "replace") + CUT_MARK

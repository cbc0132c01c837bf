"""Bounded line reading from the job's pipe (supervisor/diagnose/lines.py)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrun.supervisor.diagnose.lines import CUT_MARK, iter_lines, iter_pieces, strip_ansi


class Trickle(io.RawIOBase):
    """A pipe that hands out its bytes in the given read sizes (the last one repeats)."""

    def __init__(self, data: bytes, sizes: list[int]):
        self._data, self._sizes, self._pos = data, sizes or [len(data) or 1], 0

    def read1(self, size: int = -1) -> bytes:
        step = self._sizes[0] if len(self._sizes) == 1 else self._sizes.pop(0)
        chunk = self._data[self._pos:self._pos + min(size, max(step, 1))]
        self._pos += len(chunk)
        return chunk


def lines_of(data: bytes, sizes: list[int] | None = None, max_line: int = 64 * 1024) -> list[str]:
    return list(iter_lines(Trickle(data, sizes or [len(data) or 1]), max_line=max_line))


def test_newline_and_carriage_return_both_end_lines():
    assert lines_of(b"a\nb\rc\r\nd\n") == ["a", "b", "c", "d"]


def test_tqdm_redraws_are_separate_lines_and_clearing_pieces_are_dropped():
    bar = (b"\r  0%|          | 0/12 [00:00<?, ?it/s]\r                    \r"
           b"{'loss': '4.851'}\n\r 17%|#         | 2/12 [00:00<00:00, 52.15it/s]")
    assert lines_of(bar) == ["  0%|          | 0/12 [00:00<?, ?it/s]", "{'loss': '4.851'}",
                             " 17%|#         | 2/12 [00:00<00:00, 52.15it/s]"]


def test_blank_lines_ending_in_newline_are_kept():
    assert lines_of(b"a\n\n\nb\n") == ["a", "", "", "b"]


def test_partial_final_line_is_yielded():
    assert lines_of(b"first\nno end") == ["first", "no end"]


def test_empty_stream_yields_nothing():
    assert lines_of(b"") == []


def test_invalid_utf8_is_replaced_not_raised():
    assert lines_of(b"loss \xff\xfe ok\n\xc3\n") == ["loss \ufffd\ufffd ok", "\ufffd"]


def test_crlf_split_across_reads_is_one_line_end():
    assert lines_of(b"a\r\nb\r\nc", sizes=[2, 1, 2, 1, 10]) == ["a", "b", "c"]


def test_multibyte_character_split_across_reads_survives():
    assert lines_of("é█\n".encode(), sizes=[1]) == ["é█"]


def test_overlong_line_is_cut_marked_and_the_rest_dropped():
    data = b"x" * 1000 + b"\nnext\n"
    assert lines_of(data, sizes=[7], max_line=100) == ["x" * 100 + CUT_MARK, "next"]


def test_overlong_line_within_one_read_is_cut_too():
    assert lines_of(b"y" * 300 + b"\rtail\n", max_line=100) == ["y" * 100 + CUT_MARK, "tail"]


def test_overlong_final_line_without_end_is_cut():
    assert lines_of(b"z" * 250, sizes=[60], max_line=100) == ["z" * 100 + CUT_MARK]


def test_cut_does_not_split_a_utf8_character():
    data = b"a" * 99 + "█".encode() + b"b" * 50 + b"\n"
    [line] = lines_of(data, max_line=100)
    assert line == "a" * 99 + CUT_MARK   # the 3-byte char would straddle the cut: left out whole


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\xe2\x96\x88", b"\r", b"\n", b"\r\n", b" ", b"\xff", b"bcdefgh"]),
                max_size=80),
       st.lists(st.integers(1, 9), min_size=1, max_size=20),
       st.integers(3, 12))
def test_how_the_pipe_splits_its_reads_never_changes_the_lines(pieces, sizes, max_line):
    data = b"".join(pieces)
    assert lines_of(data, sizes=list(sizes), max_line=max_line) == lines_of(data, max_line=max_line)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 50))
def test_no_line_is_ever_longer_than_the_cap(data, max_line):
    for line in lines_of(data, sizes=[7], max_line=max_line):
        assert len(line.encode("utf-8", "surrogatepass")) <= 3 * max_line + len(CUT_MARK.encode())


def test_a_10_mb_line_stays_bounded_in_memory(tmp_path):
    path = tmp_path / "flood.txt"
    with open(path, "wb") as handle:
        block = b"{" * (1 << 20)
        for _ in range(10):
            handle.write(block)
        handle.write(b"\nafter\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        tracemalloc.start()
        sizes = [len(line) for line in iter_lines(fd)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert sizes == [64 * 1024 + len(CUT_MARK), len("after")]
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"


def test_reads_an_os_pipe_fd_until_every_writer_is_gone():
    read_end, write_end = os.pipe()

    def writer():
        with os.fdopen(write_end, "wb", buffering=0) as out:
            for i in range(3):
                out.write(f" {i}/3 [bar]\r".encode())
            out.write(b"done")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert list(iter_lines(read_end)) == [" 0/3 [bar]", " 1/3 [bar]", " 2/3 [bar]", "done"]
    finally:
        thread.join()
        os.close(read_end)


def test_reads_a_real_child_pipe():
    code = ("import sys, time\n"
            "sys.stdout.write('step 1/2\\r'); sys.stdout.flush(); time.sleep(0.05)\n"
            "sys.stdout.write('step 2/2\\r\\n'); sys.stdout.flush()\n"
            "sys.stderr.write('Traceback (most recent call last):\\n')\n")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as child:
        lines = list(iter_lines(child.stdout))
    assert lines == ["step 1/2", "step 2/2", "Traceback (most recent call last):"]


@pytest.mark.parametrize("raw,clean", [
    ("\x1b[31mRuntimeError\x1b[0m: boom", "RuntimeError: boom"),
    ("\x1b[1;38;5;196mCUDA\x1b[39;49m out of memory", "CUDA out of memory"),
    ("\x1b]0;train.py\x07loss 1.0", "loss 1.0"),                  # OSC title ended by BEL
    ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),        # OSC hyperlink ended by ST
    ("before\x1b]0;unterminated title", "before"),
    ("\x1b(Bplain\x1b=", "plain"),                                # charset select, keypad mode
    ("\x1b[2K\x1b[1Gbar", "bar"),                                 # erase line, cursor to column 1
    ("nul\x00byte\x07bell\x08back", "nulbytebellback"),
    ("tab\tstays", "tab\tstays"),
    ("\x9b31mC1 CSI", "C1 CSI"),
    ("plain text, 100% | ok", "plain text, 100% | ok"),
])
def test_strip_ansi(raw, clean):
    assert strip_ansi(raw) == clean


def pieces_of(data: bytes, sizes: list[int]) -> list[tuple[str, bool]]:
    return list(iter_pieces(Trickle(data, sizes)))


def test_pieces_say_which_lines_were_redraws():
    assert pieces_of(b"a\rb\rc\nd\r\n", [3, 3, 4]) == [("a", True), ("b", True), ("c", False), ("d", False)]


def test_a_crlf_split_across_reads_is_no_redraw():
    assert pieces_of(b"one\r\ntwo\r\n", [4, 6]) == [("one", False), ("two", False)]
    assert pieces_of(b"bar\r", [4]) == [("bar", True)]  # the output's end: the last redraw

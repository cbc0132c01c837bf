"""output.log: bounded to logs.max_size (head + newest tail), redraw floods collapsed."""
from __future__ import annotations

import io
import os
import re
import time

from conftest import wait_until
from guardrun.supervisor.record.attemptlog import AttemptLog
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.diagnose.output import OutputReader

NOTE = re.compile(r"\[guardrun\] +(\d+) bytes \( *(\d+) lines\) of output dropped here: logs.max_size 128 KiB")


def test_a_flood_keeps_the_head_and_the_newest_tail_and_says_what_it_dropped(tmp_path):
    path = tmp_path / "output.log"
    log = AttemptLog(path, 128 * 1024).open()
    total = 100_000  # ~5 MB through a 128 KiB bound
    for number in range(total):
        log.write(f"line {number:06d} {'x' * 40}")
        if number % 1000 == 0:
            log.flush()
    log.close()
    data = path.read_bytes()
    assert len(data) <= 128 * 1024
    lines = data.decode().splitlines()
    assert lines[0].startswith("line 000000 ") and lines[-1].startswith(f"line {total - 1:06d} ")
    [note] = [i for i, line in enumerate(lines) if line.startswith("[guardrun]")]
    dropped_bytes, dropped_lines = map(int, NOTE.match(lines[note]).groups())
    kept = len(lines) - 1
    assert kept + dropped_lines == total
    numbers = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    assert numbers == list(range(note)) + list(range(total - (kept - note), total))
    assert dropped_bytes == sum(len(f"line {n:06d} {'x' * 40}\n") for n in range(note, total - (kept - note)))
    assert len(data) - data.index(b"[guardrun]") >= 32 * 1024  # the tail: a quarter at least


def test_tqdm_redraws_are_parsed_but_only_the_last_reaches_the_log(tmp_path):
    bar = b"".join(b"\r%3d%%|#####| %d/20000 [00:01<00:00]" % (n * 100 // 20000, n) for n in range(1, 20001))
    stream = io.BytesIO(b"start\n" + bar + b"\nafter\n")
    out = io.StringIO()
    reader = OutputReader(stream, tmp_path / "output.log", Console(out, tty=False), "[1] ").start()
    assert reader.join(10)
    assert reader.progress().step == 20000
    logged = (tmp_path / "output.log").read_text().splitlines()
    # the first redraw (none written before it), then the line's last state
    assert logged == ["start", "  0%|#####| 1/20000 [00:01<00:00]", "100%|#####| 20000/20000 [00:01<00:00]", "after"]
    assert out.getvalue().count("\n") == 4


def test_logs_max_size_is_a_size_with_a_floor(tmp_path):
    import pytest

    from guardrun.launcher.recipe import RecipeError, load_recipe
    path = tmp_path / "r.yaml"
    (tmp_path / "train.py").write_text("")
    path.write_text("launcher: python\nscript: train.py\n")
    assert load_recipe(path).logs.max_size == 1 << 30
    path.write_text("launcher: python\nscript: train.py\nlogs: {max_size: 64MiB}\n")
    assert load_recipe(path).logs.max_size == 64 << 20
    path.write_text("launcher: python\nscript: train.py\nlogs:\n  max_size: 4KiB\n")
    with pytest.raises(RecipeError, match=r"r.yaml:4: logs.max_size: expected a size of at least 128 KiB"):
        load_recipe(path)


def test_a_bar_that_stops_moving_reaches_the_log(tmp_path, monkeypatch):
    from guardrun.supervisor.diagnose import output
    monkeypatch.setattr(output, "REDRAW_EVERY", 1000.0)
    read_end, write_end = os.pipe()
    reader = OutputReader(os.fdopen(read_end, "rb"), tmp_path / "output.log",
                          Console(io.StringIO(), tty=False), "").start()
    log = tmp_path / "output.log"
    try:
        # tqdm writes '\r' first: the newest redraw has no end yet; the one before it is held
        os.write(write_end, b"\r 1/9 [a]\r 2/9 [b]\r 3/9 [c]\r 4/9 [d]")  # then silence: a hung job
        wait_until(lambda: reader.progress().lines == 3, timeout=10, what="three redraws read")
        assert "3/9 [c]" not in log.read_text()  # held: the next piece might replace it
        monkeypatch.setattr(output, "REDRAW_EVERY", 0.0)
        deadline = time.monotonic() + 10
        while "3/9 [c]" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            reader.progress()  # the watch loop's visit
            time.sleep(0.02)
    finally:
        os.close(write_end)
        assert reader.join(10)

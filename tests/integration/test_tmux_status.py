"""The live status line in a real tmux pane (a private server, killed at the end): one row,
never wrapped, no stale copies, at 80 and 200 columns and across a resize."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import wait_until
from helpers_unattended import GUARDRUN
from test_tmux import server  # noqa: F401  (the fixture: a private tmux server, killed after)

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

#: A job printing a step and a loss every 0.1 s (lines short enough for any pane) until `go`.
JOB = textwrap.dedent("""\
    import os, sys, time
    step = 0
    while not os.path.exists(sys.argv[1]):
        step += 1
        print({"loss": round(1 / step, 4), "step": step}, flush=True)
        time.sleep(0.1)
    print("done", flush=True)
    """)
STATUS = re.compile(r"^attempt 1 · ")


def start(tmp_path: Path, socket: str, width: int) -> Path:
    """`guardrun run` of the job in a detached pane `width` columns wide; returns the gate."""
    go = tmp_path / "go"
    (tmp_path / "job.py").write_text(JOB)
    recipe = tmp_path / "status.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        launcher: python
        script: {tmp_path / "job.py"}
        args: ["{go}"]
        limits: {{host_memory: 4GiB}}
        monitor: {{interval: 0.1}}
        ladder: []
        restarts: {{max: 0}}
        """))
    command = f"{GUARDRUN} run {recipe}; echo guardrun exited $?; sleep 60"
    subprocess.run(["tmux", "-L", socket, "new-session", "-d", "-s", "status", "-x", str(width),
                    "-y", "24", command], check=True, timeout=30)
    return go


def rows(socket: str) -> list[str]:
    """The pane's rows, wrapped ones joined (-J): a line that wrapped shows as wider than the pane."""
    shown = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p", "-J", "-t", "=status:"],
                           capture_output=True, text=True, timeout=30, check=True)
    return shown.stdout.rstrip("\n").split("\n")


def status_rows(socket: str) -> list[str]:
    return [row for row in rows(socket) if STATUS.match(row)]


def settled(socket: str, width: int, fits) -> list[str]:
    """The pane once its status row shows `fits` and a few redraws went by; its rows."""
    wait_until(lambda: any(fits(row) for row in status_rows(socket)) and
               "{'loss': 0.02" in "\n".join(rows(socket)),  # step 50: ~50 redraws under the output
               timeout=60, what=f"the status line at {width} columns")
    return rows(socket)


def problems(pane: list[str], width: int) -> list[str]:
    """What is wrong with the pane's status line: none, one, or a stale copy; a row too wide."""
    found = [row for row in pane if STATUS.match(row)]
    wrong = [f"{len(found)} status rows"] if len(found) != 1 else []
    wrong += [f"wider than {width - 1}: {row!r}" for row in found if len(row) > width - 1]  # last column free
    return wrong + [f"wider than the pane: {row!r}" for row in pane if len(row.rstrip()) > width]


def check_one_status_row(pane: list[str], width: int) -> str:
    assert not problems(pane, width), (problems(pane, width), pane)
    return next(row for row in pane if STATUS.match(row))


def test_80_columns_one_fitted_row(tmp_path, state_dir, server):  # noqa: F811
    go = start(tmp_path, server, 80)
    try:
        pane = settled(server, 80, lambda row: "step " in row)
        status = check_one_status_row(pane, 80)
        # the whole line is ~95 wide: the least important fields gave way, the step stayed
        assert "rank(s)" not in status and "rung" not in status and " · step " in status
    finally:
        go.touch()
    wait_until(lambda: "guardrun exited 0" in "\n".join(rows(server)), timeout=30, what="the run's end")
    pane = rows(server)
    assert not status_rows(server), pane  # erased once the attempt ended
    assert "guardrun: the job finished" in pane


def test_200_columns_the_whole_line_then_a_resize_refits_it(tmp_path, state_dir, server):  # noqa: F811
    go = start(tmp_path, server, 200)
    try:
        pane = settled(server, 200, lambda row: "rank(s)" in row and "avail" in row)
        status = check_one_status_row(pane, 200)
        assert re.match(r"attempt 1 · rung 0 · 1 rank\(s\) · mem .+ · avail .+ · step \d+ · loss .+ · \d+:\d\d$",
                        status), status
        subprocess.run(["tmux", "-L", server, "resize-window", "-t", "=status:", "-x", "80"],
                       check=True, timeout=30)
        # Refitted at the first redraw after the SIGWINCH, the old line erased whole, as tmux
        # re-wrapped it under the cursor. A resize that tmux takes between a redraw's text and
        # its closing \r (1 run in ~10 here) leaves one stale row, which the job's output
        # scrolls away: the pane is judged once the output has moved on.
        wait_until(lambda: not problems(rows(server), 80), timeout=30,
                   what="one status row refitted to 80 columns")
        assert "rank(s)" not in check_one_status_row(rows(server), 80)
    finally:
        go.touch()
    wait_until(lambda: "guardrun exited 0" in "\n".join(rows(server)), timeout=30, what="the run's end")


def test_the_test_sees_a_wrapped_line(tmp_path, server):  # noqa: F811
    """The check itself: a line wider than the pane, drawn the old way, fails it."""
    line = "attempt 1 · rung 0 · 1 rank(s) · " + "x" * 80
    command = (f"{sys.executable} -c \"import time\nfor i in range(3): print('\\r\\x1b[K{line}', end='', flush=True)"
               f"\ntime.sleep(60)\"")
    subprocess.run(["tmux", "-L", server, "new-session", "-d", "-s", "status", "-x", "80", "-y", "24",
                    command], check=True, timeout=30)
    wait_until(lambda: status_rows(server), timeout=30, what="the old-style line")
    with pytest.raises(AssertionError):
        check_one_status_row(rows(server), 80)

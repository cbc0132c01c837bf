"""A terminal or pipe nobody reads never stops enforcement (issue 12 §1).

guardrun's stdout is a real pipe whose read end is never read (`guardrun run r.yaml |
sleep 600`), or a real pty whose master is never read (Ctrl-S, a stalled SSH session).
The job prints far more than either buffer holds while its memory grows past the limit:
it must still be stopped as host_oom within two intervals of its own crossing, and
`guardrun status` / `guardrun stop` must answer while the reader stays stalled.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, wait_until

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
JOB = REPO / "tests" / "jobs" / "chatty_grow.py"
INTERVAL = 0.25


class Stalled:
    """guardrun's stdout: the writing end goes to guardrun, the reading end is never read."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "pipe":
            self.reader, self.writer = os.pipe()
        else:
            self.reader, self.writer = os.openpty()  # master, slave

    def unread(self) -> int:
        """Bytes waiting for a reader that never comes."""
        return int.from_bytes(fcntl.ioctl(self.reader, termios.FIONREAD, b"\0\0\0\0"), "little")

    def close(self) -> None:
        for fd in (self.reader, self.writer):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture(params=["pipe", "pty"])
def stalled(request):
    out = Stalled(request.param)
    yield out
    out.close()


def recipe(tmp_path: Path, marks: Path, mark_mb: int, max_mb: int) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(f"""
        launcher: python
        script: {JOB}
        args: [--marks, "{marks}", --mark-mb, "{mark_mb}", --max-mb, "{max_mb}"]
        limits: {{host_memory: 300MiB, hard_memory: "off"}}  # guardrun's own stop, not the kernel's
        monitor: {{interval: {INTERVAL}}}
        stop_grace: 5s
        ladder: []
        """))
    return path


def start(path: Path, stalled: Stalled, tmp_path: Path) -> subprocess.Popen:
    err = open(tmp_path / "guardrun.stderr", "w")
    with err:
        guard = subprocess.Popen([GUARDRUN, "run", str(path)], stdin=subprocess.DEVNULL,
                                 stdout=stalled.writer, stderr=err)
    os.close(stalled.writer)
    stalled.writer = -1
    return guard


def marks(path: Path) -> dict[str, float]:
    text = path.read_text() if path.exists() else ""
    return {" ".join(line.split()[:-1]): float(line.split()[-1]) for line in text.splitlines()}


def events(state_dir: Path) -> list[dict]:
    path = state_dir / "job" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def finish(guard: subprocess.Popen, timeout: float) -> int | None:
    """guardrun's exit code, or None after killing it (its job dies by PR_SET_PDEATHSIG)."""
    try:
        return guard.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait()
        return None


def wait_stalled(stalled: Stalled, marks_path: Path) -> None:
    wait_until(lambda: "started" in marks(marks_path), timeout=20, what="the job to start")
    # A pipe holds 64 KiB; a pty's buffers less. Either way the job prints ~1.6 MB/s.
    full = 60_000 if stalled.kind == "pipe" else 2_000
    wait_until(lambda: stalled.unread() >= full, timeout=20, what="the unread buffer to fill")


def test_growing_job_is_stopped_while_nobody_reads_the_terminal(tmp_path, state_dir, stalled):
    marks_path = tmp_path / "marks"
    guard = start(recipe(tmp_path, marks_path, mark_mb=300, max_mb=900), stalled, tmp_path)
    try:
        wait_stalled(stalled, marks_path)
        code = finish(guard, timeout=30)
    finally:
        finish(guard, timeout=0.1)
    seen = marks(marks_path)
    stderr = (tmp_path / "guardrun.stderr").read_text()
    assert code == 1, f"guardrun did not stop the job (exit {code}); marks {seen}; stderr {stderr[-2000:]}"
    assert "crossed 300" in seen and "term" in seen, seen
    assert seen["term"] - seen["crossed 300"] <= 2 * INTERVAL, seen
    breached = [e for e in events(state_dir) if e["event"] == "guardrun.limit.breached"]
    assert [e["kind"] for e in breached] == ["host_oom"]
    [ended] = [e for e in events(state_dir) if e["event"] == "guardrun.attempt.ended"]
    assert ended["kind"] == "host_oom"


def timed(argv: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
    return done, time.monotonic() - began


def status_step() -> int:
    shown = subprocess.run([GUARDRUN, "status", "job", "--json"], capture_output=True, text=True, timeout=10)
    return json.loads(shown.stdout).get("step") or 0 if shown.returncode == 0 else 0


def test_status_and_stop_answer_while_nobody_reads_the_terminal(tmp_path, state_dir, stalled):
    marks_path = tmp_path / "marks"
    guard = start(recipe(tmp_path, marks_path, mark_mb=100_000, max_mb=20), stalled, tmp_path)
    try:
        wait_stalled(stalled, marks_path)
        wait_until(lambda: status_step() > 0, timeout=10, what="a step in `guardrun status`")
        steps = []
        for _ in range(2):
            shown, took = timed([GUARDRUN, "status", "job", "--json"], timeout=2)
            assert shown.returncode == 0 and took < 2.0, (took, shown.stdout, shown.stderr)
            view = json.loads(shown.stdout)
            assert view["state"] == "running", view
            steps.append(view.get("step") or 0)
            time.sleep(STATE_REFRESH)
        assert steps[1] > steps[0] > 0, f"status froze while the terminal was not read: steps {steps}"
        stopped, took = timed([GUARDRUN, "stop", "job", "--timeout", "10"], timeout=10)
        assert stopped.returncode == 0 and took < 2.0, (took, stopped.stdout, stopped.stderr)
        assert "stopped after" in stopped.stdout
        assert finish(guard, timeout=10) == 130
        assert "term" in marks(marks_path)
    finally:
        finish(guard, timeout=0.1)


#: Seconds between the two status calls: more than the loop's interval, so the step moves.
STATE_REFRESH = 4 * INTERVAL


def test_the_console_on_an_unread_pipe_never_blocks_and_counts_what_it_dropped():
    from guardrun.supervisor.record.console import Console
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        console = Console(stream, tty=False)
        began = time.monotonic()
        for number in range(50_000):  # ~3 MB: fifty times what the pipe holds
            console.output("[1] ", f"line {number} " + "x" * 50)
        console.say("the verdict")
        assert time.monotonic() - began < 2.0, "a write waited for the pipe's reader"
        text = b""
        deadline = time.monotonic() + 20
        while b"the verdict\n" not in text and time.monotonic() < deadline:
            text += os.read(read_end, 1 << 16)  # the reader comes back
    finally:
        stream.close()
        os.close(read_end)
    shown = text.decode()
    notes = re.findall(r"guardrun: (\d+) lines not shown on this terminal \(it was not read\)", shown)
    assert notes, shown[-500:]
    lines = re.findall(r"^\[1\] line (\d+) ", shown, re.M)
    assert len(lines) + sum(map(int, notes)) == 50_000
    assert lines == sorted(lines, key=int) and shown.endswith("guardrun: the verdict\n")
    assert lines[-1] == "49999"  # the oldest were dropped: the newest lines are the ones shown

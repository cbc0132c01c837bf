"""A full state disk costs logs, never the job (issue 12 §2).

The state dir is a real 4 MiB tmpfs (root mounts it; skipped with the reason where it
cannot). A job that prints more than the filesystem holds must finish with guardrun
exiting 0 and the journal saying logging was suspended; when space returns, writing
resumes and says what was not written.
"""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, wait_until
from helpers_mount import tmpfs
from guardrun.supervisor.record.journal import Journal, read_events, read_state

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
JOBS = REPO / "tests" / "jobs"
SUSPENDED = "state dir full: logging suspended"


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs, unmounted after the test."""
    with tmpfs(tmp_path / "small", "4m", "mode=0700") as mount:
        yield mount


def fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC; the file, to free the space again."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    block = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
                if len(block) == 1:
                    return filler
                block = block[: len(block) // 2]
    finally:
        os.close(fd)


def recipe(tmp_path: Path, script: Path, args: list[str]) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(f"""
        launcher: python
        script: {script}
        args: {json.dumps(args)}
        monitor: {{interval: 0.2}}
        ladder: []
        """))
    return path


def events(job_dir: Path, name: str) -> list[dict]:
    return [e for e in read_events(job_dir) if e.get("event") == f"guardrun.{name}"]


def test_a_job_that_fills_the_state_disk_finishes_and_guardrun_exits_0(tmp_path, small_fs, monkeypatch):
    monkeypatch.setenv("GUARDRUN_STATE_DIR", str(small_fs / "state"))
    path = recipe(tmp_path, JOBS / "flood.py", ["300000"])  # ~11 MB into a 4 MiB filesystem
    done = subprocess.run([GUARDRUN, "run", str(path)], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert SUSPENDED in done.stdout
    assert "the job finished" in done.stdout
    job = small_fs / "state" / "job"
    [suspended, *_] = events(job, "logging.suspended")
    assert suspended["what"] == "output.log" and "No space left" in suspended["reason"]
    [ended] = events(job, "attempt.ended")
    assert ended["kind"] == "success" and ended["exit_code"] == 0
    assert events(job, "run.finished")


def test_writes_resume_when_space_returns(tmp_path, small_fs, monkeypatch):
    monkeypatch.setenv("GUARDRUN_STATE_DIR", str(small_fs / "state"))
    go = tmp_path / "go"
    path = recipe(tmp_path, JOBS / "print_until.py", ["--go", str(go)])
    job = small_fs / "state" / "job"
    log = job / "attempts" / "1" / "output.log"
    with open(tmp_path / "console", "w") as console:
        guard = subprocess.Popen([GUARDRUN, "run", str(path)], stdout=console, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: log.exists() and log.stat().st_size > 10_000, timeout=30, what="output.log")
        filler = fill(small_fs)
        wait_until(lambda: events(job, "logging.suspended"), timeout=15, what="logging.suspended")
        shown = subprocess.run([GUARDRUN, "status", "job"], capture_output=True, text=True, timeout=10)
        assert SUSPENDED in shown.stdout, shown.stdout + shown.stderr
        filler.unlink()
        wait_until(lambda: events(job, "logging.resumed"), timeout=15, what="logging.resumed")
        [resumed] = events(job, "logging.resumed")
        assert resumed["what"] == "output.log" and resumed["lost_lines"] > 0
        wait_until(lambda: "not written here" in log.read_text(errors="replace"), timeout=15,
                   what="the gap's note in output.log")
        go.write_text("")
        assert guard.wait(timeout=30) == 0
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
    text = log.read_text()
    assert text.endswith("done\n")
    assert SUSPENDED in (tmp_path / "console").read_text()
    assert read_state(job)["logging"] is None  # the standing line went with the outage


def test_the_journal_and_state_json_ride_out_a_full_disk(small_fs, monkeypatch):
    monkeypatch.setenv("GUARDRUN_STATE_DIR", str(small_fs / "state"))
    journal = Journal("job")
    journal.emit("run.started", pid=os.getpid())
    filler = fill(small_fs)
    big = "z" * 4000
    for number in range(200):  # ~800 KB: more than any reserve the journal keeps
        journal.emit("note", number=number, text=big)
        journal.write_state({"state": "running", "number": number, "text": big})
    assert journal.space.describe().startswith(SUSPENDED)
    filler.unlink()
    journal.space.retry_every = 0.0
    journal.emit("after", number=1)
    journal.write_state({"state": "running", "number": "after"})
    journal.close()
    assert journal.space.describe() is None
    [resumed] = [e for e in read_events(journal.dir) if e["event"] == "guardrun.logging.resumed"
                 and e["what"] == "events.jsonl"]
    assert resumed["lost_events"] > 0
    assert [e["event"] for e in read_events(journal.dir)][-1] == "guardrun.after"
    assert read_state(journal.dir)["number"] == "after"


def test_a_console_log_on_the_full_disk_says_what_it_lost(small_fs):
    from guardrun.supervisor.record.console import Console
    stream = open(small_fs / "console.log", "w")  # `guardrun start`'s log, on the full disk
    try:
        console = Console(stream, tty=False)
        console.say("before")
        assert console.flush(5.0)
        filler = fill(small_fs)
        for number in range(2000):
            console.output("[1] ", f"line {number} " + "x" * 100)
        assert not console.flush(2.0)  # nothing gets through while the disk is full
        filler.unlink()
        console.say("after")
        assert console.flush(10.0)
    finally:
        stream.close()
    text = (small_fs / "console.log").read_text()
    [lost] = re.findall(r"guardrun: (\d+) lines not shown on this terminal \(writing it failed: "
                        r"No space left on device\)", text)
    whole = re.findall(r"^\[1\] line \d+ x{100}$", text, re.M)
    assert int(lost) + len(whole) == 2000 and text.endswith("guardrun: after\n")

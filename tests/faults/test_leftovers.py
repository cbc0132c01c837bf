"""Issue 12 §4: what a SIGKILLed supervisor leaves running is all found and all stopped
by the next `guardrun run`, before its first attempt starts.

Each test runs the real `guardrun run` on tests/jobs/leftover_job.py, SIGKILLs it while
the job runs, then runs the job again with a probe (the same script, --role probe) as
its job: the probe writes which of the old processes are alive the moment the new
attempt starts. The old processes ignore SIGTERM, so only the cleanup's SIGKILL ends
them: one alive then, or after the run, is one the cleanup missed.

Workers started with an empty environment carry no GUARDRUN_TEST_TAG, so conftest's
leak check cannot see them: the `recorded` fixture kills what the job recorded (by pid
and start time, never a pid alone) when a test fails.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, wait_until
from helpers_unattended import GUARDRUN, guardrun

from guardrun.supervisor.watch.leftovers import start_time

JOB = REPO / "tests" / "jobs" / "leftover_job.py"
NAME = "left"


def recipe(tmp_path: Path, file: str, args: list[str], stop_grace: str = "1s") -> Path:
    path = tmp_path / file
    path.write_text(textwrap.dedent(f"""\
        name: {NAME}
        launcher: python
        script: {JOB}
        args: {json.dumps(args)}
        monitor: {{interval: 0.1}}
        stop_grace: {stop_grace}
        ladder: []
        restarts: {{max: 0}}
        """))
    return path


def read_recorded(pids: Path) -> list[tuple[int, int]]:
    out = []
    for path in pids.iterdir():
        if path.name.isdigit():
            pid, start = path.read_text().split()
            out.append((int(pid), int(start)))
    return sorted(out)


def alive(recorded: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(pid, start) for pid, start in recorded if start_time(pid) == start]


def events(state_dir: Path) -> list[dict]:
    path = state_dir / NAME / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def pids(tmp_path):
    """The folder the job records its processes in; whatever of them lives is killed after."""
    folder = tmp_path / "pids"
    folder.mkdir()
    yield folder
    for pid, start in alive(read_recorded(folder)):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if start_time(pid) == start:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)


def kill_supervisor_mid_attempt(tmp_path: Path, state_dir: Path, pids: Path, shape: str) -> None:
    """`guardrun run` of the job, SIGKILLed once the job is set up."""
    first = recipe(tmp_path, "first.yaml", ["--shape", shape, "--pids", str(pids)])
    supervisor = subprocess.Popen([GUARDRUN, "run", str(first)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until((pids / "ready").exists, timeout=30, what="the job to be set up")
    finally:
        supervisor.kill()
        supervisor.wait()


def rerun_with_probe(tmp_path: Path, pids: Path) -> tuple[subprocess.CompletedProcess, list]:
    out = tmp_path / "alive-at-start.json"
    second = recipe(tmp_path, "second.yaml", ["--role", "probe", "--pids", str(pids), "--out", str(out)])
    rerun = guardrun("run", str(second), timeout=90)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    return rerun, [tuple(each) for each in json.loads(out.read_text())]


def assert_cleanup_before_spawn(state_dir: Path, survivors_at_start: list) -> None:
    names = [event["event"] for event in events(state_dir)]
    stopped = names.index("guardrun.leftovers.stopped")
    assert stopped < names.index("guardrun.attempt.spawned", stopped)
    assert events(state_dir)[stopped]["left"] == []
    assert survivors_at_start == [], f"old processes alive as the new attempt started: {survivors_at_start}"


def test_processes_that_fork_on_sigterm_are_all_stopped_before_the_next_attempt(
        tmp_path, state_dir, pids):
    kill_supervisor_mid_attempt(tmp_path, state_dir, pids, "fork-on-term")
    # PR_SET_PDEATHSIG's SIGTERM makes the launcher fork once: two processes now.
    wait_until(lambda: len(read_recorded(pids)) >= 2, timeout=10, what="the launcher's fork on SIGTERM")
    rerun, at_start = rerun_with_probe(tmp_path, pids)
    assert "left by a previous supervisor of this job" in rerun.stdout
    assert_cleanup_before_spawn(state_dir, at_start)
    recorded = read_recorded(pids)
    assert len(recorded) > 2, "the cleanup's SIGTERM should have made them fork again"
    assert alive(recorded) == []


@pytest.mark.parametrize("shape", ["bare-worker", "rank-bare-worker"])
def test_a_worker_with_an_empty_environment_is_found_and_stopped(tmp_path, state_dir, pids, shape):
    kill_supervisor_mid_attempt(tmp_path, state_dir, pids, shape)
    launcher = int(json.loads((state_dir / NAME / "state.json").read_text())["launcher_pid"])
    wait_until(lambda: start_time(launcher) is None, timeout=10,
               what="the launcher to die of PR_SET_PDEATHSIG's SIGTERM")
    workers = alive(read_recorded(pids))
    assert workers, "the job's other processes outlive the launcher"
    assert any(Path(f"/proc/{pid}/environ").read_bytes() == b"" for pid, _ in workers), \
        "one worker has an empty environment: no guardrun mark, no test tag"
    rerun, at_start = rerun_with_probe(tmp_path, pids)
    assert_cleanup_before_spawn(state_dir, at_start)
    stopped = next(e for e in events(state_dir) if e["event"] == "guardrun.leftovers.stopped")
    assert {pid for pid, _ in workers} <= set(stopped["pids"])
    assert alive(read_recorded(pids)) == []

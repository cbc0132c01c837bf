"""Jobs that run unattended: `guardrun start/list/status/logs/stop`, one supervisor per job,
a SIGKILLed supervisor's leftovers, and a foreground run that outlives its terminal.

Every test drives the real `guardrun` command on a small real job (tests/jobs/gate.py,
which waits for a file the test creates), and stops what it started.
"""
from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time

import pytest

from conftest import wait_until
from guardrun.supervisor.watch import cgroupv1
from helpers_unattended import (GUARDRUN, environ_of, gate_recipe, guardrun, output_log, running,
                                stat_fields, state, supervisor_pid)


def start(recipe) -> int:
    result = guardrun("start", str(recipe))
    assert result.returncode == 0, result.stdout + result.stderr
    return supervisor_pid(result.stdout)


def journal_events(state_dir, job: str = "gate") -> list[dict]:
    path = state_dir / job / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_waiting(state_dir, job: str = "gate") -> None:
    wait_until(lambda: "waiting for" in output_log(state_dir, job), timeout=30,
               what="the job to print that it waits")


def test_start_detaches_and_stop_ends_the_whole_tree(tmp_path, state_dir):
    recipe, _go = gate_recipe(tmp_path)
    result = guardrun("start", str(recipe))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started job gate" in result.stdout
    assert "guardrun logs gate -f" in result.stdout and "guardrun status gate" in result.stdout
    pid = supervisor_pid(result.stdout)
    fields = stat_fields(pid)
    session, tty = int(fields[3]), int(fields[4])
    assert session != pid and session != os.getsid(0), "a new session, not a session leader"
    assert tty == 0, "no controlling terminal"
    wait_waiting(state_dir)
    launcher = state(state_dir)["launcher_pid"]
    assert environ_of(launcher)["GUARDRUN_JOB_DIR"] == str((state_dir / "gate").resolve())

    listed = guardrun("list")
    assert listed.returncode == 0
    assert any(line.split()[:2] == ["gate", "running"] and str(pid) in line
               for line in listed.stdout.splitlines()), listed.stdout
    [job] = json.loads(guardrun("list", "--json").stdout)
    assert job["job"] == "gate" and job["alive"] is True and job["pid"] == pid

    shown = json.loads(guardrun("status", "gate", "--json").stdout)
    assert shown["state"] == "running" and shown["attempt"] == 1 and shown["rung"] == 0
    source = "procfs" if cgroupv1.why_not() else "cgroup v1"  # issue 17: its own cgroup where writable
    assert shown["memory_source"] == source and shown["uptime_s"] >= 0
    text = guardrun("status", "gate").stdout
    assert "gate: running" in text and f"supervisor: pid {pid}, up " in text
    assert f"memory source: {source} (" in text

    began = time.monotonic()
    stopped = guardrun("stop", "gate")
    took = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopping the job gracefully" in stopped.stdout
    assert "state: interrupted" in stopped.stdout
    assert not running(launcher), "stop returns once the job's tree is gone"
    assert took < 10, took
    wait_until(lambda: not running(pid), timeout=10, what="the supervisor to exit")
    assert "gate: interrupted" in guardrun("status", "gate").stdout


def test_second_start_or_run_of_a_job_is_refused_with_the_first_pid(tmp_path, state_dir):
    recipe, go = gate_recipe(tmp_path)
    pid = start(recipe)
    try:
        for command in ("start", "run"):
            again = guardrun(command, str(recipe))
            assert again.returncode == 2, again.stdout + again.stderr
            assert f"already supervised by pid {pid}" in again.stderr
            assert "Traceback" not in again.stderr
        assert running(pid)
    finally:
        go.touch()
    wait_until(lambda: not running(pid), timeout=30, what="the job to finish")
    assert state(state_dir)["state"] == "finished"


def test_logs_follow_until_the_job_ends_and_pick_a_rank(tmp_path, state_dir):
    recipe, go = gate_recipe(tmp_path, extra_args=["--ranks", "2"])
    start(recipe)
    follower = subprocess.Popen([GUARDRUN, "logs", "gate", "-f"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    first = follower.stdout.readline()
    assert first.startswith("[rank0] waiting for"), first
    go.touch()
    rest, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert rest.rstrip().endswith("done"), rest
    assert "[rank1] {'loss': 0.3333" in rest

    one = guardrun("logs", "gate", "--rank", "1")
    assert one.returncode == 0
    lines = one.stdout.splitlines()
    assert lines and all(line.startswith("[rank1]") for line in lines), one.stdout
    assert "no per-rank log" in one.stderr and "[rank1]" in one.stderr

    ranks = state_dir / "gate" / "attempts" / "1" / "ranks"
    ranks.mkdir()
    (ranks / "0.log").write_text("rank zero's own file\n")
    assert guardrun("logs", "gate", "--rank", "0").stdout == "rank zero's own file\n"

    missing = guardrun("logs", "gate", "--attempt", "7")
    assert missing.returncode == 2 and "has no attempt 7 (attempts: 1-1)" in missing.stderr


def test_stop_now_does_not_wait_for_the_grace(tmp_path, state_dir):
    recipe, _go = gate_recipe(tmp_path, extra_args=["--ignore-term"], stop_grace="60s")
    pid = start(recipe)
    wait_waiting(state_dir)
    launcher = state(state_dir)["launcher_pid"]
    began = time.monotonic()
    stopped = guardrun("stop", "gate", "--now")
    took = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "killing the job now" in stopped.stdout
    assert took < 10, f"--now took {took:.1f}s; the grace is 60s"
    assert not running(launcher)
    wait_until(lambda: not running(pid), timeout=10, what="the supervisor to exit")


def test_sigkilled_supervisor_leaves_a_launcher_the_next_run_stops(tmp_path, state_dir):
    term = tmp_path / "term"
    recipe, _go = gate_recipe(tmp_path, extra_args=["--ignore-term", "--term-file", str(term)])
    pid = start(recipe)
    wait_waiting(state_dir)
    launcher = state(state_dir)["launcher_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(term.exists, timeout=10, what="PR_SET_PDEATHSIG's SIGTERM at the launcher")
    assert running(launcher), "this launcher ignores SIGTERM: it is left over"

    dead = guardrun("status", "gate")
    assert "gate: dead" in dead.stdout and f"its supervisor (pid {pid}) is gone" in dead.stdout
    assert json.loads(guardrun("status", "gate", "--json").stdout)["alive"] is False

    again, go = gate_recipe(tmp_path, go=tmp_path / "go-now", stop_grace="1s")
    go.touch()
    rerun = guardrun("run", str(again))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (f"stopping 1 process(es) left by a previous supervisor of this job: {launcher}"
            in rerun.stdout)
    assert not running(launcher)
    assert "the job finished" in rerun.stdout
    assert state(state_dir)["state"] == "finished"


def test_sigkilled_supervisor_takes_an_obedient_job_with_it(tmp_path, state_dir):
    recipe, _go = gate_recipe(tmp_path)
    pid = start(recipe)
    wait_waiting(state_dir)
    launcher = state(state_dir)["launcher_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not running(launcher), timeout=10, what="the launcher to die with it")
    assert "gate: dead" in guardrun("status", "gate").stdout


def test_foreground_run_outlives_its_terminal(tmp_path, state_dir):
    """SIGHUP (the SSH session dropped): guardrun stops writing and the job completes."""
    recipe, go = gate_recipe(tmp_path)
    pid, master = pty.fork()
    if pid == 0:  # the child: session leader with the pty as controlling terminal
        os.execv(GUARDRUN, [GUARDRUN, "run", str(recipe)])
    seen = b""
    try:
        while b"waiting for" not in seen or "attempt 1 · rung 0".encode() not in seen:
            seen += os.read(master, 4096)  # EIO here: guardrun died before it ran the job
    finally:
        os.close(master)  # the terminal hangs up: SIGHUP to its session leader, guardrun
    wait_until(lambda: any(e["event"] == "guardrun.terminal.hung_up" for e in journal_events(state_dir)),
               timeout=10, what="the hangup in the journal")
    go.touch()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"guardrun died of a signal: {status}"
    assert os.WEXITSTATUS(status) == 0
    assert "gate: finished" in guardrun("status", "gate").stdout
    assert output_log(state_dir).rstrip().endswith("done")


@pytest.mark.parametrize("argv,code,message", [
    (["stop", "no-such-job"], 2, "no state recorded for job no-such-job"),
    (["logs", "no-such-job"], 2, "no state recorded for job no-such-job"),
    (["logs"], 2, "Missing argument 'JOB'"),
    (["list"], 0, "no jobs in"),
    (["list", "--json"], 0, "[]"),
    (["status", "--json"], 0, "[]"),
    (["start", "/nonexistent.yaml"], 2, "/nonexistent.yaml"),
    (["tmux", "/nonexistent.yaml", "--no-attach"], 2, "/nonexistent.yaml"),
    (["stop", "../etc"], 2, "is not a job name"),
])
def test_cli_table(argv, code, message, state_dir):
    result = guardrun(*argv)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_stop_of_a_finished_job_says_so(tmp_path, state_dir):
    recipe, go = gate_recipe(tmp_path)
    go.touch()
    assert guardrun("run", str(recipe)).returncode == 0
    result = guardrun("stop", "gate")
    assert result.returncode == 0
    assert "job gate is not running (last state: finished)" in result.stdout


def test_start_with_overrides_runs_them_and_status_exit_codes_follow_the_job(tmp_path, state_dir):
    """`start r.yaml KEY=VALUE...` gives the overrides to its detached run, whose journal records
    them (and a digest of its own); `status JOB` exits 0 while it runs, 3 once it does not."""
    recipe, go = gate_recipe(tmp_path)
    result = guardrun("start", str(recipe), "stop_grace=3s", "restarts.max=2")
    assert result.returncode == 0, result.stdout + result.stderr
    pid = supervisor_pid(result.stdout)
    try:
        wait_waiting(state_dir)
        shown = guardrun("status", "gate")
        assert shown.returncode == 0 and "gate: running" in shown.stdout, shown.stdout + shown.stderr
        assert guardrun("status", "gate", "--json").returncode == 0
        [started] = [e for e in journal_events(state_dir) if e["event"] == "guardrun.run.started"]
        assert started["overrides"] == ["stop_grace=3s", "restarts.max=2"]
        assert "overrides: stop_grace=3s restarts.max=2" in (state_dir / "gate" / "supervisor.log").read_text()
    finally:
        go.touch()
    wait_until(lambda: not running(pid), timeout=30, what="the job to finish")
    ended = guardrun("status", "gate")
    assert ended.returncode == 3 and "gate: finished" in ended.stdout, ended.stdout + ended.stderr
    assert guardrun("status", "no-such-job").returncode == 4

"""Issue 12 §6: a job that cannot be started, and a stop asked for before the first attempt.

- A recipe whose `python:` does not exist, or whose `command[0]` is not on PATH: `run`
  exits 2 with `file:line: python: not found` (no traceback), the journal and
  state.json say gave_up; `start` says so before it detaches. A supervisor that dies at
  once for another reason (an interpreter the kernel cannot execute) makes `start`
  exit 1 with the supervisor's last lines.
- SIGTERM at any point before the first attempt (guardrun's handlers caught it before
  the recipe was read, once the journal exists, while a dead run's leftovers are being
  stopped): exit 130, the run recorded as interrupted, no traceback.

All real `guardrun` processes; each wait is on an event (a file, a /proc field).
"""
from __future__ import annotations

import json
import select
import signal
import subprocess
import textwrap
import time
from pathlib import Path


from conftest import wait_until
from helpers_unattended import GATE, GUARDRUN, gate_recipe, guardrun, running, state


def events(state_dir: Path, job: str) -> list[dict]:
    path = state_dir / job / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def gave_up(state_dir: Path, job: str) -> dict:
    return next(e for e in events(state_dir, job) if e["event"] == "guardrun.run.gave_up")


# -- spawn failures ------------------------------------------------------------------

def python_recipe(tmp_path: Path, python: str) -> Path:
    path = tmp_path / "nopython.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: nopython
        launcher: python
        python: {python}
        script: {GATE}
        args: [--go, {tmp_path / 'go'}]
        restarts: {{max: 0}}
        """))
    return path


def command_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "nocommand.yaml"
    path.write_text(textwrap.dedent("""\
        name: nocommand
        launcher: command
        command:
          - guardrun-test-no-such-tool
          - train
        restarts: {max: 0}
        """))
    return path


def test_a_python_that_does_not_exist_exits_2_naming_file_and_line(tmp_path, state_dir):
    recipe = python_recipe(tmp_path, "/nonexistent/python")
    result = guardrun("run", str(recipe))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{recipe}:3: python: not found: /nonexistent/python" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "python: not found" in gave_up(state_dir, "nopython")["why"]
    assert state(state_dir, "nopython")["state"] == "gave_up"


def test_a_command_not_on_path_exits_2_naming_file_and_line(tmp_path, state_dir):
    recipe = command_recipe(tmp_path)
    result = guardrun("run", str(recipe))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{recipe}:4: command: not found on PATH: guardrun-test-no-such-tool" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "command: not found" in gave_up(state_dir, "nocommand")["why"]
    assert state(state_dir, "nocommand")["state"] == "gave_up"


def test_start_refuses_a_missing_python_before_it_detaches(tmp_path, state_dir):
    recipe = python_recipe(tmp_path, "/nonexistent/python")
    result = guardrun("start", str(recipe))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{recipe}:3: python: not found: /nonexistent/python" in result.stderr
    assert "started" not in result.stdout
    assert not (state_dir / "nopython" / "supervisor.log").exists(), "no daemon was started"


def unexecutable(tmp_path: Path) -> Path:
    """An executable file the kernel cannot run (no #!, no ELF): execve gives ENOEXEC."""
    path = tmp_path / "not-a-python"
    path.write_text("this is not a program\n")
    path.chmod(0o755)
    return path


def test_run_of_an_interpreter_that_cannot_be_executed_exits_2(tmp_path, state_dir):
    recipe = python_recipe(tmp_path, str(unexecutable(tmp_path)))
    result = guardrun("run", str(recipe))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{recipe}:3: python: cannot run {tmp_path / 'not-a-python'}: Exec format error" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert state(state_dir, "nopython")["state"] == "gave_up"


def test_start_reports_a_supervisor_that_dies_at_once_with_its_last_lines(tmp_path, state_dir):
    recipe = python_recipe(tmp_path, str(unexecutable(tmp_path)))
    result = guardrun("start", str(recipe))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "guardrun: started" not in result.stdout
    assert "exited" in result.stderr and "Exec format error" in result.stderr
    assert str(state_dir / "nopython" / "supervisor.log") in result.stderr
    assert state(state_dir, "nopython")["state"] == "gave_up"


# -- a stop before the first attempt -------------------------------------------------------

def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (/proc/PID/status SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except FileNotFoundError:
        pass
    return False


def spawn_run(recipe: Path) -> subprocess.Popen:
    return subprocess.Popen([GUARDRUN, "run", str(recipe)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(run: subprocess.Popen, text: str, timeout: float) -> str:
    """guardrun's stdout up to the line holding `text` (PR_SET_PDEATHSIG may reach a launcher
    once per thread of its dead supervisor, so a file the job writes on SIGTERM is no sign)."""
    seen, deadline = "", time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([run.stdout], [], [], left)[0], f"no {text!r} in {seen!r}"
        line = run.stdout.readline()
        assert line, f"guardrun exited ({run.wait()}) before saying {text!r}: {seen!r}"
        seen += line
    return seen


def assert_interrupted_before_any_attempt(run: subprocess.Popen, state_dir: Path, seen: str = "") -> None:
    out, err = run.communicate(timeout=60)
    out = seen + out
    assert run.returncode == 130, f"exit {run.returncode}\n{out}{err}"
    assert "Traceback" not in out + err
    names = [e["event"] for e in events(state_dir, "gate")]
    this_run = max(i for i, name in enumerate(names) if name == "guardrun.run.started")
    assert "guardrun.attempt.spawned" not in names[this_run:]
    stopped = [e for e in events(state_dir, "gate") if e["event"] == "guardrun.run.stopped"][-1]
    assert stopped["state"] == "interrupted" and stopped["exit_code"] == 130
    assert state(state_dir)["state"] == "interrupted"


def test_sigterm_caught_before_the_recipe_is_read_exits_130(tmp_path, state_dir):
    recipe, _go = gate_recipe(tmp_path)
    run = spawn_run(recipe)
    wait_until(lambda: catches_sigterm(run.pid) or run.poll() is not None, timeout=30,
               interval=0.002, what="guardrun to install its SIGTERM handler")
    journal_existed = (state_dir / "gate").exists()
    run.send_signal(signal.SIGTERM)
    assert not journal_existed, "the SIGTERM handler came only after the journal was created"
    assert_interrupted_before_any_attempt(run, state_dir)


def test_sigterm_once_the_journal_exists_exits_130(tmp_path, state_dir):
    recipe, _go = gate_recipe(tmp_path)
    run = spawn_run(recipe)
    wait_until(lambda: (state_dir / "gate" / "events.jsonl").exists() or run.poll() is not None,
               timeout=30, interval=0.001, what="the journal")
    run.send_signal(signal.SIGTERM)
    assert_interrupted_before_any_attempt(run, state_dir)


def test_sigterm_while_a_dead_runs_leftovers_are_stopped_exits_130(tmp_path, state_dir):
    term = tmp_path / "term"
    first, _go = gate_recipe(tmp_path, extra_args=["--ignore-term", "--term-file", str(term)])
    supervisor = spawn_run(first)
    try:
        wait_until(lambda: state(state_dir).get("launcher_pid"), timeout=30, what="the launcher")
        wait_until(lambda: "waiting for" in _output(state_dir), timeout=30, what="the job's first line")
    finally:
        supervisor.kill()
        supervisor.communicate()
    leftover = state(state_dir)["launcher_pid"]
    wait_until(term.exists, timeout=10, what="PR_SET_PDEATHSIG's SIGTERM at the launcher")
    again, _go = gate_recipe(tmp_path, stop_grace="3s")
    run = spawn_run(again)
    seen = read_until(run, "left by a previous supervisor of this job", timeout=30)
    run.send_signal(signal.SIGTERM)  # the cleanup is in its grace: the leftover ignores SIGTERM
    assert_interrupted_before_any_attempt(run, state_dir, seen)
    assert not running(leftover)
    assert any(e["event"] == "guardrun.leftovers.stopped" for e in events(state_dir, "gate"))


def _output(state_dir: Path) -> str:
    try:
        return (state_dir / "gate" / "attempts" / "1" / "output.log").read_text()
    except FileNotFoundError:
        return ""



def test_other_commands_still_end_on_sigterm_and_ctrl_c(tmp_path, state_dir):
    """The early handlers are `run`'s: `guardrun logs -f` gives them back, so SIGTERM and
    ^C end it as they always did, even one that came while it was importing."""
    recipe, _go = gate_recipe(tmp_path)
    run = spawn_run(recipe)
    try:
        wait_until(lambda: "waiting for" in _output(state_dir), timeout=30, what="the job's first line")
        for sig, code in ((signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 1)):
            follow = subprocess.Popen([GUARDRUN, "logs", "gate", "-f"], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            read_until(follow, "waiting for", timeout=30)
            follow.send_signal(sig)
            _out, err = follow.communicate(timeout=30)
            assert follow.returncode == code, err
            assert "Traceback" not in err
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
    assert run.returncode == 130

"""guardrun run on small real jobs: the user's view (exit code, terminal lines, journal)."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, wait_until

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
JOBS = REPO / "tests" / "jobs"


def write_recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def events(state_dir: Path, job: str = "job") -> list[dict]:
    path = state_dir / job / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def named(evts: list[dict], name: str) -> list[dict]:
    return [e for e in evts if e["event"] == f"guardrun.{name}"]


def run_guardrun(recipe: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([GUARDRUN, "run", str(recipe), *extra], capture_output=True, text=True,
                          timeout=timeout)


def test_growing_job_is_stopped_within_two_intervals(tmp_path, state_dir):
    interval = 0.25
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        script: {JOBS / 'grow.py'}
        args: [--mark-mb, "400", --chunk-mb, "16"]
        limits: {{host_memory: 400MiB, hard_memory: "off"}}  # guardrun's own stop, not the kernel's
        monitor: {{interval: {interval}}}
        stop_grace: 5s
        ladder: []
        """)
    result = run_guardrun(recipe)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    crossed = float(re.search(r"crossed 400 MiB at ([\d.]+)", out).group(1))
    termed = float(re.search(r"got SIGTERM at ([\d.]+)", out).group(1))
    assert 0 <= termed - crossed <= 2 * interval, (termed - crossed, out)
    evts = events(state_dir)
    [breach] = named(evts, "limit.breached")
    assert breach["kind"] == "host_oom" and breach["pss"] >= 400 << 20
    [ended] = named(evts, "attempt.ended")
    assert ended["kind"] == "host_oom" and "reached the limit 400 MiB" in ended["evidence"]
    assert "giving up: no rung left in the ladder for host_oom" in out


def test_job_ignoring_sigterm_is_killed_after_the_grace(tmp_path, state_dir):
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        script: {JOBS / 'grow.py'}
        args: [--mark-mb, "300", --ignore-term]
        limits: {{host_memory: 300MiB, hard_memory: "off"}}
        monitor: {{interval: 0.1}}
        stop_grace: 1s
        ladder: []
        """)
    result = run_guardrun(recipe)
    assert result.returncode == 1
    [stopped] = named(events(state_dir), "attempt.stopped")
    assert stopped["was_running"] and stopped["killed"] and stopped["left"] == []
    assert 1.0 <= stopped["took"] < 5.0


def test_import_error_is_a_user_error_without_retry(tmp_path, state_dir):
    (tmp_path / "train.py").write_text("import no_such_module_guardrun\n")
    recipe = write_recipe(tmp_path, """
        launcher: python
        script: train.py
        restarts: {max: 5, backoff: [1s, 2s]}
        """)
    result = run_guardrun(recipe)
    assert result.returncode == 1
    assert "user error, not retried" in result.stdout
    assert "No module named 'no_such_module_guardrun'" in result.stdout
    assert len(named(events(state_dir), "attempt.started")) == 1


def test_same_unknown_error_twice_at_start_stops_the_loop(tmp_path, state_dir):
    (tmp_path / "train.py").write_text("raise SystemExit('config says no')\n")
    recipe = write_recipe(tmp_path, """
        launcher: python
        script: train.py
        restarts: {max: 5, backoff: [0.1s, 0.2s]}
        """)
    result = run_guardrun(recipe)
    assert result.returncode == 1
    kinds = [e["kind"] for e in named(events(state_dir), "attempt.ended")]
    assert kinds == ["unknown", "user_error"]
    assert "the same error twice before any progress" in result.stdout


def test_ctrl_c_stops_the_job_and_exits_130(tmp_path, state_dir):
    recipe = write_recipe(tmp_path, f"""
        launcher: torchrun
        script: {JOBS / 'grow.py'}
        args: [--mark-mb, "50", --max-mb, "64"]
        gpus: 2
        stop_grace: 10s
        """)
    proc = subprocess.Popen([GUARDRUN, "run", str(recipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    wait_until(lambda: (lines.append(proc.stdout.readline()) or "crossed 50 MiB" in "".join(lines))
               and "".join(lines).count("crossed 50 MiB") >= 2, timeout=60, what="both ranks running")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, "".join(lines) + rest
    assert "stopped on request" in rest
    [ended] = named(events(state_dir), "attempt.ended")
    assert ended["kind"] == "interrupted"


@pytest.mark.parametrize("argv,code,message", [
    (["run"], 2, "Missing argument 'RECIPE'"),
    (["run", "/nonexistent.yaml"], 2, "/nonexistent.yaml"),
    (["--bogus"], 2, "No such option"),
    (["status", "no-such-job"], 4, "no state recorded"),
    (["checkpoints", "/nonexistent-dir"], 2, "/nonexistent-dir: no such folder"),
])
def test_cli_table(argv, code, message, state_dir):
    result = subprocess.run([GUARDRUN, *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_recipe_names_file_line_and_key(tmp_path, state_dir):
    recipe = write_recipe(tmp_path, """
        launcher: python
        script: job.yaml
        gpu: 2
        """)
    result = run_guardrun(recipe)
    assert result.returncode == 2
    assert f"{recipe}:4: gpu: unknown key 'gpu' (did you mean 'gpus'?)" in result.stderr
    assert "Traceback" not in result.stderr

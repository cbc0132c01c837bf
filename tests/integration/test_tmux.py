"""`guardrun tmux RECIPE` on a real tmux server (a private socket, killed at the end)."""
from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from conftest import wait_until
from helpers_unattended import gate_recipe, guardrun, state

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def server():
    """A private tmux server name (`tmux -L`); whatever it started is killed with it."""
    name = f"guardrun-test-{uuid.uuid4().hex[:12]}"
    yield name
    subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True, timeout=30)


def pane_text(server: str, session: str) -> str:
    result = subprocess.run(["tmux", "-L", server, "capture-pane", "-p", "-t", f"={session}:"],
                            capture_output=True, text=True, timeout=30)
    return result.stdout


def dead(server: str, session: str) -> bool:
    """Whether the run in the pane is over. Not its status: tmux 3.3a leaves
    #{pane_dead_status} empty for good when it reads the pty's EOF before the SIGCHLD
    (seen here in 2 of 8 runs)."""
    result = subprocess.run(["tmux", "-L", server, "list-panes", "-t", f"={session}:", "-F",
                             "#{pane_dead}"], capture_output=True, text=True, timeout=30)
    return result.stdout.strip() == "1"


def test_tmux_runs_the_job_in_a_session_named_after_it(tmp_path, state_dir, server):
    recipe, go = gate_recipe(tmp_path)
    try:
        created = guardrun("tmux", str(recipe), "--no-attach", "-L", server)
        assert created.returncode == 0, created.stdout + created.stderr
        assert "started job gate in tmux session guardrun-gate" in created.stdout
        assert f"tmux -L {server} attach-session -t =guardrun-gate" in created.stdout

        def shows_status_and_output() -> bool:
            text = pane_text(server, "guardrun-gate")
            return "attempt 1 · rung 0 · 1 rank(s) · mem" in text and "[1] waiting for" in text
        wait_until(shows_status_and_output, timeout=30,
                   what="guardrun's status line and the job's output in the pane")

        again = guardrun("tmux", str(recipe), "--no-attach", "-L", server)
        assert again.returncode == 0
        assert "tmux session guardrun-gate exists" in again.stdout
        assert "has exited" not in again.stdout
    finally:
        go.touch()  # guardrun outlives the server's SIGHUP by design: the job must end
    wait_until(lambda: "guardrun: the job finished" in pane_text(server, "guardrun-gate"),
               timeout=30, what="the run to finish; the pane stays (remain-on-exit)")
    assert state(state_dir)["state"] == "finished"
    wait_until(lambda: dead(server, "guardrun-gate"), timeout=30, what="the pane to be dead")
    ended = guardrun("tmux", str(recipe), "--no-attach", "-L", server)
    assert "tmux session guardrun-gate exists (the run in it has exited" in ended.stdout


def test_tmux_refuses_a_job_supervised_elsewhere(tmp_path, state_dir, server):
    recipe, go = gate_recipe(tmp_path)
    started = guardrun("start", str(recipe))
    assert started.returncode == 0, started.stderr
    try:
        refused = guardrun("tmux", str(recipe), "--no-attach", "-L", server)
        assert refused.returncode == 2
        assert "already supervised by pid" in refused.stderr
    finally:
        go.touch()
    wait_until(lambda: state(state_dir).get("state") == "finished", timeout=30,
               what="the detached job to finish")

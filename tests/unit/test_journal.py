"""The state directory: private, atomic, and the ladder's memory across restarts."""
from __future__ import annotations

import os
import socket
import stat

import pytest

from guardrun.launcher.failures import Kind
from guardrun.supervisor.record.journal import Journal, StateDirError, ensure_private_dir, history, read_events, read_state


def test_events_are_namespaced_json_lines_with_job_bound(state_dir):
    journal = Journal("demo")
    journal.emit("attempt.started", attempt=1, ranks=2)
    journal.close()
    [event] = list(read_events(journal.dir))
    assert event["event"] == "guardrun.attempt.started"
    assert (event["job"], event["attempt"], event["ranks"]) == ("demo", 1, 2)
    assert "ts" in event
    assert stat.S_IMODE(os.stat(journal.dir).st_mode) == 0o700


def test_state_is_replaced_whole(state_dir):
    journal = Journal("demo")
    journal.write_state({"state": "running", "attempt": 1})
    journal.write_state({"state": "finished", "attempt": 2})
    assert read_state(journal.dir) == {"state": "finished", "attempt": 2}
    assert [p.name for p in journal.dir.iterdir() if p.name.startswith(".state")] == []


def test_history_resumes_the_ladder_and_resets_on_recipe_change(state_dir):
    journal = Journal("demo")
    journal.emit("run.started", digest="aaa")
    journal.emit("attempt.ended", attempt=1, kind="host_oom", evidence="too big", step=10)
    journal.emit("attempt.ended", attempt=2, kind="interrupted")
    journal.close()
    [failure] = history(journal.dir, "aaa")
    assert (failure.kind, failure.step, failure.attempt) == (Kind.HOST_OOM, 10, 1)
    with open(journal.dir / "events.jsonl", "a") as handle:
        handle.write('{"event": "guardrun.attempt.ended", "kind": "cuda')  # torn last line
    assert len(history(journal.dir, "aaa")) == 1
    assert history(journal.dir, "bbb") == []  # the same name, an edited recipe: rung 0 again


def test_refuses_a_symlinked_state_dir(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "job").symlink_to(target)
    with pytest.raises(StateDirError, match="symlink"):
        ensure_private_dir(tmp_path / "root" / "job")


def test_loosened_permissions_are_tightened(tmp_path):
    path = tmp_path / "job"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    ensure_private_dir(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_every_event_carries_its_level_and_host(state_dir):
    """What a log shipper indexes: `level` (info, warning, error) and `host` on every line."""
    journal = Journal("demo")
    journal.emit("run.started", digest="aaa")
    journal.emit("attempt.ended", attempt=1, kind="host_oom", evidence="too big")
    journal.emit("limit.breached", attempt=2, kind="host_oom")
    journal.emit("attempt.ended", attempt=2, kind="success")
    journal.emit("run.gave_up", exit_code=1, why="restarts used up")
    journal.close()
    written = list(read_events(journal.dir))
    assert [e["level"] for e in written] == ["info", "warning", "warning", "info", "error"]
    assert {e["host"] for e in written} == {socket.gethostname()}

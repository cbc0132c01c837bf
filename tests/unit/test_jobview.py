"""What status and list say: the lock decides liveness, never a stale state.json."""
from __future__ import annotations

from guardrun.launcher.units import format_duration as duration
from guardrun.supervisor.cli.jobview import extra_lines, list_lines, parse_iso, view

STARTED = "2026-11-25T10:00:00+0000"
NOW = parse_iso("2026-11-25T11:02:03+0000")


def state(**fields) -> dict:
    return {"job": "llava", "pid": 4242, "state": "running", "attempt": 2, "rung": 1,
            "started": STARTED, "updated": "2026-11-25T10:30:00+0000", **fields}


def test_running_with_its_lock_held_is_running_with_uptime():
    job = view("llava", state(), holder=4242, now=NOW)
    assert job["state"] == "running" and job["alive"] and job["uptime_s"] == 3723
    assert "  supervisor: pid 4242, up 1:02:03" in extra_lines(job)


def test_running_without_a_lock_holder_is_dead_never_running():
    job = view("llava", state(), holder=None, now=NOW)
    assert job["state"] == "dead" and job["recorded_state"] == "running" and not job["alive"]
    assert "its supervisor (pid 4242) is gone; it was running" in extra_lines(job)[0]
    assert "uptime_s" not in job and job["ran_s"] == 1800


def test_a_new_supervisor_that_has_not_written_yet_is_starting():
    job = view("llava", state(state="interrupted"), holder=5151, now=NOW)
    assert job["state"] == "starting" and job["pid"] == 5151 and job["alive"]


def test_finished_stays_finished_and_says_how_long_it_ran():
    job = view("llava", state(state="finished"), holder=None, now=NOW)
    assert job["state"] == "finished" and "  ran: 0:30:00" in extra_lines(job)


def test_memory_source_is_shown_with_why():
    job = view("llava", state(memory_source="procfs", memory_source_why="cgroup v1 here"), 4242, NOW)
    assert "  memory source: procfs (cgroup v1 here)" in extra_lines(job)


def test_list_is_a_table_with_one_row_per_job():
    jobs = [view("llava", state(step=120), 4242, NOW), view("demo", state(state="finished"), None, NOW)]
    lines = list_lines(jobs)
    assert lines[0].split() == ["JOB", "STATE", "ATTEMPT", "RUNG", "STEP", "UPTIME", "PID"]
    assert lines[1].split() == ["llava", "running", "2", "1", "120", "1:02:03", "4242"]
    assert lines[2].split() == ["demo", "finished", "2", "1", "-", "-", "-"]


def test_duration_and_times():
    assert duration(59) == "0:00:59" and duration(90061) == "1d 1:01:01" and duration(None) == "?"
    assert parse_iso("garbage") is None and parse_iso(None) is None
    assert parse_iso("2026-11-25T12:00:00+0100") == parse_iso("2026-11-25T11:00:00+0000")

"""A damaged state directory is read around, never fatal (issue 12 §3).

Each case starts from the state dir of a real earlier run of the same recipe (one
`transient` failure in its history, so the next run resumes that history), damages
one thing in it the way a crash, a full disk or a stray command would, then runs every
command that reads it. What a user would see is asserted: the exit code, a one-line
`guardrun: warning:` naming the file and what was skipped, and never a traceback.
`run` always works: a damaged history is treated as no history, and says so.

`run` goes through the real `guardrun` command; status, list, stop, report and logs
through click's runner (the same code, in-process, fast), and a few through the real
command too.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from guardrun.supervisor.cli.main import main

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
JOB = "demo"
TS = "2026-12-01T08:00:0{}.000000Z"


def recipe_file(tmp_path: Path) -> Path:
    script = tmp_path / "job.py"
    script.write_text('print("hello from the job")\n')
    path = tmp_path / f"{JOB}.yaml"
    path.write_text(textwrap.dedent(f"""\
        launcher: python
        script: {script}
        monitor: {{interval: 0.1}}
        ladder: []
        restarts: {{max: 1, backoff: [0, 0]}}
        """))
    return path


def earlier_run(recipe: Path) -> list[dict]:
    """The journal of a run of `recipe` whose one attempt failed as transient, then was stopped."""
    digest = hashlib.sha256(recipe.read_bytes()).hexdigest()[:16]
    base = {"job": JOB}
    return [
        {**base, "event": "guardrun.run.started", "digest": digest, "pid": 1, "tree_limit": None,
         "min_available": None, "ts": TS.format(0)},
        {**base, "event": "guardrun.attempt.started", "attempt": 1, "rung": 0, "ranks": 1,
         "notes": [], "ts": TS.format(1)},
        {**base, "event": "guardrun.memory.sample", "attempt": 1, "tree": 1048576,
         "available": 2 ** 33, "gpus": [], "ts": TS.format(2)},
        {**base, "event": "guardrun.attempt.ended", "attempt": 1, "kind": "transient",
         "evidence": "NCCL timeout", "exit_code": 1, "step": 3, "ts": TS.format(3)},
        {**base, "event": "guardrun.run.stopped", "why": "interrupted", "ts": TS.format(4)},
    ]


def lines(events: list[dict]) -> list[bytes]:
    return [json.dumps(e).encode() + b"\n" for e in events]


def make_job(root: Path, recipe: Path) -> Path:
    job = root / JOB
    (job / "attempts" / "1").mkdir(parents=True, mode=0o700)
    for path in (root, job, job / "attempts", job / "attempts" / "1"):
        path.chmod(0o700)
    (job / "events.jsonl").write_bytes(b"".join(lines(earlier_run(recipe))))
    (job / "state.json").write_text(json.dumps({"state": "stopped", "attempt": 1, "rung": 0,
                                                "pid": 1, "last_kind": "transient"}))
    (job / "attempts" / "1" / "output.log").write_text("hello from the job\n")
    return job


# -- the damage -----------------------------------------------------------------------
def _insert(raw: bytes) -> Callable[[Path], None]:
    """Put `raw` (one line) in the middle of events.jsonl."""
    def damage(job: Path) -> None:
        old = (job / "events.jsonl").read_bytes().splitlines(keepends=True)
        (job / "events.jsonl").write_bytes(b"".join(old[:2] + [raw] + old[2:]))
    return damage


def _replace_ended(**fields) -> Callable[[Path], None]:
    def damage(job: Path) -> None:
        events = [json.loads(line) for line in (job / "events.jsonl").read_bytes().splitlines()]
        for event in events:
            if event["event"] == "guardrun.attempt.ended":
                event.update(fields)
        (job / "events.jsonl").write_bytes(b"".join(lines(events)))
    return damage


def _torn(job: Path) -> None:
    with open(job / "events.jsonl", "ab") as handle:
        handle.write(b'{"job": "demo", "event": "guardrun.state.chan')


def _torn_then_restarted(job: Path) -> None:
    """A supervisor killed mid-line, then a later run of the same recipe (its first event on
    a new line): the torn line is the known trace of the kill, not damage."""
    again = (job / "events.jsonl").read_bytes().splitlines(keepends=True)  # the same run's events
    _torn(job)
    with open(job / "events.jsonl", "ab") as handle:
        handle.write(b"\n" + b"".join(again))


def _wrong_types(job: Path) -> None:
    bad = [{"job": JOB, "event": "guardrun.memory.sample", "attempt": 1, "tree": "lots",
            "pss": [1], "available": {}, "gpus": 7, "ts": TS.format(2)},
           {"job": JOB, "event": "guardrun.attempt.started", "attempt": "two", "rung": "x",
            "notes": 3, "ts": 5},
           {"job": JOB, "event": 17, "ts": TS.format(3)}]
    _insert(b"".join(lines(bad)))(job)
    _replace_ended(evidence=5, step="three", root_cause="nope")(job)


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def damage(job: Path) -> None:
        (job / name).write_bytes(data)
    return damage


def _make_dir(name: str) -> Callable[[Path], None]:
    def damage(job: Path) -> None:
        path = job / name
        if path.exists():
            path.unlink()
        path.mkdir()
    return damage


def _attempts_file(job: Path) -> None:
    (job / "attempts" / "1" / "output.log").unlink()
    (job / "attempts" / "1").rmdir()
    (job / "attempts").rmdir()
    (job / "attempts").write_text("not a folder\n")


def _superscript(job: Path) -> None:
    (job / "attempts" / "\u00b2").mkdir()   # '²'.isdigit() is True, int('²') raises


EVENTS_SKIPPED = r"warning: .*events\.jsonl: skipped 1 unusable line"
NO_HISTORY = r"not used"
STATE_BAD = r"warning: .*state\.json: "


@pytest.mark.parametrize("case", [
    # name, damage, {command: (exit code, regex the output must match)}; run's history: resumed or not
    ("non_utf8_line", _insert(b'{"job": "demo", "event": "\xff\xfe"}\n'),
     {"report": (0, EVENTS_SKIPPED + r".*not UTF-8"), "run": (0, NO_HISTORY)}, 0),
    ("list_line", _insert(b"[1, 2]\n"),
     {"report": (0, EVENTS_SKIPPED + r".*not a JSON object"), "run": (0, NO_HISTORY)}, 0),
    ("number_line", _insert(b"42\n"), {"report": (0, EVENTS_SKIPPED), "run": (0, NO_HISTORY)}, 0),
    ("string_line", _insert(b'"x"\n'), {"report": (0, EVENTS_SKIPPED), "run": (0, NO_HISTORY)}, 0),
    ("not_json", _insert(b"{nope\n"), {"report": (0, EVENTS_SKIPPED), "run": (0, NO_HISTORY)}, 0),
    ("huge_line", _insert(b'{"x": "' + b"a" * (3 << 20) + b'"}\n'),
     {"report": (0, EVENTS_SKIPPED + r".*longer than"), "run": (0, NO_HISTORY)}, 0),
    ("unknown_kind", _replace_ended(kind="bogus"),
     {"report": (0, r"^(?!.*Traceback)"), "run": (0, r"unknown kind 'bogus'.*" + NO_HISTORY)}, 0),
    ("wrong_types", _wrong_types,
     {"report": (0, r"warning: .*events\.jsonl: skipped \d+ unusable"), "run": (0, NO_HISTORY)}, 0),
    ("torn_last_line", _torn,
     {"report": (0, r"skipped 1 unusable line .*torn"), "run": (0, r"torn")}, 1),
    ("torn_then_restarted", _torn_then_restarted,
     {"report": (0, r"skipped 1 unusable line \(line 6: torn"), "run": (0, r"torn.*the rest of the history is used")}, 2),
    ("events_empty", _write("events.jsonl", b""), {"report": (2, r"error: .*no attempt")}, 0),
    ("events_dir", _make_dir("events.jsonl"),
     {"report": (2, r"error: .*events\.jsonl"), "run": (0, r"events\.jsonl.* set aside as")}, 0),
    ("state_list", _write("state.json", b"[1, 2, 3]\n"),
     {"status": (3, STATE_BAD + "not a JSON object"), "list": (0, STATE_BAD),
      "stop": (0, STATE_BAD + r"[\s\S]*not running \(last state: unknown\)")}, 1),
    ("state_number", _write("state.json", b"42\n"),
     {"status": (3, STATE_BAD), "list": (0, STATE_BAD), "stop": (0, STATE_BAD)}, 1),
    ("state_non_utf8", _write("state.json", b'{"state": "\xff"}'),
     {"status": (3, STATE_BAD + "not UTF-8"), "list": (0, STATE_BAD), "stop": (0, STATE_BAD)}, 1),
    ("state_empty", _write("state.json", b""),
     {"status": (3, STATE_BAD + "empty"), "list": (0, STATE_BAD), "stop": (0, STATE_BAD)}, 1),
    ("state_dir", _make_dir("state.json"),
     {"status": (3, STATE_BAD + "not a regular file"), "list": (0, STATE_BAD),
      "stop": (0, STATE_BAD), "run": (0, r"state\.json.* set aside as")}, 1),
    ("attempts_file", _attempts_file,
     {"logs": (1, r"warning: .*attempts: not a directory[\s\S]*has no attempt yet"),
      "run": (0, r"attempts.* set aside as")}, 1),
    ("attempts_superscript", _superscript,
     {"logs": (0, r"warning: .*attempts: skipped 1 entry that is not an attempt number"),
      "run": (0, r"^(?!.*Traceback)")}, 1),
    ("output_log_dir", _make_dir("attempts/1/output.log"),
     {"logs": (1, r"error: cannot read .*attempts/1/output\.log: not a regular file \(a directory\)")}, 1),
    ("lock_dir", _make_dir("supervisor.lock"),
     {"stop": (0, r"not running"), "run": (0, r"supervisor\.lock.* set aside as")}, 1),
    ("control_sock_file", _write("control.sock", b"x"),
     {"run": (0, r"control\.sock.* set aside as")}, 1),
], ids=lambda case: case[0])
def test_every_command_reads_around_the_damage(case, tmp_path, state_dir):
    name, damage, expected, resumed = case
    recipe = recipe_file(tmp_path)
    job = make_job(state_dir, recipe)
    damage(job)
    for command, argv in (("status", ["status", JOB]), ("list", ["list"]), ("stop", ["stop", JOB]),
                          ("report", ["report", JOB, "--out", str(tmp_path / "report")]),
                          ("logs", ["logs", JOB])):
        # status JOB of a job that is not running exits 3 (systemctl's convention)
        code, pattern = expected.get(command, (3 if command == "status" else 0, r""))
        result = CliRunner().invoke(main, argv)
        said = result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"{command}: {result.exception!r}\n{said}"
        assert "Traceback" not in said, f"{command}:\n{said}"
        assert result.exit_code == code, f"{command}: exit {result.exit_code}\n{said}"
        assert re.search(pattern, said, re.MULTILINE), f"{command}: {pattern!r} not in:\n{said}"

    code, pattern = expected.get("run", (0, r""))
    ran = subprocess.run([GUARDRUN, "run", str(recipe)], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    said = ran.stdout + ran.stderr
    assert "Traceback" not in said, said
    assert ran.returncode == code, said
    assert re.search(pattern, said, re.MULTILINE), f"run: {pattern!r} not in:\n{said}"
    assert "the job finished" in said, said
    new = new_run_started(job)
    assert new["resumed_history"] == resumed, said


def new_run_started(job: Path) -> dict:
    """The run.started of the run the test made (pid != 1), read line by line like a person would."""
    found = []
    for raw in (job / "events.jsonl").read_bytes().splitlines():
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "guardrun.run.started" and event.get("pid") != 1:
            found.append(event)
    assert len(found) == 1, f"the new run's run.started is missing or glued to a torn line: {found}"
    return found[0]


def test_a_run_after_a_torn_line_starts_its_first_event_on_a_new_line(tmp_path, state_dir):
    recipe = recipe_file(tmp_path)
    job = make_job(state_dir, recipe)
    _torn(job)
    ran = subprocess.run([GUARDRUN, "run", str(recipe)], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    raw = (job / "events.jsonl").read_bytes().splitlines()
    assert raw[5] == b'{"job": "demo", "event": "guardrun.state.chan', raw[5]
    assert json.loads(raw[6])["event"] == "guardrun.run.started"
    assert all(isinstance(json.loads(line), dict) for line in raw[6:])


def test_the_real_command_on_a_badly_damaged_dir(tmp_path, state_dir):
    """Everything at once, through the real `guardrun` binary: each command still answers."""
    recipe = recipe_file(tmp_path)
    job = make_job(state_dir, recipe)
    for damage in (_replace_ended(kind="bogus"), _insert(b"\xff\n"), _insert(b"[1]\n"),
                   _write("state.json", b"[1, 2, 3]"), _superscript, _torn):
        damage(job)
    env = dict(os.environ)
    for argv, code in ((["status", JOB], 3), (["status", JOB, "--json"], 3), (["list"], 0),
                       (["list", "--json"], 0), (["stop", JOB], 0), (["logs", JOB], 0),
                       (["report", JOB, "--out", str(tmp_path / "r")], 0), (["run", str(recipe)], 0)):
        result = subprocess.run([GUARDRUN, *argv], capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL, env=env)
        said = result.stdout + result.stderr
        assert "Traceback" not in said, f"{argv}:\n{said}"
        assert result.returncode == code, f"{argv}: exit {result.returncode}\n{said}"
        assert "guardrun: warning:" in result.stderr, f"{argv}:\n{said}"
        if "--json" in argv:
            json.loads(result.stdout)  # the warnings go to stderr: stdout stays JSON

"""The command line as a user meets it, table-driven (arguments -> exit code -> message), as
earlyoom's tests are: unknown words, overrides, exit codes scripts test, --json shapes, logs."""
from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from guardrun.supervisor.cli.main import main

RECIPE = """\
name: job
launcher: python
script: train.py
batch: {per_device: 4}
checkpoints: {dir: ckpts}
"""


@pytest.fixture
def place(tmp_path, state_dir, monkeypatch):
    """A recipe folder (cwd) and a state root with jobs in known states."""
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "job.yaml").write_text(RECIPE)
    (tmp_path / "bare.yaml").write_text("launcher: python\nscript: train.py\n")
    (tmp_path / "typo.yaml").write_text("launcher: python\nscript: train.py\ngpu: 2\n")
    (tmp_path / "ckpts" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "ckpts" / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
    monkeypatch.chdir(tmp_path)
    job(state_dir, "done", {"state": "finished", "pid": 1, "attempt": 1},
        [{"event": "guardrun.attempt.started", "attempt": 1, "ranks": 1}],
        {1: "".join(f"line {n}\n" for n in range(1, 6))})
    job(state_dir, "nospawn", {"state": "gave_up", "pid": 1, "attempt": 1},
        [{"event": "guardrun.attempt.started", "attempt": 1, "ranks": 1},
         {"event": "guardrun.attempt.spawn_failed", "attempt": 1, "program": "/nonexistent/python",
          "error": "[Errno 2] No such file or directory"}], {1: None})
    job(state_dir, "old", {"state": "finished", "pid": 1}, [], {1: "long ago\n"})
    hour_ago = time.time() - 3600
    os.utime(state_dir / "old" / "attempts" / "1" / "output.log", (hour_ago, hour_ago))
    return tmp_path


def job(root: Path, name: str, state: dict, events: list[dict], attempts: dict[int, str | None]) -> None:
    folder = root / name
    folder.mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "events.jsonl").write_text("".join(json.dumps({"job": name, **e}) + "\n" for e in events))
    for number, text in attempts.items():
        (folder / "attempts" / str(number)).mkdir(parents=True)
        if text is not None:
            (folder / "attempts" / str(number) / "output.log").write_text(text)


def invoke(*argv: str):
    result = CliRunner().invoke(main, list(argv))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


CASES = [
    # an unknown word is not a recipe: click's own answer, exit 2
    (["stauts", "done"], 2, "No such command 'stauts'"),
    (["stauts", "done"], 2, "'status'"),
    (["lst"], 2, "No such command 'lst'. Did you mean 'list'?"),
    (["example"], 0, "llava_lora"),
    (["example", "llava"], 2, "no example 'llava' (did you mean 'llava_lora'?)"),
    # an existing file, or a name ending in .yaml, is `run` it
    (["typo.yaml"], 2, "typo.yaml:3: gpu: unknown key 'gpu' (did you mean 'gpus'?)"),
    (["missing.yaml"], 2, "missing.yaml:1: recipe: cannot read the file"),
    # overrides: the recipe's own checks, named <command line>, for run, plan, start and tmux
    (["run", "job.yaml", "batch.per_device=0"], 2, "guardrun: error: <command line>: batch.per_device: "
                                                   "expected an integer >= 1, got 0"),
    (["job.yaml", "batch.per_devce=8"], 2, "<command line>: batch.per_devce: unknown key 'per_devce' "
                                           "(did you mean 'per_device'?)"),
    (["plan", "job.yaml", "gpus=0"], 2, "<command line>: gpus: expected a GPU count >= 1"),
    (["start", "job.yaml", "limits.host_memory=lots"], 2, "<command line>: limits.host_memory: "),
    (["tmux", "job.yaml", "restarts.max=-1", "--no-attach"], 2, "<command line>: restarts.max: "),
    (["plan", "job.yaml", "batch.per_device=8", "gpus=1"], 0, "micro-batch 8"),
    (["run"], 2, "Missing argument 'RECIPE'"),
    (["run", "gpus=2"], 2, "no recipe given, only overrides (KEY=VALUE): gpus=2"),
    (["run", "job.yaml", "bare.yaml"], 2, "got 2 words that are not KEY=VALUE: job.yaml bare.yaml"),
    # status: 0 running (tests/integration/test_unattended.py), 3 not running, 4 unknown
    (["status", "done"], 3, "done: finished"),
    (["status", "done", "--json"], 3, '"state": "finished"'),
    (["status", "nosuch"], 4, "nosuch: no state recorded"),
    (["status"], 0, "done: finished"),
    # checkpoints DIR or RECIPE; a missing folder exits 2
    (["checkpoints", "ckpts"], 0, "checkpoint-5"),
    (["checkpoints", "job.yaml"], 0, "checkpoint-5"),
    (["checkpoints", "bare.yaml"], 2, "bare.yaml: the recipe has no `checkpoints:` section"),
    (["checkpoints", "nowhere"], 2, "nowhere: no such folder"),
    (["checkpoints", "ckpts", "--pattern", "("], 2, "--pattern '(': not a valid regular expression"),
    # logs: -n, --since, and why there is nothing to show
    (["logs", "done", "-n", "2"], 0, "line 4\nline 5\n"),
    (["logs", "done", "--rank", "1"], 0, "attempt 1 ran rank 0 only"),
    (["logs", "nospawn"], 0, "attempt 1 never started (spawn failed: /nonexistent/python: "
                             "[Errno 2] No such file or directory)"),
    (["logs", "done", "--since", "10m"], 0, "line 1\n"),
    (["logs", "old", "--since", "10m"], 0, "no attempt of job old wrote output in the last 10m"),
    (["logs", "done", "--since", "10m", "--attempt", "1"], 2, "give --since or --attempt, not both"),
    (["logs", "done", "--since", "soon"], 2, "Invalid value for '--since'"),
    (["logs", "done", "-n", "-1"], 2, "Invalid value for '-n'"),
]


@pytest.mark.parametrize("argv,code,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_the_command_line(place, argv, code, message):
    result = invoke(*argv)
    said = result.stdout + result.stderr
    assert result.exit_code == code, f"exit {result.exit_code}:\n{said}"
    assert message in said
    assert "Traceback" not in said


def test_logs_n_is_the_tail_and_nothing_more(place):
    assert invoke("logs", "done", "-n", "2").stdout == "line 4\nline 5\n"
    assert invoke("logs", "done", "-n", "0").stdout == ""
    assert invoke("logs", "done").stdout.count("\n") == 5
    # -f of a job no supervisor runs: what is there (its last N), then it ends
    assert invoke("logs", "done", "-f", "-n", "2").stdout == "line 4\nline 5\n"
    assert invoke("logs", "done", "-f").stdout.count("\n") == 5


def test_logs_since_follow_shows_only_what_comes_when_nothing_is_recent(place):
    followed = invoke("logs", "old", "--since", "10m", "-f")
    assert followed.exit_code == 0 and followed.stdout == ""
    assert "no attempt of job old wrote output in the last 10m" in followed.stderr


def test_status_json_shape(place):
    shown = json.loads(invoke("status", "done", "--json").stdout)
    assert {"job": "done", "state": "finished", "recorded_state": "finished", "alive": False}.items() <= shown.items()
    listed = json.loads(invoke("list", "--json").stdout)
    assert [each["job"] for each in listed] == ["done", "nospawn", "old"]
    assert all({"job", "state", "alive"} <= each.keys() for each in listed)
    assert json.loads(invoke("status", "--json").stdout) == json.loads(invoke("status", "--json").stdout)


def test_checkpoints_json_shape(place):
    [found] = json.loads(invoke("checkpoints", "job.yaml", "--json").stdout)
    assert found == {"name": "checkpoint-5", "path": str(place / "ckpts" / "checkpoint-5"), "step": 5,
                     "valid": found["valid"], "reason": found["reason"]}
    assert isinstance(found["valid"], bool) and isinstance(found["reason"], str)
    assert json.loads(invoke("checkpoints", "ckpts", "--pattern", r"nothing-(\d+)", "--json").stdout) == []


def test_plan_json_shape(place):
    result = invoke("plan", "job.yaml", "batch.per_device=8", "gpus=1", "--json")
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["job"] == "job" and plan["recipe"] == str(place / "job.yaml")
    assert plan["overrides"] == ["batch.per_device=8", "gpus=1"] and plan["ladder"] == "default"
    assert set(plan) == {"job", "recipe", "overrides", "warnings", "ladder", "resume_from", "first_fitting",
                         "resources", "rungs"}
    first = plan["rungs"][0]
    assert (first["rung"], first["on"], first["ranks"], first["per_device"]) == (0, [], 1, 8)
    assert set(first) == {"rung", "on", "ranks", "gpus", "per_device", "grad_accum", "global_batch", "lr",
                          "zero_stage", "zero3_offload", "skipped", "fits", "why", "predicted"}
    assert len(plan["rungs"]) > 1 and all(rung["on"] for rung in plan["rungs"][1:])


def test_doctor_json_shape(place):
    result = invoke("doctor", "--json")
    checks = json.loads(result.stdout)
    assert checks and all(set(check) == {"status", "name", "detail", "fix"} for check in checks)
    assert {check["status"] for check in checks} <= {"OK", "WARN", "FAIL"}
    assert result.exit_code == (1 if any(check["status"] == "FAIL" for check in checks) else 0)


def test_a_recipe_path_with_an_equals_sign_is_still_the_recipe(place):
    (place / "a=b.yaml").write_text(textwrap.dedent(RECIPE))
    result = invoke("plan", "a=b.yaml", "gpus=1")
    assert result.exit_code == 0, result.stderr
    assert "job job:" in result.stdout


def test_tmux_gives_the_overrides_to_the_run_in_its_session(place, monkeypatch):
    from guardrun.supervisor.unattended import tmux
    made = []
    monkeypatch.setattr(tmux, "has_session", lambda base, session: False)
    monkeypatch.setattr(tmux, "create", lambda base, session, run, environ, cwd: made.append(list(run)))
    result = invoke("tmux", "job.yaml", "batch.per_device=8", "--fresh", "--no-attach")
    assert result.exit_code == 0, result.stderr
    [run] = made
    assert run[-5:] == ["guardrun.supervisor", "run", "--fresh", "batch.per_device=8", str(place / "job.yaml")]

"""Never past the target (issue 13 §1, §7), with real processes: the user's view and the trainer's record.

The trainer is tests/jobs/teardown_abort.py under a real torchrun with 2 gloo ranks: it
logs `step N/M`, saves HF-style checkpoints (trainer_state.json with global_step and
max_steps) and every step it runs into steps.log, then rank 1 aborts in teardown.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_supervise import GUARDRUN, events, named, run_guardrun, write_recipe

from guardrun.launcher.units import format_bytes

JOB = REPO / "tests" / "jobs" / "teardown_abort.py"
MAX_STEPS = 6


def torchrun_recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path, f"""
        launcher: torchrun
        script: {JOB}
        gpus: 2
        args: {{out: ./out, max_steps: {MAX_STEPS}, save_steps: 2}}
        checkpoints: {{dir: ./out}}
        monitor: {{interval: 0.25}}
        stop_grace: 5s
        restarts: {{max: 2, backoff: [0.1s, 0.2s]}}
        """)


def steps_run(out: Path) -> list[tuple[str, int]]:
    return [(attempt, int(step)) for attempt, step in
            (line.split() for line in (out / "steps.log").read_text().splitlines())]


@pytest.mark.slow
def test_a_rank_aborting_after_the_last_step_is_finished_never_relaunched(tmp_path, state_dir):
    recipe, out = torchrun_recipe(tmp_path), tmp_path / "out"
    result = run_guardrun(recipe, timeout=180)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    evts = events(state_dir)
    [ended] = named(evts, "attempt.ended")     # one attempt: nothing relaunched
    assert (ended["kind"], ended["exit_code"], ended["reached_target"]) == ("success", 1, f"step {MAX_STEPS}/{MAX_STEPS}")
    assert (f"warning: the job reached its target (step {MAX_STEPS}/{MAX_STEPS}), then exited with code 1 "
            "in teardown: not relaunched") in said
    assert "ChildFailedError" in (state_dir / "job" / "attempts" / "1" / "output.log").read_text()
    # the trainer's own record: the target, and no step run twice or past it
    state = json.loads((out / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert (state["global_step"], state["max_steps"]) == (MAX_STEPS, MAX_STEPS)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert steps_run(out) == [("1", step) for step in range(1, MAX_STEPS + 1)]

    # Run it again: said, exit 0, nothing launched (issue 13 §7).
    again = run_guardrun(recipe, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already finished at step {MAX_STEPS} (run 1); use --fresh to start over" in again.stdout
    assert len(named(events(state_dir), "attempt.started")) == 1
    assert steps_run(out) == [("1", step) for step in range(1, MAX_STEPS + 1)]

    # --fresh starts over: the finished run's checkpoints are set aside, never deleted.
    fresh = run_guardrun(recipe, "--fresh", timeout=180)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    aside = named(events(state_dir), "checkpoint.quarantined")
    assert sorted(e["step"] for e in aside) == [2, 4, 6]
    assert all(Path(e["to"]).name.startswith(f"checkpoint-{e['step']}.finished-") and Path(e["to"]).is_dir()
               for e in aside)
    second = (state_dir / "job" / "attempts" / "2" / "output.log").read_text()
    assert "start_step=0 attempt=2" in second
    assert steps_run(out)[MAX_STEPS:] == [("2", step) for step in range(1, MAX_STEPS + 1)]


def test_a_relaunch_never_resumes_a_checkpoint_at_the_target(tmp_path, state_dir):
    """guardrun stopped the job (a limit) after its last checkpoint: the next attempt would
    resume checkpoint-4 of max_steps 4; the run is finished instead (issue 13 §1)."""
    script = tmp_path / "train.py"
    script.write_text(
        "import json, os, pathlib, time\n"
        "d = pathlib.Path('out/checkpoint-4'); d.mkdir(parents=True, exist_ok=True)\n"
        "(d / 'model.safetensors').write_bytes((2).to_bytes(8, 'little') + b'{}')\n"
        "(d / 'trainer_state.json').write_text(json.dumps({'global_step': 4, 'max_steps': 4}))\n"
        "print('step 3/4', flush=True)\n"
        "ballast = bytearray(64 << 20)\n"       # over the limit: guardrun stops it
        "time.sleep(60)\n")
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        python: {sys.executable}
        script: {script}
        checkpoints: {{dir: ./out}}
        limits: {{host_memory: 40MiB}}
        monitor: {{interval: 0.1}}
        stop_grace: 2s
        restarts: {{max: 2, backoff: [0.1s, 0.2s]}}
        ladder: [{{on: [host_oom], env: {{SMALLER: "1"}}}}]
        """)
    result = run_guardrun(recipe, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("the newest checkpoint checkpoint-4 is at the target (step 4/4): the run is finished, "
            "not resumed") in result.stdout
    evts = events(state_dir)
    assert [e["kind"] for e in named(evts, "attempt.ended")] == ["host_oom"]
    assert len(named(evts, "attempt.started")) == 1


def test_zero_attempts_because_of_the_history_says_fresh_forgets_it(tmp_path, state_dir):
    script = tmp_path / "train.py"
    script.write_text("import sys\nprint('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
                      "2.00 GiB', flush=True)\nsys.exit(1)\n")
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        python: {sys.executable}
        script: {script}
        ladder: []
        """)
    first = run_guardrun(recipe)
    assert first.returncode == 1 and "giving up: no rung left in the ladder for cuda_oom" in first.stdout
    again = run_guardrun(recipe)
    assert again.returncode == 1, again.stdout + again.stderr
    assert ("giving up: no rung left in the ladder for cuda_oom, from the 1 failure(s) that earlier runs "
            "of this recipe recorded; nothing was launched: `guardrun run --fresh` forgets them") in again.stdout
    assert len(named(events(state_dir), "attempt.started")) == 1


@pytest.mark.parametrize("command", ["run", "start"])
def test_a_limit_above_the_machines_memory_is_a_recipe_error(tmp_path, state_dir, command):
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        python: {sys.executable}
        script: {JOB}
        limits:
          min_available: 100TiB
        """)
    result = subprocess.run([GUARDRUN, command, str(recipe)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    total = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal:"))) << 10
    assert (f"guardrun: error: {recipe}:6: limits.min_available: 100TiB is not below the machine's memory: "
            f"this machine has {format_bytes(total)} of memory (MemTotal)") in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    journal = state_dir / "job" / "events.jsonl"
    assert not journal.exists() or not named(events(state_dir), "attempt.started")

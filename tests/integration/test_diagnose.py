"""Knowing why it failed, on real subprocesses: root cause on one screen, hangs dumped with
py-spy, success confirmed, and guardrun's own memory under a flood of output."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO
from test_supervise import GUARDRUN, JOBS, events, named, run_guardrun, write_recipe

from guardrun.supervisor.diagnose.stacks import find_py_spy


def test_torchrun_root_cause_comes_from_the_first_ranks_error_file(tmp_path, state_dir):
    recipe = write_recipe(tmp_path, f"""
        launcher: torchrun
        script: {JOBS / 'record_rank1.py'}
        gpus: 2
        restarts: {{max: 3, backoff: [0.1s, 0.2s]}}
        stop_grace: 5s
        """)
    result = run_guardrun(recipe)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "guardrun: root cause: user_error on rank 1 (from error file " in out
    assert "guardrun:   ValueError: config key 'vision_tower' missing on rank 1" in out
    assert "in load_config\nguardrun:       raise ValueError(" in out
    # a ValueError raised by the user's own code is the user's: stopped at once, no second
    # try (issue 13 §3: judged from the frames, rootcause.judged)
    ended = named(events(state_dir), "attempt.ended")
    assert [e["kind"] for e in ended] == ["user_error"]
    assert ended[0]["root_cause"]["rank"] == 1 and ended[0]["root_cause"]["exception"] == "ValueError"
    ranks = state_dir / "job" / "attempts" / "1" / "ranks"
    assert sorted(p.parent.name for p in ranks.glob("*/attempt_0/*/stdout.log")) == ["0", "1"]
    assert "rank 1 starting" in next(ranks.glob("*/attempt_0/1/stdout.log")).read_text()
    status = subprocess.run([GUARDRUN, "status", "job"], capture_output=True, text=True, timeout=30)
    assert "  root cause: user_error on rank 1 (from error file" in status.stdout
    assert "    ValueError: config key 'vision_tower' missing on rank 1" in status.stdout


def test_python_job_leaves_its_error_file_in_the_attempt_folder(tmp_path, state_dir):
    (tmp_path / "train.py").write_text(textwrap.dedent("""\
        from torch.distributed.elastic.multiprocessing.errors import record

        @record
        def main():
            raise FileNotFoundError(2, "No such file or directory", "/data/llava_v1_5_mix665k.json")

        main()
        """))
    recipe = write_recipe(tmp_path, "launcher: python\nscript: train.py\n")
    result = run_guardrun(recipe)
    assert result.returncode == 1
    assert "root cause: user_error (from error file" in result.stdout
    assert (state_dir / "job" / "attempts" / "1" / "error.json").is_file()
    assert "user error, not retried" in result.stdout


@pytest.mark.skipif(find_py_spy() is None, reason="py-spy is not installed (the diagnosis extra)")
def test_a_hung_job_is_dumped_stopped_and_restarted_on_the_same_rung(tmp_path, state_dir):
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        script: {JOBS / 'sleep_forever.py'}
        limits: {{hang_after: 2s}}
        monitor: {{interval: 0.2}}
        restarts: {{max: 1, backoff: [0.1s, 0.2s]}}
        stop_grace: 2s
        """)
    result = run_guardrun(recipe)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert out.count("ended: hang (no output and no checkpoint activity for 2s (hang_after 2s))") == 2
    assert "giving up: restarts used up (1)" in out
    evts = events(state_dir)
    starts = named(evts, "attempt.started")
    assert [s["rung"] for s in starts] == [0, 0]
    [dumped, _] = named(evts, "stacks.dumped")
    [pid] = dumped["ok"]
    stack = (state_dir / "job" / "attempts" / "1" / "stacks" / f"{pid}.txt").read_text()
    assert "wait_forever (sleep_forever.py:9)" in stack
    # detection latency: hang_after plus at most one interval and the dump
    detected = named(evts, "hang.detected")[0]
    assert 2.0 <= detected["silent_for"] <= 2.0 + 0.2 + 0.5


def test_a_hang_without_py_spy_is_noted_and_still_stopped(tmp_path, state_dir, monkeypatch):
    monkeypatch.setenv("GUARDRUN_PY_SPY", "")
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        script: {JOBS / 'sleep_forever.py'}
        limits: {{hang_after: 1s}}
        monitor: {{interval: 0.2}}
        restarts: {{max: 0}}
        stop_grace: 2s
        """)
    result = run_guardrun(recipe)
    assert result.returncode == 1
    assert "hang: no py-spy to dump the stacks with (pip install py-spy; in a guardrun clone: pip install '.[diagnosis]')" in result.stdout
    [skipped] = named(events(state_dir), "stacks.skipped")
    assert len(skipped["pids"]) == 1
    assert not (state_dir / "job" / "attempts" / "1" / "stacks").exists()


@pytest.mark.parametrize("prints,code,kind", [
    ("Training finished.", 0, "success"),
    ("Exception in training loop, continuing to exit", 1, "unknown"),
])
def test_exit_0_counts_only_with_the_success_evidence(tmp_path, state_dir, prints, code, kind):
    (tmp_path / "train.py").write_text(f"print({prints!r})\n")
    recipe = write_recipe(tmp_path, """
        launcher: python
        script: train.py
        success: {regex: 'Training finished'}
        restarts: {max: 0}
        """)
    result = run_guardrun(recipe)
    assert result.returncode == code, result.stdout
    [ended] = named(events(state_dir), "attempt.ended")
    assert ended["kind"] == kind
    if kind == "unknown":
        assert ended["evidence"] == "exit 0 without the success evidence: no line matched success.regex " \
                                    "'Training finished'"


def peak_run(tmp_path: Path, job_args: str, name: str) -> tuple[subprocess.CompletedProcess, int]:
    folder = tmp_path / name
    folder.mkdir()
    recipe = write_recipe(folder, f"""
        name: {name}
        launcher: python
        script: {JOBS / 'flood.py'}
        args: [{job_args}]
        restarts: {{max: 0}}
        """)
    result = subprocess.run([sys.executable, str(JOBS / "peak_rss.py"), "run", str(recipe)],
                            capture_output=True, timeout=300)
    peak = int(re.search(rb"GUARDRUN_PEAK_RSS_KIB=(\d+)", result.stderr).group(1))
    return result, peak


def test_a_flood_of_output_does_not_grow_guardrun(tmp_path, state_dir):
    """A 10 MB line and 500k short lines: guardrun's peak RSS stays within a few MB of a quiet run."""
    _, quiet = peak_run(tmp_path, '"0"', "quiet")
    result, flooded = peak_run(tmp_path, '"500000"', "flood")
    assert result.returncode == 0, result.stderr[-2000:]
    assert b"[1] flood done" in result.stdout
    log = state_dir / "flood" / "attempts" / "1" / "output.log"
    with open(log, "rb") as handle:
        first = handle.readline()
    assert len(first) < 70_000 and first.rstrip().endswith("…[cut]".encode())
    assert (flooded - quiet) < 8 * 1024, f"peak RSS {quiet} KiB quiet, {flooded} KiB flooded"


@pytest.mark.slow
def test_nan_loss_rolls_back_to_a_checkpoint_before_the_nan_and_halves_the_lr(tmp_path, state_dir):
    """The real HF Trainer: NaN from step 12 while lr > 1e-4; guardrun waits nan_patience logged
    steps, stops, sets the checkpoints from the NaN on aside and resumes at half the lr."""
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        script: {REPO / 'tests' / 'trainers' / 'hf_lora_train.py'}
        args: {{output_dir: ./out, use_cpu: true, max_steps: 20, save_steps: 5, logging_steps: 1,
                report_to: none, nan_at_step: 12, nan_lr_above: 1.0e-4, step_seconds: 0.3,
                num_samples: 256}}
        lr: {{value: 2.0e-4}}
        checkpoints: {{dir: ./out}}
        nan_patience: 5
        restarts: {{max: 2, backoff: [0.1s, 0.2s]}}
        stop_grace: 10s
        """)
    result = run_guardrun(recipe, timeout=400)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    ended = named(events(state_dir), "attempt.ended")
    assert [e["kind"] for e in ended] == ["nan_loss", "success"]
    assert ended[0]["step"] in (11, 12) and "'grad_norm': 'nan'" in ended[0]["evidence"]
    started = named(events(state_dir), "attempt.started")
    assert started[1]["resume_from"].endswith("/out/checkpoint-10") and started[1]["lr"] == 1.0e-4
    aside = list((tmp_path / "out" / "guardrun-quarantine").glob("checkpoint-15.nan-*"))
    assert len(aside) == 1
    # the trainer's own record: it finished, and every step after the rollback is finite
    state = json.loads((tmp_path / "out" / "checkpoint-20" / "trainer_state.json").read_text())
    assert state["global_step"] == 20
    steps = {entry["step"]: entry for entry in state["log_history"] if "grad_norm" in entry}
    assert sorted(steps) == list(range(1, 21))
    assert all(isinstance(steps[s]["grad_norm"], float) and steps[s]["grad_norm"] == steps[s]["grad_norm"]
               for s in range(11, 21))
    # the halved lr really applied: HF restores scheduler.pt, which guardrun rescaled
    # (the original kept beside it); the linear schedule of attempt 1, extended, doubles it
    first = {s: steps[s]["learning_rate"] for s in (1, 9)}
    slope = (first[9] - first[1]) / 8
    for s in range(12, 21):
        assert steps[s]["learning_rate"] == pytest.approx(0.5 * (first[1] + slope * (s - 1)), rel=1e-6), s
    assert (tmp_path / "out" / "checkpoint-10" / "scheduler.pt.guardrun-orig").is_file()

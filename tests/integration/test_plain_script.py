"""A plain argparse script under guardrun's default ladder (issue 13 §2).

Before: a plain script that crossed the host-memory limit was relaunched with
`--dataloader_num_workers 0` (a cuda_oom with `--gradient_checkpointing True`), argparse
ended it with `unrecognized arguments`, and guardrun reported a user error. Now a rung
passes only flags the recipe says the script takes; when none is left guardrun says why.
Judged from the job's own record (tests/jobs/plain_train.py) and guardrun's exit code.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from test_supervise import JOBS, run_guardrun, write_recipe

PLAIN = str(JOBS / "plain_train.py")


def attempts(record: Path) -> list[dict]:
    """The job's own lines: one `started` per attempt, then how it ended."""
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_plain_script_over_the_host_limit_is_never_given_hf_flags(tmp_path, state_dir):
    record = tmp_path / "record.jsonl"
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        python: {sys.executable}
        script: {PLAIN}
        args: {{steps: 400, grow_mb: 8, step_seconds: 0.02, record: {record}}}
        limits: {{host_memory: 200MiB}}
        monitor: {{interval: 0.1}}
        stop_grace: 5s
        """)
    result = run_guardrun(recipe)
    out = result.stdout + result.stderr
    assert "unrecognized arguments" not in out and "user error" not in out
    assert result.returncode == 1, out
    # one rank, no `batch:`, a plain script: no rung can change this job
    assert "giving up: no rung left in the ladder for host_oom" in out
    assert [a["end"] for a in attempts(record)] == ["started"]


def cuda_oom_recipe(tmp_path: Path, record: Path, gpu_budget_mb: int, per_device: int) -> Path:
    """The plain script with its own batch flags, hitting its (pretend) GPU budget above
    `gpu_budget_mb` of micro-batch memory (8 MiB a sample)."""
    return write_recipe(tmp_path, f"""
        launcher: python
        python: {sys.executable}
        script: {PLAIN}
        args: {{steps: 3, mb_per_sample: 8, gpu_budget_mb: {gpu_budget_mb}, record: {record}}}
        batch: {{per_device: {per_device}, grad_accum: 1, per_device_arg: --batch_size, grad_accum_arg: --accum}}
        restarts: {{max: 4, backoff: [0.1s, 0.1s]}}
        """)


def test_plain_script_cuda_oom_is_relaunched_with_its_own_flags_until_it_fits(tmp_path, state_dir):
    record = tmp_path / "record.jsonl"
    result = run_guardrun(cuda_oom_recipe(tmp_path, record, gpu_budget_mb=8, per_device=4))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "unrecognized arguments" not in out
    runs = attempts(record)
    # micro-batch halved twice, the global batch (4) kept through the script's own --accum
    assert [(a["batch_size"], a["accum"], a["end"]) for a in runs] == [
        (4, 1, "started"), (4, 1, "cuda_oom"), (2, 2, "started"), (2, 2, "cuda_oom"),
        (1, 4, "started"), (1, 4, "finished")]
    assert not any("--gradient_checkpointing" in a["argv"] for a in runs)


def test_micro_batch_already_1_gives_up_saying_no_rung_changes_anything(tmp_path, state_dir):
    record = tmp_path / "record.jsonl"
    result = run_guardrun(cuda_oom_recipe(tmp_path, record, gpu_budget_mb=4, per_device=2))
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert ("giving up: no rung left that changes anything for cuda_oom: rung 2 (batch halve) "
            "relaunches rung 1, which already failed (the micro-batch is already 1)") in out
    # the same configuration is never run twice
    assert [(a["batch_size"], a["end"]) for a in attempts(record)] == [
        (2, "started"), (2, "cuda_oom"), (1, "started"), (1, "cuda_oom")]


def test_a_tool_that_ignores_its_rank_count_is_not_relaunched_with_fewer_again(tmp_path, state_dir):
    """`launcher: command` with `ranks_env`, but the tool runs its own 2 ranks: the gpus rung's
    attempt shows 2 ranks again in its output, and guardrun gives up saying so (issue 13 §6)."""
    record = tmp_path / "record.jsonl"
    recipe = write_recipe(tmp_path, f"""
        launcher: command
        command: [{sys.executable}, {PLAIN}, --world_size, "2"]
        args: {{steps: 400, grow_mb: 8, step_seconds: 0.02, record: {record}}}
        ranks_env: NPROC_PER_NODE
        gpus: 2
        limits: {{host_memory: 200MiB}}
        monitor: {{interval: 0.1}}
        restarts: {{max: 4, backoff: [0.1s, 0.1s]}}
        """)
    result = run_guardrun(recipe)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert ("giving up: no rung left that changes anything for host_oom: attempt 2 ran 2 rank(s) when "
            "asked for 1: the tool ignores the rank count") in out
    assert [a["end"] for a in attempts(record)] == ["started", "started"]


def test_a_rejected_flag_a_rung_added_is_said_to_be_guardruns(tmp_path, state_dir):
    """Declared `trainer: hf` wrongly: the rung's --gradient_checkpointing is rejected; the give-up
    names the rung and the fix instead of blaming the script alone."""
    record = tmp_path / "record.jsonl"
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        python: {sys.executable}
        script: {PLAIN}
        trainer: hf
        args: {{steps: 3, mb_per_sample: 8, gpu_budget_mb: 4, record: {record}}}
        batch: {{per_device: 2, grad_accum: 1, per_device_arg: --batch_size, grad_accum_arg: --accum}}
        restarts: {{max: 4, backoff: [0.1s, 0.1s]}}
        """)
    result = run_guardrun(recipe)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert ("unrecognized arguments: --gradient_checkpointing True (--gradient_checkpointing was added by "
            "rung 3, and the script does not take it: set `trainer: plain` in the recipe") in out
    assert [a["end"] for a in attempts(record)] == ["started", "cuda_oom", "started", "cuda_oom"]

"""Acceptance: guardrun degrades and resumes a real Hugging Face Trainer (PEFT LoRA, CPU).

Each test runs `guardrun run` on tests/trainers/hf_lora_train.py and judges the outcome by
what the user would look at: guardrun's exit code and journal, the trainer's own start
line (`[hf_lora_train] world_size=... per_device=... grad_accum=... resume_from=...`) and
the trainer_state.json of its final checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import REPO, TAG, wait_until

from guardrun.supervisor.watch.proctree import environ_pids

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
TRAINER = REPO / "tests" / "trainers" / "hf_lora_train.py"
DS_ZERO3 = REPO / "tests" / "trainers" / "ds_zero3.json"

pytestmark = pytest.mark.slow


def recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def journal(state_dir: Path, event: str) -> list[dict]:
    lines = (state_dir / "job" / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == f"guardrun.{event}"]


def trainer_line(state_dir: Path, attempt: int) -> dict[str, str]:
    """The trainer's own account of how attempt N was launched."""
    text = (state_dir / "job" / "attempts" / str(attempt) / "output.log").read_text()
    match = re.search(r"\[hf_lora_train\] (world_size=.*)", text)
    assert match, text[-3000:]
    return dict(pair.split("=", 1) for pair in match.group(1).split())


def final_state(out: Path, step: int) -> dict:
    return json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())


def logged_steps(state: dict) -> list[int]:
    return sorted({e["step"] for e in state["log_history"] if "loss" in e})


def run(path: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([GUARDRUN, "run", str(path)], capture_output=True, text=True, timeout=timeout)


def test_torchrun_host_oom_drops_to_one_rank_and_resumes(tmp_path, state_dir):
    # One LoRA rank is ~290 MiB and the torchrun agent ~150 MiB; each rank's ballast ramps
    # to 400 MiB by step 8, so 2 ranks cross 1.2 GiB near step 5, one rank never does.
    result = run(host_oom_at_two_ranks(tmp_path, "torchrun"), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert_one_rank_resumed_and_finished(state_dir, tmp_path / "out")


def host_oom_at_two_ranks(tmp_path: Path, launcher: str) -> Path:
    """2 ranks whose ballast crosses a 1.2 GiB tree limit near step 5; `gpus: 1` on host_oom.
    Shared by the launchers that start ranks themselves (torchrun, accelerate)."""
    return recipe(tmp_path, f"""
        launcher: {launcher}
        script: {TRAINER}
        gpus: 2
        args: {{output_dir: ./out, use_cpu: true, max_steps: 12, save_steps: 2, logging_steps: 1,
                report_to: none, ballast_mb: 400, ballast_ramp_steps: 8, step_seconds: 0.3,
                num_samples: 256}}
        batch: {{per_device: 4, grad_accum: 1}}
        checkpoints: {{dir: ./out}}
        limits: {{host_memory: 1.2GiB}}
        monitor: {{interval: 0.25}}
        stop_grace: 10s
        restarts: {{max: 2, backoff: [0.1s, 0.2s]}}
        ladder: [{{on: [host_oom], gpus: 1}}]
        """)


def assert_one_rank_resumed_and_finished(state_dir: Path, out: Path) -> None:
    """host_oom at 2 ranks, then 1 rank with doubled accumulation (global batch 8 kept),
    resumed from a checkpoint of attempt 1, every step 1..12 logged once."""
    assert [e["kind"] for e in journal(state_dir, "attempt.ended")] == ["host_oom", "success"]
    started = journal(state_dir, "attempt.started")
    resumed = started[1]["resume_from"]
    assert resumed and re.search(r"/out/checkpoint-\d+$", resumed), resumed
    first, second = trainer_line(state_dir, 1), trainer_line(state_dir, 2)
    assert (first["world_size"], first["grad_accum"], first["global_batch"]) == ("2", "1", "8")
    assert (second["world_size"], second["per_device"], second["grad_accum"], second["global_batch"]) \
        == ("1", "4", "2", "8")
    assert second["resume_from"] == resumed
    state = final_state(out, 12)
    assert state["global_step"] == 12 and logged_steps(state) == list(range(1, 13))


def test_death_during_save_sets_the_half_checkpoint_aside_and_resumes_before_it(tmp_path, state_dir):
    path = recipe(tmp_path, f"""
        launcher: python
        script: {TRAINER}
        args: {{output_dir: ./out, use_cpu: true, max_steps: 8, save_steps: 2, logging_steps: 1,
                report_to: none, stall_in_save_at: 4, num_samples: 256}}
        batch: {{per_device: 4, grad_accum: 1}}
        checkpoints: {{dir: ./out}}
        monitor: {{interval: 0.25}}
        restarts: {{max: 2, backoff: [0.1s, 0.2s]}}
        ladder: [{{on: [save_failed], save_only_model: true}}]
        """)
    guard = subprocess.Popen([GUARDRUN, "run", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    stalled = threading.Event()

    def read():
        for line in guard.stdout:
            lines.append(line)
            match = re.search(r"stalling in save of checkpoint-4 .*\(pid (\d+)\)", line)
            if match:
                # what the kernel's OOM killer does to a save that ran out of memory
                os.kill(int(match.group(1)), signal.SIGKILL)
                stalled.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert stalled.wait(300), "".join(lines)[-3000:]
        assert guard.wait(300) == 0, "".join(lines)[-4000:]
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
        reader.join(10)
    out = "".join(lines)
    assert [e["kind"] for e in journal(state_dir, "attempt.ended")] == ["save_failed", "success"]
    [aside] = journal(state_dir, "checkpoint.quarantined")
    assert aside["step"] == 4 and "trainer_state.json" in aside["why"]
    kept = Path(aside["to"])
    assert kept.parent == tmp_path / "out" / "guardrun-quarantine" and kept.name.startswith("checkpoint-4.incomplete-")
    assert (kept / "adapter_model.safetensors").stat().st_size > 0   # set aside, never deleted
    assert "set aside checkpoint-4" in out
    second = trainer_line(state_dir, 2)
    assert second["resume_from"] == str(tmp_path / "out" / "checkpoint-2")
    state = final_state(tmp_path / "out", 8)
    assert state["global_step"] == 8 and logged_steps(state) == list(range(1, 9))
    # the save_failed rung's lighter saves: no optimizer state after the resume
    assert not (tmp_path / "out" / "checkpoint-8" / "optimizer.pt").exists()
    assert (tmp_path / "out" / "checkpoint-2" / "optimizer.pt").exists()


def test_cuda_oom_halves_the_micro_batch_and_keeps_the_global_batch(tmp_path, state_dir):
    path = recipe(tmp_path, f"""
        launcher: python
        script: {TRAINER}
        args: {{output_dir: ./out, use_cpu: true, max_steps: 4, save_steps: 2, logging_steps: 1,
                report_to: none, oom_above_batch: 2, num_samples: 256}}
        batch: {{per_device: 4, grad_accum: 1}}
        checkpoints: {{dir: ./out}}
        restarts: {{max: 2, backoff: [0.1s, 0.2s]}}
        """)   # no ladder: the default one for cuda_oom halves the batch first
    result = run(path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    [oom, done] = journal(state_dir, "attempt.ended")
    assert (oom["kind"], done["kind"]) == ("cuda_oom", "success")
    assert "CUDA out of memory" in oom["evidence"]
    second = trainer_line(state_dir, 2)
    assert (second["per_device"], second["grad_accum"], second["global_batch"]) == ("2", "2", "4")
    state = final_state(tmp_path / "out", 4)
    assert state["global_step"] == 4 and state["train_batch_size"] == 2


def test_deepspeed_zero3_two_ranks_to_one_through_a_universal_checkpoint(tmp_path, state_dir):
    """The kernel's OOM killer takes rank 1 (SIGKILL) after checkpoint-4 is saved by 2 ranks:
    host_oom, one rank, a ZeRO-3 checkpoint of 2 ranks converted to a universal one."""
    # A real SIGKILL rather than a memory race: a 1-rank DeepSpeed tree on CPU is not much
    # smaller than a 2-rank one, so a limit between them was timing-dependent here.
    path = recipe(tmp_path, f"""
        launcher: deepspeed
        script: {TRAINER}
        gpus: 2
        args: {{output_dir: ./out, max_steps: 10, save_steps: 2, logging_steps: 1, report_to: none,
                step_seconds: 0.5, num_samples: 256}}
        batch: {{per_device: 2, grad_accum: 1}}
        deepspeed: {{config: {DS_ZERO3}}}
        checkpoints: {{dir: ./out}}
        stop_grace: 20s
        restarts: {{max: 2, backoff: [0.1s, 0.2s]}}
        ladder: [{{on: [host_oom], gpus: 1}}]
        """)
    guard = subprocess.Popen([GUARDRUN, "run", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    drained = threading.Thread(target=guard.stdout.read, daemon=True)  # keep the pipe flowing
    drained.start()
    try:
        saved = tmp_path / "out" / "checkpoint-4" / "trainer_state.json"
        wait_until(saved.exists, timeout=300, interval=0.1, what="checkpoint-4 of attempt 1")
        rank1 = wait_until(lambda: _rank_pid(local_rank=1, attempt=1), timeout=30, what="rank 1")
        os.kill(rank1, signal.SIGKILL)
        assert guard.wait(600) == 0, f"guardrun failed: see {state_dir / 'job' / 'attempts'}"
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
        drained.join(10)
    [killed, done] = journal(state_dir, "attempt.ended")
    assert (killed["kind"], done["kind"]) == ("host_oom", "success"), killed["evidence"]
    assert "-9" in killed["evidence"]
    [converted] = journal(state_dir, "checkpoint.converted")
    assert converted["exit_code"] == 0
    tag = Path(converted["tag"])
    assert re.fullmatch(r"global_step\d+", tag.name) and int(tag.name[11:]) >= 4
    assert (tag.parent / "latest_universal").read_text().strip() == f"{tag.name}_universal"
    started = journal(state_dir, "attempt.started")
    assert started[1]["load_universal"] is True and started[1]["resume_from"] == str(tag.parent)
    derived = json.loads((state_dir / "job" / "attempts" / "2" / "deepspeed.json").read_text())
    assert derived["checkpoint"]["load_universal"] is True
    second = trainer_line(state_dir, 2)
    assert (second["world_size"], second["grad_accum"], second["global_batch"]) == ("1", "2", "4")
    assert second["resume_from"] == str(tag.parent)
    state = final_state(tmp_path / "out", 10)
    assert state["global_step"] == 10 and logged_steps(state) == list(range(1, 11))


def _rank_pid(local_rank: int, attempt: int) -> int | None:
    """The pid of the job's rank `local_rank` in `attempt`, from the processes' own environment."""
    needles = {f"LOCAL_RANK={local_rank}".encode(), f"GUARDRUN_ATTEMPT={attempt}".encode(),
               f"{TAG}={os.environ[TAG]}".encode()}
    found = environ_pids(needles)
    return min(found) if found else None

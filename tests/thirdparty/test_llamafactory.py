"""Real LLaMA-Factory 0.9.5 under guardrun: LoRA SFT of a tiny Llama on CPU, nothing downloaded.

Each case is judged by what LLaMA-Factory itself left (its checkpoints' trainer_state.json,
trainer_log.jsonl, its log lines) and by guardrun's exit code and journal. The venv is
`make test`'s .venv-lf (tests/thirdparty/build_lf_venv.sh); without it the cases skip, saying why.

Test-only shim: tests/thirdparty/lf_shim (on the job's PYTHONPATH) adds hf_lora_train's ballast
and step sleep, and a stall in one save, to LLaMA-Factory's Trainer; what LLaMA-Factory computes
and saves is its own. No case resumes on 2 ranks: with transformers 5.6 every 2-rank CPU resume
fails upstream in torch.load(optimizer.pt, map_location='cpu:0') (FIELD_NOTES), so the host-OOM
case resumes on 1 rank, as its ladder says, and the save death runs on 1 process.
Measured here (2 cores, shared): the 5 cases take ~90 s together, the tiny model ~4 s.
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from helpers_extbuild import events
from lf_helpers import (attempt_log, build_tiny, lf_config, lf_launch, lf_recipe, run_guardrun,
                        trainer_log, trainer_state, venv_or_skip)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    venv_or_skip()
    return build_tiny(tmp_path_factory.mktemp("lf-tiny"))


def kinds(state_dir: Path) -> list[str]:
    return [e["kind"] for e in events(state_dir, "attempt.ended")]


def test_clean_two_rank_run_finishes(tmp_path, state_dir, tiny):
    config = lf_config(tmp_path, tiny, max_steps=10, save_steps=5)
    code, out = run_guardrun(lf_recipe(tmp_path, tiny, config, ranks=2), timeout=300)
    assert code == 0, out[-4000:]
    assert kinds(state_dir) == ["success"]
    assert lf_launch(state_dir, 1) == {"world_size": 2, "grad_accum": 1, "global_batch": 4}
    assert trainer_log(tmp_path) == list(range(1, 11))
    assert trainer_state(tmp_path, 10)["global_step"] == 10
    assert not (tmp_path / "out" / "checkpoint-11").exists()


def test_host_oom_at_two_ranks_resumes_on_one_and_finishes(tmp_path, state_dir, tiny):
    # Measured here (guardrun's figure, PSS): the 2-rank tree holds ~1.2 GiB once training starts,
    # the 1-rank tree ~0.8 GiB. Each rank's ballast (lf_shim) grows 40 MiB a step up to 400 MiB
    # (step 10): two ranks cross 1680 MiB near step 6, between the saves of checkpoint-4 and -8
    # (at 1.6 GiB they crossed at step 5 or 6, once while saving checkpoint-6: a save_failed);
    # one rank peaks near 1.2 GiB.
    config = lf_config(tmp_path, tiny, max_steps=12, save_steps=4)
    recipe = lf_recipe(tmp_path, tiny, config, ranks=2, env={
        "LF_TEST_BALLAST_MB": "400", "LF_TEST_BALLAST_RAMP_STEPS": "10", "LF_TEST_STEP_SECONDS": "0.3"},
        extra="""\
        limits: {host_memory: 1680MiB}
        ladder: [{on: [host_oom], gpus: 1}]
        """)
    code, out = run_guardrun(recipe, timeout=420)
    assert code == 0, out[-4000:]
    assert kinds(state_dir) == ["host_oom", "success"], out[-4000:]
    resumed = events(state_dir, "attempt.started")[1]["resume_from"]
    assert resumed and re.search(r"/out/checkpoint-\d+$", resumed), resumed
    step = int(resumed.rsplit("-", 1)[1])
    assert f"Loading model from {resumed}." in attempt_log(state_dir, 2)     # the Trainer's own line
    # the global batch kept: 2 ranks x 2 x 1, then 1 rank x 2 x 2
    assert lf_launch(state_dir, 1) == {"world_size": 2, "grad_accum": 1, "global_batch": 4}
    assert lf_launch(state_dir, 2) == {"world_size": 1, "grad_accum": 2, "global_batch": 4}
    logged = trainer_log(tmp_path)
    cut = len(logged) - (12 - step)
    assert logged[cut:] == list(range(step + 1, 13)), logged   # attempt 2 went on from the checkpoint
    assert logged[:cut] == list(range(1, cut + 1)) and cut >= step, logged
    state = trainer_state(tmp_path, 12)
    assert state["global_step"] == 12 and state["max_steps"] == 12
    assert not (tmp_path / "out" / "checkpoint-13").exists()


def test_death_during_a_save_sets_it_aside_and_resumes_from_the_one_before(tmp_path, state_dir, tiny):
    config = lf_config(tmp_path, tiny, max_steps=8, save_steps=2)
    recipe = lf_recipe(tmp_path, tiny, config, ranks=1, env={"LF_TEST_STALL_SAVE_AT": "4"})
    killed: list[int] = []

    def kill_the_saver(line: str) -> None:
        match = re.search(r"\[lf_shim\] stalling in save of checkpoint-4 \(pid (\d+)\)", line)
        if match and not killed:
            # what the kernel's OOM killer does to a save that ran out of memory
            os.kill(int(match.group(1)), signal.SIGKILL)
            killed.append(int(match.group(1)))

    code, out = run_guardrun(recipe, timeout=300, on_line=kill_the_saver)
    assert killed, out[-4000:]
    assert code == 0, out[-4000:]
    assert kinds(state_dir) == ["save_failed", "success"], out[-4000:]
    [aside] = events(state_dir, "checkpoint.quarantined")
    assert aside["step"] == 4 and "trainer_state.json" in aside["why"]
    kept = Path(aside["to"])
    assert kept.parent == tmp_path / "out" / "guardrun-quarantine", kept
    assert (kept / "adapter_model.safetensors").stat().st_size > 0   # set aside, never deleted
    assert not (kept / "trainer_state.json").exists()
    before = tmp_path / "out" / "checkpoint-2"
    assert events(state_dir, "attempt.started")[1]["resume_from"] == str(before)
    assert f"Loading model from {before}." in attempt_log(state_dir, 2)
    # attempt 1 logged steps 1-4 and died saving checkpoint-4 (LLaMA-Factory appends the log from
    # a thread: step 4's line may not be out yet); attempt 2 went on from step 2
    logged = trainer_log(tmp_path)
    assert logged[-6:] == [3, 4, 5, 6, 7, 8] and logged[:-6] in ([1, 2, 3, 4], [1, 2, 3]), logged
    state = trainer_state(tmp_path, 8)
    assert state["global_step"] == 8
    assert trainer_state(tmp_path, 4)["global_step"] == 4       # the new checkpoint-4 is whole


def test_a_misspelt_config_key_is_a_user_error_and_not_retried(tmp_path, state_dir, tiny):
    config = lf_config(tmp_path, tiny, per_device_train_batch_size=None, per_device_train_batchsize=2)
    code, out = run_guardrun(lf_recipe(tmp_path, tiny, config, ranks=1), timeout=180)
    assert code == 1, out[-4000:]
    assert kinds(state_dir) == ["user_error"], out[-4000:]
    assert "Some keys are not used by the HfArgumentParser" in attempt_log(state_dir, 1)
    assert "per_device_train_batchsize" in out               # the root cause names the key
    assert not (tmp_path / "out" / "trainer_log.jsonl").exists()


def test_a_missing_dataset_is_a_user_error_and_not_retried(tmp_path, state_dir, tiny):
    # two ranks through LLaMA-Factory's own torchrun: both fail, torchrun and the cli echo it
    config = lf_config(tmp_path, tiny, dataset="no_such_dataset")
    code, out = run_guardrun(lf_recipe(tmp_path, tiny, config, ranks=2), timeout=180)
    assert code == 1, out[-4000:]
    assert kinds(state_dir) == ["user_error"], out[-4000:]
    assert "Undefined dataset no_such_dataset in dataset_info.json" in attempt_log(state_dir, 1)
    assert "no_such_dataset" in out
    assert not (tmp_path / "out" / "trainer_log.jsonl").exists()

"""Captured real outputs -> the failure kind guardrun records (issue 13 §3).

Each file in tests/data/outputs (commands in its README) goes through what a real attempt
uses: the OutputReader (parse_line, the traceback tracker, progress) and policy.classify.
The kind decides what happens next (user_error stops at once, transient and unknown are
retried), so this table is what a user sees of guardrun's judgment on their trainer.

Before issue 13: the torch.save failure was `transient` (rank 1's gloo echo), both FileBaton
failures `user_error`, LLaMA-Factory's missing dataset and missing file `unknown`.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from guardrun.launcher.failures import Kind
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.diagnose.output import OutputReader
from guardrun.supervisor.run.policy import AttemptEnd, classify

OUTPUTS = Path(__file__).resolve().parent.parent / "data" / "outputs"

# file -> (exit code, the kind recorded, text in its evidence)
TABLE = {
    # a plain torchrun script: rank 0 raised RuntimeError in torch.save at step 5; rank 1's
    # "Connection closed by peer ... typically caused by a remote worker crashing" is the echo
    "real_torchrun_save_error_gloo_echo.txt": (1, Kind.UNKNOWN, "[rank0]: RuntimeError: Parent directory"),
    # torch's own build machinery, not the user's files: retried
    "real_torch_file_baton_lock_removed.txt": (1, Kind.TRANSIENT, "FileNotFoundError: [Errno 2]"),
    "real_torch_file_baton_waiter_import.txt": (1, Kind.TRANSIENT, "i3_tiny.so: cannot open shared object file"),
    # LLaMA-Factory 0.9.5's config and data errors (1 process, and 2 ranks via FORCE_TORCHRUN)
    "real_llamafactory_bad_key.txt": (1, Kind.USER_ERROR, "Some keys are not used by the HfArgumentParser"),
    "real_llamafactory_bad_key_torchrun.txt": (1, Kind.USER_ERROR, "Some keys are not used by the HfArgumentParser"),
    "real_llamafactory_undefined_dataset.txt": (1, Kind.USER_ERROR, "Undefined dataset no_such_set in dataset_info"),
    "real_llamafactory_undefined_dataset_torchrun.txt": (1, Kind.USER_ERROR, "Undefined dataset no_such_set"),
    "real_llamafactory_file_not_found.txt": (1, Kind.USER_ERROR, "tiny_alpaca_v2.json not found."),
    # the user's own code and files
    "real_python_file_not_found.txt": (1, Kind.USER_ERROR, "FileNotFoundError: [Errno 2]"),
    "real_python_module_not_found.txt": (1, Kind.USER_ERROR, "No module named 'flash_attn_nonexistent'"),
    "real_torchrun_record_tee.txt": (1, Kind.USER_ERROR, "[default1]:ValueError: boom on rank 1"),
    "real_torchrun_dist_modnotfound.txt": (1, Kind.USER_ERROR, "[rank1]: ModuleNotFoundError"),
    "real_hf_trainer_bad_flag.txt": (1, Kind.USER_ERROR, "not used by the HfArgumentParser"),
    "real_hf_trainer_resume_missing.txt": (1, Kind.USER_ERROR, "Can't find a valid checkpoint at"),
    "real_argparse_unrecognized.txt": (2, Kind.USER_ERROR, "unrecognized arguments: --lora_r 8"),
    # the machine
    "real_torchrun_sigkill.txt": (1, Kind.HOST_OOM, "failed (exitcode: -9) local_rank: 1"),
    "real_dataloader_worker_killed.txt": (1, Kind.HOST_OOM, "is killed by signal: Killed"),
    "real_gpu_torchrun_oom_record_tee.txt": (1, Kind.CUDA_OOM, "torch.OutOfMemoryError: CUDA out of memory"),
    "hand_nccl_watchdog_timeout.txt": (1, Kind.TRANSIENT, "Watchdog caught collective operation timeout"),
    "real_gpu_hf_nan_unfiltered.txt": (1, Kind.NAN_LOSS, "'loss': 'nan'"),
}
SUCCEEDED = ("real_lightning_ok.txt", "real_hf_trainer_ok.txt", "real_deepspeed_zero3_ok.txt")


def attempt_end(name: str, exit_code: int, tmp_path: Path) -> AttemptEnd:
    """What run_attempt hands classify, from the captured output."""
    data = (OUTPUTS / name).read_bytes()
    reader = OutputReader(io.BytesIO(data), tmp_path / "output.log", Console(io.StringIO(), quiet=True),
                          "[1] ").start()
    assert reader.join(10)
    progress = reader.progress()
    return AttemptEnd(exit_code=exit_code, events=reader.evidence(), traces=reader.traces(),
                      progressed=progress.step is not None or progress.loss is not None,
                      attempt=1, last_step=progress.step)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_captured_output_is_classified(name, tmp_path):
    exit_code, kind, evidence = TABLE[name]
    failure = classify(attempt_end(name, exit_code, tmp_path))
    assert failure is not None
    assert (failure.kind, evidence in failure.evidence) == (kind, True), failure.evidence


@pytest.mark.parametrize("name", SUCCEEDED)
def test_captured_clean_run_is_no_failure(name, tmp_path):
    assert classify(attempt_end(name, 0, tmp_path)) is None


def test_every_issue_13_capture_is_in_the_table():
    captured = {path.name for path in OUTPUTS.glob("real_*") if any(
        word in path.name for word in ("llamafactory", "file_baton", "save_error", "lightning"))}
    assert captured <= set(TABLE) | set(SUCCEEDED)

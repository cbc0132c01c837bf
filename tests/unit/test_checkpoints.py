"""Checkpoint discovery and validation against files written by the real libraries."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from guardrun.launcher import checkpoints as ck


def hf_checkpoint(root: Path, step: int, *, state: bool = True, adapter: bool = False) -> Path:
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    weights = {"w": torch.ones(64, 64), "b": torch.zeros(64)}
    save_file(weights, path / ("adapter_model.safetensors" if adapter else "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(8)}}}, path / "optimizer.pt")
    torch.save({"python": 1}, path / "rng_state.pth")
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "train_batch_size": 4}))
    return path


def truncate(file: Path, keep: int) -> None:
    with open(file, "r+b") as handle:
        handle.truncate(keep)


def test_complete_checkpoints_are_valid_and_ordered_by_step(tmp_path):
    for step in (10, 5, 100):
        hf_checkpoint(tmp_path, step)
    found = ck.find(tmp_path)
    assert [c.step for c in found] == [5, 10, 100]
    assert all(c.valid for c in found), [c.reason for c in found]
    assert ck.newest_valid(tmp_path).step == 100


def test_save_killed_before_trainer_state_is_invalid(tmp_path):
    hf_checkpoint(tmp_path, 5)
    hf_checkpoint(tmp_path, 10, state=False)
    newest = ck.find(tmp_path)[-1]
    assert not newest.valid
    assert "trainer_state.json" in newest.reason
    assert ck.newest_valid(tmp_path).step == 5


@pytest.mark.parametrize("name,keep,expected", [
    ("model.safetensors", 200, "header promises"),
    ("model.safetensors", 4, "truncated before the header length"),
    ("optimizer.pt", 300, "end-of-central-directory"),
    ("trainer_state.json", 7, "not valid JSON"),
    ("rng_state.pth", 0, "empty file"),
])
def test_truncated_files_are_named_in_the_reason(tmp_path, name, keep, expected):
    path = hf_checkpoint(tmp_path, 7)
    truncate(path / name, keep)
    [found] = ck.find(tmp_path)
    assert not found.valid
    assert found.reason.startswith(name) or name in found.reason
    assert expected in found.reason


def test_peft_adapter_checkpoint_is_valid(tmp_path):
    hf_checkpoint(tmp_path, 3, adapter=True)
    assert ck.find(tmp_path)[0].valid


def test_no_weights_is_invalid(tmp_path):
    path = hf_checkpoint(tmp_path, 3)
    os.unlink(path / "model.safetensors")
    assert "no model or adapter weights" in ck.find(tmp_path)[0].reason


def test_deepspeed_tag_inside_hf_checkpoint(tmp_path):
    path = hf_checkpoint(tmp_path, 4)
    tag = path / "global_step4"
    tag.mkdir()
    for rank in range(2):
        torch.save({"x": rank}, tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
        torch.save({"x": rank}, tag / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    assert not ck.find(tmp_path)[0].valid  # `latest` is written last by rank 0: still missing
    (path / "latest").write_text("global_step4")
    assert ck.find(tmp_path)[0].valid
    assert ck.saved_world_size(tag) == 2
    truncate(tag / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", 100)
    assert "optim_states" in ck.find(tmp_path)[0].reason


def test_custom_pattern_and_unrelated_entries(tmp_path):
    (tmp_path / "step_0012").mkdir()
    (tmp_path / "step_0012" / "model.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "checkpoint-abc").mkdir()
    torch.save({"w": torch.ones(4)}, tmp_path / "model_step_20.pt")
    found = ck.find(tmp_path, pattern=r"(?:model_)?step_(\d+)")
    assert [(c.name, c.valid, c.reason) for c in found] == [
        ("step_0012", False, "model.pt: empty file"), ("model_step_20.pt", True, "")]
    assert ck.find(tmp_path / "missing") == []

"""PyTorch Lightning's checkpoints are found and followed without a recipe regex (issue 13).

The files in tests/data/outputs/lightning_checkpoints are the real ones a 10-step run of
lightning 2.6.6 wrote with `ModelCheckpoint(every_n_train_steps=5, save_top_k=-1)`
(tests/data/outputs/README.md, real_lightning_ok.txt): `epoch=0-step=5.ckpt` and
`epoch=1-step=10.ckpt`, files (torch.save zips), not folders.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from conftest import wait_until
from guardrun.launcher import checkpoints
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.core.context import Context
from guardrun.supervisor.watch.follow import CheckpointFollower

REAL = Path(__file__).resolve().parent.parent / "data" / "outputs" / "lightning_checkpoints"
NAMES = ("epoch=0-step=5.ckpt", "epoch=1-step=10.ckpt")


@pytest.mark.parametrize("name,step", [
    ("epoch=0-step=10.ckpt", 10),
    ("epoch=3-step=1200-val_loss=0.50.ckpt", 1200),   # a metric in the filename template
    ("epoch=0-step=10-v1.ckpt", 10),                  # a name taken twice
    ("last.ckpt", None),                              # save_last: no step in the name
    ("epoch=0-step=x.ckpt", None),
    ("epoch=0-step=10.ckpt.incomplete-20261201", None),  # set aside by guardrun
    ("checkpoint-40", 40),
    ("global_step40", 40),
])
def test_step_of_a_name(name, step):
    assert checkpoints.step_of(name) == step


def test_real_lightning_checkpoints_are_found_valid_and_ordered(tmp_path):
    for name in NAMES:
        shutil.copy(REAL / name, tmp_path / name)
    (tmp_path / "last.ckpt").write_bytes((REAL / NAMES[-1]).read_bytes())
    found = checkpoints.find(tmp_path)
    assert [(c.name, c.step, c.valid) for c in found] == [(NAMES[0], 5, True), (NAMES[1], 10, True)]
    assert checkpoints.newest_valid(tmp_path).name == NAMES[1]


def test_a_truncated_lightning_checkpoint_is_incomplete(tmp_path):
    shutil.copy(REAL / NAMES[0], tmp_path / NAMES[0])
    data = (REAL / NAMES[1]).read_bytes()
    (tmp_path / NAMES[1]).write_bytes(data[:len(data) // 2])   # a save cut off half way
    found = checkpoints.find(tmp_path)
    assert [c.valid for c in found] == [True, False]
    assert "truncated" in found[1].reason
    assert checkpoints.newest_valid(tmp_path).step == 5


def test_the_follower_records_lightning_saves_as_they_land(tmp_path):
    saved: list[tuple[int, float]] = []
    follower = CheckpointFollower(tmp_path, None, Context(
        MonotonicClock(), lambda name, **f: saved.append((f["step"], time.monotonic()))
        if name == "checkpoint.saved" else None, print))
    follower.poll()
    for name in NAMES:
        shutil.copy(REAL / name, tmp_path / name)
        written = time.monotonic()
        step = checkpoints.step_of(name)
        wait_until(lambda step=step: follower.poll().newest is not None and follower.seen.newest.step == step,
                   timeout=5, interval=0.1, what=f"{name} recorded")
        assert saved[-1][0] == step and saved[-1][1] - written <= 2.0
    follower.stop()
    assert [step for step, _ in saved] == [5, 10]

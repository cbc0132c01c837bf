"""Setting checkpoints aside never follows, or writes into, what is not this job's (issue 12 §5).

A checkpoint dir is often shared (a sticky, world-writable scratch folder, a project
volume): anyone can plant `guardrun-quarantine` there before guardrun makes it. Planted
as a symlink it was followed (the user's checkpoints moved into another user's home);
as a file, or with a read-only checkpoint dir, `run` ended in a traceback. Now the folder
is guardrun's own (made 0700, checked by lstat and owner before anything moves), and a
dir that cannot be written resumes from the newest valid checkpoint when the resume path
is passed explicitly, and gives up when the script picks a checkpoint by itself.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers_mount import tmpfs

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
NOBODY = 65534
#: The "trainer": says what it was asked to resume from, and what it sees to pick from.
JOB = """
import os, sys
print("resume:", sys.argv[sys.argv.index("--resume_from_checkpoint") + 1]
      if "--resume_from_checkpoint" in sys.argv else "none", flush=True)
"""


def _safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\0\0\0\0"


def _checkpoints(root: Path) -> tuple[Path, Path]:
    """checkpoint-2, complete, and checkpoint-4, killed before trainer_state.json."""
    made = []
    for step in (2, 4):
        path = root / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "adapter_model.safetensors").write_bytes(_safetensors())
        if step == 2:  # saved with micro-batch 4
            (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "train_batch_size": 4}))
        made.append(path)
    return made[0], made[1]


def _run(tmp_path: Path, ckpt_dir: Path, resume_arg: str = "--resume_from_checkpoint",
         umask: int = 0o022, extra: str = "") -> subprocess.CompletedProcess:
    (tmp_path / "job.py").write_text(JOB)
    recipe = tmp_path / "job.yaml"
    recipe.write_text(textwrap.dedent(f"""
        launcher: python
        script: {tmp_path / 'job.py'}
        checkpoints: {{dir: "{ckpt_dir}", resume_arg: {resume_arg}}}
        ladder: []
        """) + extra)
    return subprocess.run([GUARDRUN, "run", str(recipe)], capture_output=True, text=True, timeout=60,
                          umask=umask)


def _said(result: subprocess.CompletedProcess) -> str:
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    return out


def test_the_quarantine_folder_is_made_0700_whatever_the_umask(tmp_path, state_dir):
    ckpt = tmp_path / "out"
    good, bad = _checkpoints(ckpt)
    result = _run(tmp_path, ckpt, umask=0)
    out = _said(result)
    assert result.returncode == 0, out
    assert f"resume: {good}" in out
    folder = ckpt / "guardrun-quarantine"
    assert stat.S_IMODE(folder.lstat().st_mode) == 0o700
    assert not bad.exists() and [p.name[:13] for p in folder.iterdir()] == ["checkpoint-4."]


def _plant_symlink(ckpt: Path, tmp_path: Path) -> Path:
    elsewhere = tmp_path / "home-of-someone-else"
    elsewhere.mkdir()
    (ckpt / "guardrun-quarantine").symlink_to(elsewhere, target_is_directory=True)
    return elsewhere


def _plant_file(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "guardrun-quarantine").write_text("not a folder")


def _plant_foreign_dir(ckpt: Path, tmp_path: Path) -> Path:
    folder = ckpt / "guardrun-quarantine"
    folder.mkdir(mode=0o777)
    if os.geteuid() != 0:
        pytest.skip("giving a folder to a second uid (nobody, 65534) needs root")
    os.chown(folder, NOBODY, NOBODY)  # a real second uid: `nobody` made it first
    return folder


@pytest.mark.parametrize("plant, problem", [
    (_plant_symlink, "is a symlink"),
    (_plant_file, "is not a directory"),
    (_plant_foreign_dir, f"is owned by uid {NOBODY}"),
], ids=["symlink", "file", "someone-elses-dir"])
def test_a_planted_quarantine_is_refused_by_name_and_nothing_moves(tmp_path, state_dir, plant, problem):
    ckpt = tmp_path / "out"
    good, bad = _checkpoints(ckpt)
    os.chmod(ckpt, 0o1777)  # a shared, sticky scratch dir
    planted = plant(ckpt, tmp_path)
    result = _run(tmp_path, ckpt)
    out = _said(result)
    assert result.returncode == 1, out
    assert f"{ckpt / 'guardrun-quarantine'} {problem}" in out, out
    assert good.is_dir() and bad.is_dir(), "a checkpoint was moved"
    if isinstance(planted, Path):
        assert list(planted.iterdir()) == []
    assert "[1] resume:" not in out, "the job started on a dir whose broken checkpoint it could pick"


@pytest.fixture
def readonly_ckpt(tmp_path):
    """A checkpoint dir on a tmpfs remounted read-only: writes fail even for root (EROFS)."""
    with tmpfs(tmp_path / "out") as ckpt:
        good, bad = _checkpoints(ckpt)
        subprocess.run(["mount", "-o", "remount,ro", str(ckpt)], check=True)
        yield ckpt, good, bad


def test_a_read_only_dir_resumes_the_newest_valid_one_passed_explicitly(tmp_path, state_dir, readonly_ckpt):
    ckpt, good, bad = readonly_ckpt
    result = _run(tmp_path, ckpt)
    out = _said(result)
    assert result.returncode == 0, out
    assert f"resume: {good}" in out
    assert f"could not set aside {bad.name}" in out, out
    assert bad.is_dir()


def test_a_read_only_dir_gives_up_when_the_script_resumes_by_itself(tmp_path, state_dir, readonly_ckpt):
    ckpt, good, bad = readonly_ckpt
    result = _run(tmp_path, ckpt, resume_arg="null")
    out = _said(result)
    assert result.returncode == 1, out
    assert f"could not set aside {bad.name}" in out and "resume_arg: null" in out, out
    assert "[1] resume:" not in out, "the job started where it could pick the broken checkpoint"


def test_a_read_only_checkpoint_whose_batch_cannot_be_rewritten_is_resumed_with_a_warning(
        tmp_path, state_dir, readonly_ckpt):
    """trainer_state.json says micro-batch 4, the recipe's rung runs 2: guardrun rewrites it
    (old transformers restore it on resume) where it can, and says so where it cannot."""
    ckpt, good, bad = readonly_ckpt
    result = _run(tmp_path, ckpt, extra="batch: {per_device: 2}\n")
    out = _said(result)
    assert result.returncode == 0, out
    assert f"resume: {good}" in out
    assert f"could not rewrite train_batch_size in {good / 'trainer_state.json'}" in out, out
    assert json.loads((good / "trainer_state.json").read_text())["train_batch_size"] == 4

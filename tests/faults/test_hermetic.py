"""The suite builds and finds torch extensions inside its own venv (issue 12 §7).

DeepSpeed's CPU op (deepspeed_shm_comm) JIT-compiles into $TORCH_EXTENSIONS_DIR, by default
the user's ~/.cache/torch_extensions, shared by every venv and job of the user: venvs at
other paths kept invalidating and rebuilding it, and a fresh-clone `make test` failed twice
on one machine while other DeepSpeed builds ran. The Makefile builds the op once into
<venv>/torch_extensions, and tests/conftest.py points the whole session there.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

from guardrun.supervisor.run.extlocks import extensions_root

VENV_EXTENSIONS = Path(sys.prefix) / "torch_extensions"


def test_the_session_builds_torch_extensions_inside_the_venv():
    assert os.environ.get("TORCH_EXTENSIONS_DIR") == str(VENV_EXTENSIONS)
    assert extensions_root(os.environ).is_relative_to(sys.prefix)


def test_jobs_started_through_guardrun_inherit_it(tmp_path, state_dir):
    (tmp_path / "job.py").write_text("import os; print('ext:', os.environ.get('TORCH_EXTENSIONS_DIR'))\n")
    recipe = tmp_path / "job.yaml"
    recipe.write_text(textwrap.dedent(f"""
        launcher: python
        script: {tmp_path / 'job.py'}
        ladder: []
        """))
    guardrun = Path(sys.executable).parent / "guardrun"
    result = subprocess.run([str(guardrun), "run", str(recipe)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ext: {VENV_EXTENSIONS}" in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_the_deepspeed_op_is_prebuilt_in_the_venv():
    built = VENV_EXTENSIONS / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    assert built.is_file(), (f"{built} is missing: `make test` builds it once (its setup step); "
                             f"otherwise a DeepSpeed test compiles it inside a job's tree")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_on_a_fresh_clone_builds_the_op_into_the_venv(tmp_path):
    venv = tmp_path / "venv"  # absent: what a fresh clone has
    dry = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(REPO), "test", f"VENV={venv}"],
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    build = [line for line in dry.stdout.splitlines() if "build_shm_op" in line]
    assert build and all(f"TORCH_EXTENSIONS_DIR={venv}/torch_extensions " in line for line in build), dry.stdout
    assert ".cache" not in dry.stdout

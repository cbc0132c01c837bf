"""The LLaMA-Factory venv's build script: a build that cannot finish says why, and the
third-party tests then skip naming that file, while the rest of `make test` still runs."""
from __future__ import annotations

import subprocess

import pytest

from conftest import REPO
from lf_helpers import HERE, venv_or_skip

SCRIPT = HERE / "build_lf_venv.sh"


def test_a_failed_build_leaves_its_reason_and_the_tests_skip_naming_it(tmp_path):
    venv = tmp_path / "venv-lf"
    (venv / "bin").mkdir(parents=True)   # a venv of an earlier build: started over
    done = subprocess.run([str(SCRIPT), "/nonexistent/python3", str(venv), str(HERE / "constraints-lf.txt")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr          # make test goes on
    assert "could not be built (create the venv)" in done.stderr
    failed = (venv / "BUILD-FAILED").read_text()
    assert failed.startswith("step failed: create the venv") and "/nonexistent/python3" in failed
    assert not (venv / ".built").exists() and not (venv / "bin").exists()
    with pytest.raises(pytest.skip.Exception, match=r"could not be built \(step failed: create the venv\)"):
        venv_or_skip(venv)


def test_no_venv_at_all_skips_saying_how_to_build_it(tmp_path):
    with pytest.raises(pytest.skip.Exception, match=r"`make test` builds it"):
        venv_or_skip(tmp_path / "absent")

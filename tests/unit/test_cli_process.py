"""The command as a shell runs it, in real processes: `python -m guardrun`, and the shell's
completion through click's own protocol (what the `_guardrun_completion` function sends)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GUARDRUN = str(Path(sys.executable).parent / "guardrun")


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd,
                          stdin=subprocess.DEVNULL, env={**os.environ, **env})


def test_python_m_guardrun_is_the_command_from_any_folder(tmp_path):
    shown = run([sys.executable, "-m", "guardrun", "--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Usage: guardrun [OPTIONS] COMMAND [ARGS]...")
    wrong = run([sys.executable, "-m", "guardrun", "stauts"], tmp_path)
    assert wrong.returncode == 2 and "No such command 'stauts'" in wrong.stderr


def complete(words: str, state: Path, cwd: Path) -> list[str]:
    """What bash would be offered for the last of `words` (`guardrun status d`)."""
    done = run([GUARDRUN], cwd, _GUARDRUN_COMPLETE="bash_complete", COMP_WORDS=words,
               COMP_CWORD=str(len(words.split(" ")) - 1), GUARDRUN_STATE_DIR=str(state))
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture
def jobs(tmp_path):
    state = tmp_path / "state"
    for name in ("demo-cpu", "done", "other"):
        (state / name).mkdir(parents=True)
    (state / "not-a-job").write_text("")  # a file in the state root is no job
    return state


@pytest.mark.parametrize("command", ["status", "logs", "stop", "report"])
def test_job_names_complete(jobs, tmp_path, command):
    assert complete(f"guardrun {command} d", jobs, tmp_path) == ["plain,demo-cpu", "plain,done"]
    assert complete(f"guardrun {command} ", jobs, tmp_path) == ["plain,demo-cpu", "plain,done", "plain,other"]


def test_commands_and_recipe_files_complete(jobs, tmp_path):
    assert complete("guardrun st", jobs, tmp_path) == ["plain,start", "plain,status", "plain,stop"]
    assert complete("guardrun run ", jobs, tmp_path) == ["file,"]  # the shell lists the files


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o nosort -F _guardrun_completion guardrun"),
                                          ("zsh", "compdef _guardrun_completion guardrun"),
                                          ("fish", "complete --no-files --command guardrun")])
def test_each_shells_completion_script_is_given(tmp_path, shell, marker):
    shown = run([GUARDRUN], tmp_path, _GUARDRUN_COMPLETE=f"{shell}_source")
    assert shown.returncode == 0 and marker in shown.stdout, shown.stdout + shown.stderr

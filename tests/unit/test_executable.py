"""launcher.executable: the recipe's program is looked up the way the spawn will look, and
what is wrong is said with the recipe's file and line (issue 12 §6)."""
from __future__ import annotations

import errno
import sys
import textwrap

import pytest

from guardrun.launcher.executable import launch_problem
from guardrun.launcher.recipe import load_recipe


def recipe(tmp_path, body: str):
    (tmp_path / "train.py").write_text("print('hi')\n")
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(body))
    return load_recipe(path)


@pytest.mark.parametrize("python,expected", [
    ("/nonexistent/python", ":3: python: not found: /nonexistent/python"),
    ("no-such-python-here", ":3: python: not found on PATH: no-such-python-here"),
    ("./train.py", ":3: python: not executable: "),  # relative to workdir, exists, no x bit
    ("./", ":3: python: not executable: "),  # a folder
])
def test_a_python_that_cannot_run_is_named_with_its_line(tmp_path, python, expected):
    loaded = recipe(tmp_path, f"""\
        name: j
        launcher: python
        python: {python}
        script: train.py
        """)
    assert expected in launch_problem(loaded, {"PATH": str(tmp_path)})


def test_the_recipes_python_that_exists_is_fine(tmp_path):
    loaded = recipe(tmp_path, f"launcher: python\npython: {sys.executable}\nscript: train.py\n")
    assert launch_problem(loaded, {"PATH": ""}) == ""


def test_a_command_is_looked_up_on_the_recipes_path_first(tmp_path):
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    body = """\
        launcher: command
        command:
          - mytool
          - train
        {env}"""
    missing = recipe(tmp_path, body.format(env=""))
    assert launch_problem(missing, {"PATH": "/usr/bin"}).endswith(
        "job.yaml:3: command: not found on PATH: mytool")
    found = recipe(tmp_path, body.format(env=f"env: {{PATH: {tool.parent}}}"))
    assert launch_problem(found, {"PATH": "/usr/bin"}) == ""


def test_what_only_the_spawn_sees_is_said_at_the_same_line(tmp_path):
    loaded = recipe(tmp_path, f"launcher: python\npython: {sys.executable}\nscript: train.py\n")
    error = OSError(errno.ENOEXEC, "Exec format error")
    assert launch_problem(loaded, {}, error).endswith(
        f"job.yaml:2: python: cannot run {sys.executable}: Exec format error")

"""Can the recipe's program be started at all? Said with the recipe's file and line.

Every launch starts one program: the recipe's `python:` (for python, torchrun and
deepspeed, which run as `python -m ...`) or `command[0]` (`launcher: command`). One that
does not exist used to surface as a FileNotFoundError traceback out of the spawn, with
the job left `dead` (issue 12 §6). This looks first, the way the spawn will: a name with
a `/` relative to the workdir (the spawn's cwd), a bare name on the job's PATH (the
recipe's `env:` PATH, else guardrun's own: subprocess searches the env it is given).
`guardrun run` gives up with exit 2 on what it says, and `guardrun start` says it
before it detaches.

The line comes from composing the file again (yamlnodes), so the message reads like
every other recipe error: `job.yaml:3: python: not found: /nonexistent/python`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping

from .overrides import problem_at
from .spec import Recipe


def program(recipe: Recipe) -> tuple[str, str]:
    """(the recipe key that names it, the program) of the one process guardrun spawns."""
    if recipe.launcher == "command":
        return "command", recipe.command[0]
    return "python", recipe.python


def job_path(recipe: Recipe, environ: Mapping[str, str]) -> str:
    """The PATH the job's spawn searches: the recipe's `env:` wins over guardrun's."""
    given = dict(recipe.env).get("PATH")
    return given if given is not None else environ.get("PATH", os.defpath)


def problem_with(name: str, path: str, workdir: Path) -> str:
    """What stops `name` from being executed ('' when nothing does)."""
    if "/" not in name:
        return "" if shutil.which(name, path=path) else f"not found on PATH: {name}"
    full = Path(name) if os.path.isabs(name) else workdir / name
    if not full.exists():
        return f"not found: {name}"
    if full.is_dir() or not os.access(full, os.X_OK):
        return f"not executable: {full}"
    return ""


def launch_problem(recipe: Recipe, environ: Mapping[str, str], error: OSError | None = None) -> str:
    """`file:line: key: what is wrong` when the recipe's program cannot be started, else ''.

    `error`: what the spawn itself raised, for what no look beforehand can see (a file the
    kernel cannot execute: ENOEXEC; a noexec mount; a program removed since the look).
    """
    key, name = program(recipe)
    problem = problem_with(name, job_path(recipe, environ), recipe.workdir)
    if not problem and error is not None:
        problem = f"cannot run {name}: {error.strerror or error}"
    if not problem:
        return ""
    return problem_at(recipe, (key,), problem, first_item=True)

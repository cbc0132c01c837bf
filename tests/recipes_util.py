"""Write a recipe into a temp dir (with a real script file) and load it."""
from __future__ import annotations

import textwrap
from pathlib import Path

from guardrun.launcher.recipe import load_recipe


def make_recipe(tmp_path: Path, body: str, script: str = "train.py", name: str = "job.yaml"):
    (tmp_path / script).write_text("print('hi')\n")
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return load_recipe(path)

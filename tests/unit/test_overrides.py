"""Recipe keys set on the command line (`batch.per_device=8`): read by the recipe's own checks,
errors named `<command line>`, the file's other keys kept."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guardrun.launcher.overrides import is_override, located
from guardrun.launcher.recipe import RecipeError, load_recipe
from guardrun.launcher.units import Size

BODY = """\
name: job
launcher: torchrun
script: train.py
gpus: 2
batch: {per_device: 4, grad_accum: 2}
limits: {host_memory: 3GiB}
args: {max_steps: 30}
"""


def recipe_file(tmp_path: Path, body: str = BODY) -> Path:
    (tmp_path / "train.py").write_text("print('hi')\n")
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def error(path: Path, *overrides: str) -> str:
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, overrides=overrides)
    return str(located(caught.value))


def test_overrides_replace_the_files_values_and_keep_the_rest(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path), overrides=["batch.per_device=8", "limits.host_memory=80%",
                                                           "gpus=4", "args.max_steps=60"])
    assert (recipe.batch.per_device, recipe.batch.grad_accum) == (8, 2)
    assert recipe.limits.host_memory == Size("80%", None, 0.8)
    assert recipe.gpus == 4
    assert dict(recipe.args) == {"max_steps": 60}
    assert recipe.overrides == ("batch.per_device=8", "limits.host_memory=80%", "gpus=4", "args.max_steps=60")


def test_an_override_makes_a_section_the_file_lacks(tmp_path):
    recipe = load_recipe(recipe_file(tmp_path), overrides=["lr.value=2e-4", "gpus=[0, 1]"])
    assert recipe.lr.value == 2e-4
    assert recipe.gpus == (0, 1)


def test_no_overrides_is_the_file_alone(tmp_path):
    path = recipe_file(tmp_path)
    assert load_recipe(path, overrides=()) == load_recipe(path)


@pytest.mark.parametrize("overrides,message", [
    (["batch.per_device=0"], "<command line>: batch.per_device: expected an integer >= 1, got 0"),
    (["batch.per_devce=8"], "<command line>: batch.per_devce: unknown key 'per_devce' (did you mean 'per_device'?)"),
    (["gpu=4"], "<command line>: gpu: unknown key 'gpu' (did you mean 'gpus'?)"),
    (["lr.arg=--lr"], "<command line>: lr.value: required key missing"),
    (["limits.host_memory=lots"], "<command line>: limits.host_memory: "),
    (["gpus"], "<command line>: gpus: expected KEY=VALUE like batch.per_device=8, got 'gpus'"),
    (["gpus=[1,"], "<command line>: gpus: invalid YAML value '[1,'"),
    (["gpus=1", "gpus=2"], "<command line>: gpus: given twice"),
    (["batch.per_device.x=1"], "<command line>: batch.per_device.x: the recipe's batch.per_device is 4, not a mapping"),
])
def test_a_bad_override_names_the_command_line_and_the_key(tmp_path, overrides, message):
    assert error(recipe_file(tmp_path), *overrides).startswith(message)


def test_an_error_in_the_file_still_names_the_file_and_line(tmp_path):
    path = recipe_file(tmp_path, BODY.replace("gpus: 2", "gpus: 0"))
    assert error(path, "batch.per_device=8") == f"{path}:4: gpus: expected a GPU count >= 1, a list of GPU ids like [0, 1], or all, got 0"


@pytest.mark.parametrize("word,expected", [
    ("batch.per_device=8", True), ("gpus=", True), ("limits.host_memory=80%", True),
    ("job.yaml", False), ("=8", False), ("./a=b.yaml", False), ("a..b=1", False),
])
def test_which_words_are_overrides(word, expected):
    assert is_override(word) is expected


def test_the_digest_covers_the_overrides_and_is_the_files_without_them(tmp_path):
    """Earlier runs' failures are remembered per digest: another override is another recipe."""
    import hashlib

    from guardrun.supervisor.run.loop import recipe_digest
    path = recipe_file(tmp_path)
    plain = recipe_digest(load_recipe(path))
    assert plain == hashlib.sha256(path.read_bytes()).hexdigest()[:16]  # the history of runs before overrides
    eight = recipe_digest(load_recipe(path, overrides=["batch.per_device=8"]))
    assert eight != plain
    assert eight == recipe_digest(load_recipe(path, overrides=["batch.per_device=8"]))
    assert eight != recipe_digest(load_recipe(path, overrides=["batch.per_device=16"]))


def test_problems_found_after_loading_name_the_command_line_when_an_override_set_the_key(tmp_path):
    from guardrun.launcher.executable import launch_problem
    from guardrun.launcher.hostfit import limits_problem
    path = recipe_file(tmp_path)
    overridden = load_recipe(path, overrides=["python=/nonexistent/python", "limits.host_memory=900GiB"])
    assert launch_problem(overridden, {}) == "<command line>: python: not found: /nonexistent/python"
    assert limits_problem(overridden, 1 << 30).startswith("<command line>: limits.host_memory: 900GiB is more than")
    section = load_recipe(path, overrides=["limits={host_memory: 900GiB}"])
    assert limits_problem(section, 1 << 30).startswith("<command line>: limits.host_memory: ")
    from_file = load_recipe(path, overrides=["gpus=1"])
    assert limits_problem(from_file, 1 << 20).startswith(f"{path}:6: limits.host_memory: 3GiB is more than")


def test_a_plan_warning_about_a_path_an_override_set_names_the_command_line(tmp_path):
    """`guardrun plan r.yaml script=gone.py`: the missing script is a warning (plan runs
    nothing), said where the value was written, not as `job.yaml:0:`."""
    recipe = load_recipe(recipe_file(tmp_path), missing_ok=True, overrides=["script=gone.py"])
    assert recipe.warnings == (f"<command line>: script: script not found: {tmp_path / 'gone.py'} "
                               f"(relative paths start at workdir {tmp_path})",)
    from_file = load_recipe(recipe_file(tmp_path, BODY.replace("train.py", "gone.py")), missing_ok=True)
    assert [w.split(": ")[0] for w in from_file.warnings] == [f"{tmp_path / 'job.yaml'}:3"]

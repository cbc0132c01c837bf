"""`guardrun example`: the ready recipes as a user gets them, listed with a line each, and
printed so that the copy works from the folder it is written to."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from guardrun.launcher.recipe import load_recipe
from guardrun.supervisor.cli import example
from guardrun.supervisor.cli.main import main

REPO_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def invoke(*argv: str):
    result = CliRunner().invoke(main, list(argv))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_the_bundle_is_the_repositorys_recipes_folder():
    assert example.BUNDLE.resolve() == REPO_RECIPES
    assert [each.name for each in example.examples()] == sorted(p.stem for p in REPO_RECIPES.glob("*.yaml"))


def test_the_list_names_every_recipe_with_its_line():
    result = invoke("example")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "demo_cpu                      guardrun's CPU demo (`make demo`)" in lines
    assert "llava_lora                    LLaVA v1.5 LoRA fine-tuning" in lines
    assert lines[-1] == "guardrun example NAME > my.yaml   writes one; its comment says what to set"
    described = lines[:-2]
    assert len(described) == len(list(REPO_RECIPES.glob("*.yaml")))
    assert all(len(line.split(None, 1)) == 2 for line in described), described


@pytest.mark.parametrize("comment, expected", [
    # a run-on first line loses the clause the next line finishes
    ("# LLaVA v1.5 LoRA fine-tuning, the command of haotian-liu/LLaVA finetune_lora.sh:\n#\n",
     "LLaVA v1.5 LoRA fine-tuning"),
    ("# guardrun's CPU demo (`make demo`): a real torch trainer whose host memory\n# grows.\n",
     "guardrun's CPU demo (`make demo`)"),
    ("# XTuner: LLaVA fine-tuning (the LLM fully, the tower with LoRA), as\n# documented:\n",
     "XTuner: LLaVA fine-tuning (the LLM fully, the tower with LoRA)"),
    # a whole sentence is kept, and so is a line with nowhere to cut
    ("# A small job.\n# More here.\n", "A small job."),
    ("# one line only\nname: x\n", "one line only"),
    ("# runs on without a comma\n# here\n", "runs on without a comma"),
    # no leading comment: no description
    ("name: x\n# late\n", ""),
    ("#\n# second\n", ""),
    ("", ""),
])
def test_description_is_the_leading_comments_first_clause(comment, expected):
    assert example.description(comment) == expected


def test_an_unknown_name_says_which_there_are():
    result = invoke("example", "llava")
    assert result.exit_code == 2
    assert "guardrun: error: no example 'llava' (did you mean 'llava_lora'?); the examples: " in result.output
    assert "demo_cpu" in result.output
    assert result.output.count("\n") == 1


def test_the_name_may_be_given_with_its_suffix():
    assert invoke("example", "llava_lora.yaml").output == invoke("example", "llava_lora").output


def test_the_demo_copy_works_from_the_folder_it_is_written_to(tmp_path):
    result = invoke("example", "demo_cpu")
    assert result.exit_code == 0
    copy = tmp_path / "my.yaml"
    copy.write_text(result.output)
    recipe = load_recipe(copy)      # not for plan only: the script must exist
    assert recipe.workdir == tmp_path
    assert recipe.script == (REPO_RECIPES / "demo_train.py")
    assert recipe.checkpoints.dir == tmp_path / "build" / "demo-cpu"
    assert dict(recipe.args)["output_dir"] == "build/demo-cpu"
    lines = result.output.splitlines()
    assert lines[0] == f"# guardrun example demo_cpu: a copy of {example.BUNDLE / 'demo_cpu.yaml'}"
    assert lines[1] == f"# demo_train.py -> {REPO_RECIPES / 'demo_train.py'} (installed with guardrun)"
    assert lines[2] == "# ../build/demo-cpu -> build/demo-cpu (under this file's folder)"
    # the rest is the recipe, comments and all, but for the rewritten values
    original = (REPO_RECIPES / "demo_cpu.yaml").read_text()
    assert "\n".join(lines[3:]) + "\n" == (original.replace("script: demo_train.py", f"script: {recipe.script}")
                                           .replace("../build/demo-cpu", "build/demo-cpu"))


def test_a_recipe_for_another_projects_clone_is_printed_as_it_is():
    original = (REPO_RECIPES / "llava_lora.yaml").read_text()
    result = invoke("example", "llava_lora")
    assert result.exit_code == 0
    first, second, rest = result.output.split("\n", 2)
    assert first == f"# guardrun example llava_lora: a copy of {example.BUNDLE / 'llava_lora.yaml'}"
    assert second == ("# Before `guardrun run`: set workdir (~/LLaVA) to where that project is on this machine "
                      "(`guardrun plan` works as it is)")
    assert rest == original


def test_every_copy_still_reads_as_its_recipe(tmp_path):
    for each in example.examples():
        copied = yaml.safe_load(example.copy_text(each))
        original = yaml.safe_load(each.path.read_text())
        assert copied.keys() == original.keys(), each.name


def bundle(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "train.py").write_text("")
    (folder / "r.yaml").write_text(text)
    return folder


def test_relocate_rewrites_values_in_flow_and_quoted_forms_and_never_keys(tmp_path):
    folder = bundle(tmp_path, 'script: "train.py"\nargs: [--out, ../runs/x, train.py]\n'
                              'train.py: kept\nchk: {dir: ../runs/x}  # a comment\n')
    text, moved = example.relocate((folder / "r.yaml").read_text(), folder)
    train = str(folder / "train.py")
    assert yaml.safe_load(text) == {"script": train, "args": ["--out", "runs/x", train],
                                    "train.py": "kept", "chk": {"dir": "runs/x"}}
    assert text.endswith("chk: {dir: runs/x}  # a comment\n")
    assert moved == [("train.py", train), ("../runs/x", "runs/x"), ("train.py", train), ("../runs/x", "runs/x")]


def test_relocate_quotes_a_path_yaml_would_misread(tmp_path):
    odd = tmp_path / "a b, c"
    odd.mkdir()
    folder = bundle(odd, "args: {script: train.py, n: 1}\n")
    text, _ = example.relocate((folder / "r.yaml").read_text(), folder)
    assert yaml.safe_load(text) == {"args": {"script": str(folder / "train.py"), "n": 1}}


def test_relocate_keeps_a_shortened_path_a_string(tmp_path):
    folder = bundle(tmp_path, "args: [../8, ../true, ../]\n")
    text, _ = example.relocate((folder / "r.yaml").read_text(), folder)
    assert yaml.safe_load(text) == {"args": ["8", "true", "."]}


@pytest.mark.parametrize("workdir", ["~/LLaVA", "..", "/srv/job"])
def test_relocate_leaves_a_recipe_that_works_elsewhere(tmp_path, workdir):
    text = f"workdir: {workdir}\nscript: train.py\nargs: {{out: ../runs}}\n"
    folder = bundle(tmp_path, text)
    assert example.relocate(text, folder) == (text, [])


def test_relocate_leaves_absolute_home_and_missing_paths(tmp_path):
    text = "workdir: .\nscript: /abs/train.py\nargs: {a: ~/x, b: missing.py, c: ./, n: 3}\n"
    folder = bundle(tmp_path, text)
    assert example.relocate(text, folder) == (text, [])

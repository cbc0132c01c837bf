"""A clean install, as a newcomer makes one: guardrun's wheel built from this tree, installed
into a fresh venv outside it, then, from a folder that is neither, `guardrun --help`,
`guardrun example`, `guardrun example llava_lora > x.yaml` and `guardrun plan x.yaml`.

The wheel is built from a copy of the tree (an in-place build writes build/ and *.egg-info
beside the work of everyone else). pip installs it with its dependencies, resolved from the
index pip is configured with, so a requirement that is missing from install_requires, or a
recipe missing from the package data, fails here and not on a user's machine. Without a
reachable index the test skips, saying so.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".hypothesis", ".whl")


def pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The fresh venv's bin/ folder, guardrun installed in it from a wheel of this tree."""
    top = tmp_path_factory.mktemp("install")
    probe = pip("download", "--no-deps", "-q", "-d", str(top / "probe"), "click", cwd=top)
    if probe.returncode != 0:
        pytest.skip(f"no package index reachable for guardrun's dependencies: {probe.stderr.strip()[-300:]}")
    shutil.copytree(REPO, top / "src", ignore=NOT_SOURCE)
    built = pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(top / "wheel"), str(top / "src"), cwd=top)
    assert built.returncode == 0, built.stderr
    wheels = list((top / "wheel").glob("guardrun-*.whl"))
    assert len(wheels) == 1, wheels
    venv = top / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    done = pip("--python", str(venv / "bin" / "python"), "install", "-q", str(wheels[0]), cwd=top)
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def guardrun(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", GUARDRUN_STATE_DIR=str(cwd / "state"))
    return subprocess.run(["guardrun", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A folder outside the tree and the venv: nothing guardrun needs is beside it."""
    return tmp_path


def test_the_installed_guardrun_is_the_wheels(installed, elsewhere):
    where = subprocess.run([str(installed / "python"), "-c",
                            "import guardrun.supervisor, guardrun.recipes; "
                            "print(guardrun.supervisor.__file__); print(guardrun.recipes.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, timeout=60)
    assert where.returncode == 0, where.stderr
    venv = installed.parent
    assert all(Path(line).is_relative_to(venv) for line in where.stdout.split()), where.stdout
    licence = list(venv.glob("lib/python*/site-packages/guardrun-*.dist-info/licenses/LICENSE"))
    assert len(licence) == 1 and "Apache License" in licence[0].read_text()


def test_help_from_any_folder(installed, elsewhere):
    result = guardrun(installed, "--help", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout and "plan" in result.stdout
    module = subprocess.run([str(installed / "python"), "-m", "guardrun", "--help"],
                            capture_output=True, text=True, cwd=elsewhere, timeout=60)
    assert module.returncode == 0 and module.stdout == result.stdout


def test_example_lists_every_recipe_of_the_tree(installed, elsewhere):
    result = guardrun(installed, "example", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[:-2]]
    assert names == sorted(path.stem for path in (REPO / "recipes").glob("*.yaml"))


def test_a_printed_recipe_plans_where_it_is_written(installed, elsewhere):
    printed = guardrun(installed, "example", "llava_lora", cwd=elsewhere)
    assert printed.returncode == 0, printed.stderr
    (elsewhere / "x.yaml").write_text(printed.stdout)
    plan = guardrun(installed, "plan", "x.yaml", cwd=elsewhere)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith("job llava-v1.5-13b-lora: 6 rung(s) from the recipe's ladder\n")
    assert "   command: " in plan.stdout


def test_the_demo_copy_finds_its_trainer_in_the_package(installed, elsewhere):
    printed = guardrun(installed, "example", "demo_cpu", cwd=elsewhere)
    assert printed.returncode == 0, printed.stderr
    (elsewhere / "demo.yaml").write_text(printed.stdout)
    plan = guardrun(installed, "plan", "demo.yaml", cwd=elsewhere)
    assert plan.returncode == 0, plan.stderr
    assert "not found" not in plan.stdout + plan.stderr
    trainer = next(line for line in printed.stdout.splitlines() if line.startswith("script: "))
    script = Path(trainer.removeprefix("script: "))
    assert script.is_relative_to(installed.parent) and script.name == "demo_train.py" and script.is_file()

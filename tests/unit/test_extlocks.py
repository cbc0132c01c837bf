from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guardrun.supervisor.run.extlocks import (Build, build_folder, clear_build_locks, compiling,
                                          extensions_root, find_builds, program_name)


def test_root_follows_torch_then_xdg_then_home():
    assert extensions_root({"TORCH_EXTENSIONS_DIR": "/x"}) == Path("/x")
    assert extensions_root({"XDG_CACHE_HOME": "/c", "HOME": "/h"}) == Path("/c/torch_extensions")
    assert extensions_root({"HOME": "/h"}) == Path("/h/.cache/torch_extensions")


@pytest.mark.parametrize("path, folder", [
    ("/e/deepspeed_shm_comm", ("deepspeed_shm_comm",)),            # TORCH_EXTENSIONS_DIR set
    ("/e/deepspeed_shm_comm/build/x.o", ("deepspeed_shm_comm",)),
    ("/e/py311_cpu/deepspeed_shm_comm", ("py311_cpu", "deepspeed_shm_comm")),  # the default root
    ("/e/py312_cu121/cpu_adam/", ("py312_cu121", "cpu_adam")),
    ("/e/py311_cpu", None),          # the python level is no build folder
    ("/e", None), ("/e/", None),
    ("/elsewhere/op", None), ("/e2/op", None),
    ("/e/../etc", None), ("/e/./op", ("op",)),
])
def test_build_folder_is_the_folder_under_the_root(path, folder):
    assert build_folder("/e", path) == folder


def test_a_compiler_is_known_by_argv0_or_comm():
    assert program_name("/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus", "cc1plus") == "cc1plus"
    assert program_name("ninja", "python3.11") == "ninja"
    assert program_name("/usr/bin/python3", "cc1plus") == "cc1plus"
    assert program_name("/usr/bin/x86_64-linux-gnu-g++-12", "x86_64-linux-gn") == "x86_64-linux-gnu-g++-12"
    assert program_name("/venv/bin/python", "python") == "python"
    assert compiling([Build(("op",), 1, "python"), Build(("a",), 2, "cc1plus"),
                      Build(("a",), 3, "ninja"), Build(("b",), 4, "nvcc")]) == ("a", "b")


def _sleeper(cwd: Path, argv0: str = "python", *args: str) -> subprocess.Popen:
    """This interpreter as `argv0 -c CODE args...`, waiting for its stdin to close."""
    return subprocess.Popen([argv0, "-c", "import sys; sys.stdin.read()", *args],
                            executable=sys.executable, cwd=cwd, stdin=subprocess.PIPE)


def test_builds_are_the_given_processes_working_in_a_build_folder(tmp_path):
    ext = tmp_path / "ext"
    (ext / "py311_cpu" / "op").mkdir(parents=True)
    (ext / "other").mkdir()
    ninja = _sleeper(ext / "py311_cpu" / "op", "ninja")
    elsewhere = _sleeper(tmp_path, "c++", "-o", str(ext / "other" / "x.o"))
    plain = _sleeper(tmp_path, "python", str(ext / "other" / "x.py"))  # no compiler: args don't count
    foreign = _sleeper(ext / "other")  # not in the pids given
    try:
        found = find_builds(ext, [ninja.pid, elsewhere.pid, plain.pid, 999999999])
        assert found == (Build(("py311_cpu", "op"), ninja.pid, "ninja"),
                         Build(("other",), elsewhere.pid, "c++"))
    finally:
        for child in (ninja, elsewhere, plain, foreign):
            child.stdin.close()
            child.wait()


def test_a_root_reached_through_a_symlink_still_matches_the_resolved_cwd(tmp_path):
    (tmp_path / "real" / "op").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    child = _sleeper(tmp_path / "link" / "op")
    try:
        assert find_builds(tmp_path / "link", [child.pid]) == (Build(("op",), child.pid, "python"),)
    finally:
        child.stdin.close()
        child.wait()


def _lock(root: Path, rel: str, age: float = 0) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def _clear(root: Path, *folders: tuple[str, ...]) -> tuple[list[Path], list[tuple[str, dict]]]:
    seen: list[tuple[str, dict]] = []
    builds = [Build(folder, 1, "ninja") for folder in folders]
    removed = clear_build_locks(root, builds, time.time() - 60, lambda e, **f: seen.append((e, f)), attempt=2)
    return removed, seen


def test_only_the_built_folders_locks_are_removed_and_journaled(tmp_path):
    ours = _lock(tmp_path, "py311_cpu/op/lock")
    theirs = _lock(tmp_path, "py311_cpu/other/lock")
    removed, seen = _clear(tmp_path, ("py311_cpu", "op"))
    assert removed == [ours] and not ours.exists() and theirs.exists()
    assert seen == [("extension_lock.cleared", {"attempt": 2, "path": str(ours)})]


def test_what_cannot_be_the_attempts_lock_is_kept_and_said(tmp_path):
    old = _lock(tmp_path, "old/lock", age=3600)
    target = tmp_path / "target"
    target.write_text("x")
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "lock").symlink_to(target)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    hidden = _lock(elsewhere, "lock")
    (tmp_path / "evil").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "dir" / "lock").mkdir(parents=True)
    foreign = _lock(tmp_path, "foreign/lock")
    if os.geteuid() != 0:
        pytest.skip("giving a file to a second uid (nobody, 65534) needs root")
    os.chown(foreign, 65534, 65534)  # a real second uid
    removed, seen = _clear(tmp_path, ("old",), ("link",), ("evil",), ("dir",), ("foreign",), ("absent",))
    assert removed == []
    assert all(p.exists() for p in (old, target, hidden, foreign))
    assert (tmp_path / "link" / "lock").is_symlink()
    assert {f["path"]: f["why"] for _, f in seen} == {
        str(old): "older than the attempt",
        str(tmp_path / "link" / "lock"): "not a regular file",
        str(tmp_path / "evil" / "lock"): "evil is a symlink or not a directory: not followed",
        str(tmp_path / "dir" / "lock"): "not a regular file",
        str(foreign): "owned by uid 65534",
    }


def test_missing_root_is_nothing_to_do(tmp_path):
    assert _clear(tmp_path / "absent", ("op",)) == ([], [])

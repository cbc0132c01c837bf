"""Extension build locks that are not the attempt's own are never touched (issue 12 §5).

torch's JIT builder guards `<TORCH_EXTENSIONS_DIR>/<ext>/lock` with an empty file (no
pid, no open fd): the only proof that a lock is the attempt's is a process of its tree
compiling in that folder when it was stopped. A concurrent build of another job (the
same user's DeepSpeed run, or another `make test`) keeps its lock: removing it made that
build's `baton.release()` fail with FileNotFoundError on a real machine. Symlinks planted
in a shared extensions dir are never followed.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import wait_until
from helpers_extbuild import GUARDRUN, events, finish, start_compile_job

#: Another job's builder: takes the lock in its cwd as torch's FileBaton does, and holds it
#: (compiling) until the test closes its stdin.
FOREIGN_BUILDER = """
import os, sys
os.close(os.open("lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
print("held", flush=True)
sys.stdin.read()
os.unlink("lock")
"""


def test_a_concurrent_build_of_another_job_keeps_its_lock(tmp_path, state_dir):
    ext = tmp_path / "torch_extensions"
    own = ext / "deepspeed_shm_comm" / "lock"
    theirs = ext / "cpu_adam" / "lock"
    theirs.parent.mkdir(parents=True)
    guard, go = start_compile_job(tmp_path, ext)
    foreign = None
    try:
        wait_until(own.exists, timeout=30, what="the job's own build lock")
        # Started after the attempt: the old rule ("created since the attempt began") took it.
        foreign = subprocess.Popen([sys.executable, "-c", FOREIGN_BUILDER], cwd=theirs.parent,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert foreign.stdout.readline() == b"held\n"
        go.touch()
        out = finish(guard, tmp_path)
        assert guard.returncode == 1, out
        assert theirs.exists(), "another job's build lock was removed:\n" + out
        assert not own.exists(), "the stopped attempt's own build lock was left:\n" + out
        assert [e["path"] for e in events(state_dir, "extension_lock.cleared")] == [str(own)]
    finally:
        if foreign is not None:
            foreign.stdin.close()
            assert foreign.wait(10) == 0, "the foreign builder's baton.release() failed"


def test_a_plain_job_leaves_a_concurrent_deepspeed_build_alone(tmp_path, state_dir):
    """The incident: guardrun supervising plain Python jobs removed the deepspeed_shm_comm
    lock of the same user's DeepSpeed build running beside them."""
    ext = tmp_path / "torch_extensions"
    theirs = ext / "deepspeed_shm_comm" / "lock"
    theirs.parent.mkdir(parents=True)
    started, go = tmp_path / "started", tmp_path / "go"
    (tmp_path / "job.py").write_text(textwrap.dedent(f"""
        import os, time
        open({str(started)!r}, "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        """))
    recipe = tmp_path / "job.yaml"
    recipe.write_text(textwrap.dedent(f"""
        launcher: python
        script: {tmp_path / 'job.py'}
        env: {{TORCH_EXTENSIONS_DIR: "{ext}"}}
        ladder: []
        """))
    with open(tmp_path / "out.txt", "wb") as out:
        guard = subprocess.Popen([GUARDRUN, "run", str(recipe)], stdout=out, stderr=subprocess.STDOUT)
    foreign = None
    try:
        wait_until(started.exists, timeout=30, what="the job to start")
        foreign = subprocess.Popen([sys.executable, "-c", FOREIGN_BUILDER], cwd=theirs.parent,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert foreign.stdout.readline() == b"held\n"
    finally:
        go.touch()
        out = finish(guard, tmp_path)
    try:
        assert guard.returncode == 0, out
        assert theirs.exists(), "the concurrent DeepSpeed build's lock was removed:\n" + out
        assert events(state_dir, "extension_lock.cleared") == []
    finally:
        if foreign is not None:
            foreign.stdin.close()
            assert foreign.wait(10) == 0, "the DeepSpeed build's baton.release() failed"


def test_symlinks_planted_in_the_extensions_dir_are_not_followed(tmp_path, state_dir):
    ext = tmp_path / "torch_extensions"
    victim_dir = tmp_path / "someone_else"  # a directory the planter could not write
    victim_dir.mkdir()
    victim_lock = victim_dir / "lock"
    victim_file = tmp_path / "precious"
    ext.mkdir()
    (ext / "evil").symlink_to(victim_dir, target_is_directory=True)
    (ext / "op2").mkdir()
    (ext / "op2" / "lock").symlink_to(victim_file)
    # The tree's compiler names both folders, as a real one names its sources and outputs.
    guard, go = start_compile_job(tmp_path, ext, str(ext / "evil" / "x.cpp"),
                                   str(ext / "op2" / "y.cpp"))
    try:
        wait_until((ext / "deepspeed_shm_comm" / "lock").exists, timeout=30, what="the job's lock")
        victim_lock.touch()  # fresh: the old rule's "created during the attempt"
        victim_file.write_text("keep me")
    finally:
        go.touch()
        out = finish(guard, tmp_path)
    assert guard.returncode == 1, out
    assert victim_lock.exists(), "followed the planted <ext> symlink and removed its target's lock"
    assert (ext / "op2" / "lock").is_symlink(), "a `lock` that is a symlink is not a build lock"
    assert victim_file.read_text() == "keep me"
    cleared = [e["path"] for e in events(state_dir, "extension_lock.cleared")]
    assert cleared == [str(ext / "deepspeed_shm_comm" / "lock")]
    kept = {e["path"]: e["why"] for e in events(state_dir, "extension_lock.kept")}
    assert kept == {str(ext / "evil" / "lock"): "evil is a symlink or not a directory: not followed",
                    str(ext / "op2" / "lock"): "not a regular file"}

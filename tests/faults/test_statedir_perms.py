"""The state dir on a shared server (issue 12 §5): private whatever the umask, never under a
parent another user can write, and a swap of the job dir mid-run redirects nothing.

Real second user: `nobody` (65534) owns the parents in question, and really tries the
rename that the sticky bit must forbid. Real umask: the `guardrun` child runs with 000.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from conftest import wait_until

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
GATE = Path(__file__).resolve().parent.parent / "jobs" / "gate.py"
NOBODY = 65534

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="chown to a second uid needs root")


def recipe(tmp: Path, *, gate: Path | None = None) -> Path:
    script = tmp / "job.py"
    script.write_text('print("hello from the job")\n')
    job = f"script: {GATE}\nargs: ['--go', '{gate}']\n" if gate else f"script: {script}\n"
    path = tmp / "perm.yaml"
    path.write_text("launcher: python\n" + job + textwrap.dedent("""\
        monitor: {interval: 0.1}
        stop_grace: 10s
        ladder: []
        restarts: {max: 0}
        """))
    return path


def run(recipe_path: Path, state_root: Path, *, umask: int | None = None, timeout: float = 60):
    env = {**os.environ, "GUARDRUN_STATE_DIR": str(state_root)}
    return subprocess.run([GUARDRUN, "run", str(recipe_path)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=env,
                          **({} if umask is None else {"umask": umask}))


@pytest.fixture
def shared(tmp_path):
    """A folder other users can reach (pytest's tmp_path is 0700 root): /tmp/guardrun-perm-*."""
    base = Path(tempfile.mkdtemp(prefix="guardrun-perm-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def modes(root: Path) -> dict[str, int]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def test_every_path_is_private_under_umask_000(tmp_path):
    root = tmp_path / "xdg" / "state" / "guardrun"  # nothing of it exists yet
    result = run(recipe(tmp_path), root, umask=0)
    assert result.returncode == 0, result.stdout + result.stderr
    found = modes(tmp_path / "xdg")
    assert {"state/guardrun/perm/events.jsonl", "state/guardrun/perm/attempts/1/output.log",
            "state/guardrun/perm/state.json", "state/guardrun/perm/supervisor.lock"} <= set(found)
    loose = {path: f"{mode:04o}" for path, mode in found.items()
             if mode != (0o700 if (tmp_path / "xdg" / path).is_dir() else 0o600)}
    assert not loose, f"created with the umask's modes, not 0700/0600: {loose}"


def test_loose_modes_left_by_an_older_guardrun_are_tightened(tmp_path):
    root = tmp_path / "state"
    job = root / "perm"
    (job / "attempts").mkdir(parents=True)
    (job / "events.jsonl").write_text("")
    for path, mode in ((root, 0o700), (job, 0o755), (job / "attempts", 0o777), (job / "events.jsonl", 0o666)):
        path.chmod(mode)
    assert run(recipe(tmp_path), root).returncode == 0
    assert {p: f"{m:04o}" for p, m in modes(job).items() if m not in (0o700, 0o600)} == {}
    assert stat.S_IMODE(job.stat().st_mode) == 0o700


@needs_root
@pytest.mark.parametrize("owner, mode, why", [
    (NOBODY, 0o755, "belongs to uid 65534"),
    (0, 0o777, "writable by everyone"),
    (NOBODY, 0o1777, "belongs to uid 65534"),  # sticky, but its owner may rename anything in it
], ids=["owned_by_nobody", "world_writable", "sticky_owned_by_nobody"])
def test_a_parent_another_user_can_write_is_refused(shared, tmp_path, owner, mode, why):
    parent = shared / "team"
    parent.mkdir()
    os.chown(parent, owner, -1)
    parent.chmod(mode)
    root = parent / "state"
    result = run(recipe(tmp_path), root)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"guardrun: error: state directory: {parent} is not safe" in result.stderr, result.stderr
    assert why in result.stderr and "GUARDRUN_STATE_DIR" in result.stderr
    assert "Traceback" not in result.stderr
    assert not root.exists(), "nothing is created under a refused parent"


@needs_root
@pytest.mark.parametrize("group, refused", [(NOBODY, True), (0, False)],
                         ids=["another_group", "own_private_group"])
def test_a_group_writable_parent_is_refused_unless_the_group_is_ours_alone(shared, tmp_path,
                                                                           group, refused):
    """Group `nogroup` may have other members; `root`, for root, is a user-private group
    (same name, no other member), as Debian gives every user with umask 002."""
    parent = shared / "team"
    parent.mkdir()
    os.chown(parent, -1, group)
    parent.chmod(0o775)
    result = run(recipe(tmp_path), parent / "state")
    if refused:
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"{parent} is not safe" in result.stderr and "writable by group 65534" in result.stderr
    else:
        assert result.returncode == 0, result.stdout + result.stderr


@needs_root
def test_a_symlink_another_user_planted_on_the_path_is_refused(shared, tmp_path):
    """GUARDRUN_STATE_DIR=/tmp/link/state where `link` is nobody's: they can repoint it."""
    sticky, ours = shared / "tmp", tmp_path / "ours"
    sticky.mkdir()
    sticky.chmod(0o1777)
    ours.mkdir()
    subprocess.run(["runuser", "-u", "nobody", "--", "ln", "-s", str(ours), str(sticky / "link")],
                   check=True)
    result = run(recipe(tmp_path), sticky / "link" / "state")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{sticky} is not safe" in result.stderr and str(sticky / "link") in result.stderr
    assert list(ours.iterdir()) == []


@needs_root
def test_a_state_root_made_by_another_user_in_a_sticky_dir_is_refused(shared, tmp_path):
    sticky = shared / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    root = sticky / "state"
    subprocess.run(["runuser", "-u", "nobody", "--", "mkdir", "-m", "0777", str(root)], check=True)
    result = run(recipe(tmp_path), root)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{root} is not safe" in result.stderr and "uid 65534" in result.stderr, result.stderr
    assert list(root.iterdir()) == []


@needs_root
def test_a_sticky_world_writable_parent_is_fine_when_our_dir_is_ours(shared, tmp_path):
    """/tmp-like: nobody else can rename our entry there; `nobody` really tries, and fails."""
    sticky = shared / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    root = sticky / "state"
    result = run(recipe(tmp_path), root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    swap = subprocess.run(["runuser", "-u", "nobody", "--", "mv", str(root), str(sticky / "moved")],
                          capture_output=True, text=True)
    assert swap.returncode != 0 and "Operation not permitted" in swap.stderr, swap.stderr
    assert root.is_dir()


def test_a_job_dir_swapped_for_a_symlink_mid_run_redirects_nothing(tmp_path):
    """Simulates what a user who could write the parent would do (refused above): the
    supervisor keeps writing into the directory it checked, not into the decoy."""
    root, go, decoy = tmp_path / "state", tmp_path / "go", tmp_path / "decoy"
    decoy.mkdir()
    env = {**os.environ, "GUARDRUN_STATE_DIR": str(root)}
    child = subprocess.Popen([GUARDRUN, "run", str(recipe(tmp_path, gate=go))], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        job = root / "perm"
        wait_until(lambda: "waiting for" in _read(job / "attempts" / "1" / "output.log"), timeout=30,
                   what="the job to wait for its go file")
        moved = root / "moved"
        os.rename(job, moved)
        os.symlink(decoy, job)
        go.write_text("go")
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, out
    assert sorted(os.listdir(decoy)) == [], "the supervisor wrote through the symlink"
    assert '"state": "finished"' in (moved / "state.json").read_text()
    assert "guardrun.run.finished" in (moved / "events.jsonl").read_text()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""

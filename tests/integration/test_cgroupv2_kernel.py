"""cgroup v2 for real, where a cgroup2 hierarchy is mounted and writable (issue 17).

On this kind of machine that is the hybrid /sys/fs/cgroup/unified as root: no controllers
(memory is on v1), but real cgroup.procs, cgroup.kill and cgroup.events, so membership,
the kill and the removal are the kernel's. A tree that setsids, double-forks and clears its
environment is joined between fork and exec and must be gone, every member, after the kill;
the cgroups must be gone after remove(). Skipped with the reason where there is no such mount.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import V2_TEST_PREFIX, wait_until
from helpers_proc import alive
from guardrun.supervisor.core import events
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.watch import cgroupfs, cgroupv2, proc
from guardrun.supervisor.watch.proctree import ProcTree
from guardrun.supervisor.watch.seams import group_stop

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def _base() -> tuple[Path | None, str]:
    root = cgroupv2.find_root()
    if root is None:
        return None, "no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    try:
        base = cgroupv2.base_dir(root)
    except cgroupfs.CgroupError as err:
        return None, str(err)
    if not os.access(base / "cgroup.procs", os.W_OK):
        return None, f"{base} is not writable by uid {os.getuid()}"
    return base, ""


BASE, WHY_NOT = _base()
pytestmark = pytest.mark.skipif(BASE is None, reason=f"no writable cgroup v2: {WHY_NOT}")


@pytest.fixture
def own_cgroup():
    """A fresh v2 cgroup of this test's own (V2_TEST_PREFIX: conftest checks none is left)."""
    path = BASE / f"{V2_TEST_PREFIX}{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    group = cgroupv2.Group(path)
    if path.is_dir():
        if not group.kill_switch():
            for pid in group.procs():
                os.kill(pid, 9)
        wait_until(lambda: not group.procs(), timeout=10, what=f"{path} emptied")
        group.remove()


def _stop(launcher: subprocess.Popen, group: cgroupv2.Group, way: str = "cgroup.kill") -> list[str]:
    """An attempt's stop as guardrun makes it (stop_tree with the attempt's cgroup: its members,
    its kill switch unless `way` is "members"), without grace; the events it told."""
    told = []
    proc.stop_tree(launcher, ProcTree(), grace=0.0, clock=MonotonicClock(),
                   on_event=lambda name, **fields: told.append(name),
                   **(group_stop(group) if way == "cgroup.kill" else {"group": group.procs}))
    return told


def _escaping_tree(group: Path, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """tests/jobs/escape.py joined to `group`: its worker setsid + double fork + empty environ."""
    pidfile = tmp_path / "worker.pid"
    launcher = proc.spawn([sys.executable, str(JOBS / "escape.py"), "--pidfile", str(pidfile),
                           "--done", str(tmp_path / "done")], env=None, cwd=None,
                          stdout=subprocess.DEVNULL, stderr=None, join=os.fsencode(group / "cgroup.procs"))
    wait_until(pidfile.exists, timeout=30, what="the escaped worker")
    worker = int(pidfile.read_text())
    assert os.getsid(worker) != os.getsid(launcher.pid)
    assert Path(f"/proc/{worker}/environ").read_bytes() == b""  # no mark, no test tag
    return launcher, worker


@pytest.mark.parametrize("way", ["cgroup.kill", "members"])
def test_an_escaped_tree_in_a_v2_cgroup_is_killed_completely_and_the_cgroup_removed(way, own_cgroup, tmp_path):
    launcher, worker = _escaping_tree(own_cgroup, tmp_path)
    group = cgroupv2.Group(own_cgroup)
    try:
        assert sorted(group.procs()) == sorted([launcher.pid, worker])
        assert cgroupfs.parse_keyed((own_cgroup / "cgroup.events").read_text())["populated"] == 1
        if way == "cgroup.kill":
            if not (own_cgroup / "cgroup.kill").is_file():
                pytest.skip("no cgroup.kill on this kernel (Linux < 5.14)")
            assert _stop(launcher, group)[0] == events.PROC_GROUP_KILLED
        else:  # what a kernel without cgroup.kill gets: SIGKILL member by member
            assert events.PROC_GROUP_KILLED not in _stop(launcher, group, way)
        assert launcher.returncode == -9
        assert not alive(worker) and group.procs() == []
        wait_until(lambda: cgroupfs.parse_keyed((own_cgroup / "cgroup.events").read_text())["populated"] == 0,
                   timeout=5, what="cgroup.events populated 0")
        assert group.remove() == []
        assert not own_cgroup.exists()
    finally:
        for pid in (launcher.pid, worker):
            if alive(pid):
                os.kill(pid, 9)
        launcher.wait(timeout=10)


class _NoMemory(cgroupv2.JobCgroup):
    """The v2 job cgroup where the mount has no memory controller to enable (hybrid)."""

    @staticmethod
    def enable(path: Path) -> None:
        return None


def test_the_v2_job_layout_on_the_real_kernel(own_cgroup, tmp_path):
    """guardrun/<job>/attempt-N made by mkdir on cgroup2, the attempt joined, the record
    written; remove() takes all of it and the record, and leaves the parent alone."""
    state = tmp_path / "state" / "job"
    state.mkdir(parents=True)
    job = _NoMemory.make(own_cgroup / cgroupfs.MARK_DIR / cgroupfs.job_name("job", state, os.getuid()), state)
    attempt = job.attempt(1, None)
    assert (attempt.path / "cgroup.procs").is_file()  # a real cgroup: the kernel made its files
    assert cgroupfs.recorded("job", state, os.getuid()) == job.path
    launcher, worker = _escaping_tree(attempt.path, tmp_path)
    try:
        assert sorted(job.procs()) == sorted([launcher.pid, worker])  # the attempt's, from the job's
        _stop(launcher, attempt)
        assert job.remove() == []
        assert not (own_cgroup / cgroupfs.MARK_DIR).exists() and own_cgroup.is_dir()
        assert not (state / cgroupfs.RECORD).exists()
    finally:
        for pid in (launcher.pid, worker):
            if alive(pid):
                os.kill(pid, 9)
        launcher.wait(timeout=10)


def test_a_refused_enable_leaves_the_process_where_it_was_on_the_real_kernel(own_cgroup):
    """This mount has no memory controller, so the kernel refuses `+memory` (not with EBUSY:
    no move into the leaf helps): the process stays in its own cgroup, no leaf is made, and
    the kernel's reason is said."""
    sleeper = proc.spawn([sys.executable, "-c", "import time; time.sleep(60)"], env=None, cwd=None,
                         stdout=subprocess.DEVNULL, stderr=None, join=os.fsencode(own_cgroup / "cgroup.procs"))
    try:
        root = cgroupv2.find_root()
        self_cgroup = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        assert cgroupv2.base_dir(root, self_cgroup) == own_cgroup
        with pytest.raises(cgroupfs.CgroupError) as err:
            cgroupv2.enter(own_cgroup, root, self_cgroup, pid=sleeper.pid)
        assert str(err.value).startswith(f"cannot enable memory for {own_cgroup}'s children: ")
        assert cgroupv2.parse_self_cgroup(Path(f"/proc/{sleeper.pid}/cgroup").read_text()) == \
            "/" + str(own_cgroup.relative_to(root))
        assert not (own_cgroup / cgroupv2.LEAF).exists()
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)

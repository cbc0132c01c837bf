"""cgroup v2 containment against fake cgroup trees in a temp dir (issue 17): every decision
of containment.prepare's v2 path and every reading, laid out as the kernel lays them out
(Documentation/admin-guide/cgroup-v2.rst). The real kernel: tests/integration/test_cgroupv2_kernel.py.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.core.context import Context
from guardrun.supervisor.watch import cgroupfs, cgroupv1, cgroupv2, containment
from recipes_util import make_recipe

UID = 1000
BASE = "launcher: python\nscript: train.py\n"
SELF = "0::/box\n"  # guardrun's own v2 cgroup: /box, delegated to it


# -- the user manager's scope: detected for `guardrun doctor`, not used ----------------------

def fake_host(tmp_path: Path, controllers: str = "cpu memory pids") -> tuple[Path, dict]:
    """A unified hierarchy with a user manager whose cgroup has `controllers` delegated."""
    root = tmp_path / "cgroup"
    manager = root / "user.slice" / f"user-{UID}.slice" / f"user@{UID}.service"
    manager.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (manager / "cgroup.controllers").write_text(controllers + "\n")
    runtime = tmp_path / "run"
    (runtime / "systemd").mkdir(parents=True)
    (runtime / "systemd" / "private").touch()
    return root, {"XDG_RUNTIME_DIR": str(runtime)}


SESSION = f"0::/user.slice/user-{UID}.slice/session-3.scope\n"


def detect(root, env, self_cgroup=SESSION, which=lambda name: f"/usr/bin/{name}"):
    return cgroupv2.detect(root, self_cgroup=self_cgroup, env=env, uid=UID, which=which)


def test_a_user_manager_delegating_memory_is_detected_and_said_unused(tmp_path):
    root, env = fake_host(tmp_path)
    found = detect(root, env)
    assert found.cgroup_ok and found.kind == "procfs"
    assert "does not wrap the launch in a systemd-run scope" in found.reason


@pytest.mark.parametrize("change,reason", [
    ("v1", "no cgroup v2 hierarchy"),
    ("no-manager", "no systemd user manager"),
    ("no-memory", "memory controller is not delegated"),
    ("no-systemd-run", "systemd-run is not installed"),
    ("not-in-v2", "no 0:: line"),
])
def test_each_missing_piece_of_a_scope_says_why(change, reason, tmp_path):
    root, env = fake_host(tmp_path, "cpu pids" if change == "no-memory" else "cpu memory pids")
    if change == "v1":
        (root / "cgroup.controllers").unlink()
    if change == "no-manager":
        env = {}
    which = (lambda name: None) if change == "no-systemd-run" else (lambda name: f"/usr/bin/{name}")
    self_cgroup = "4:memory:/x\n" if change == "not-in-v2" else SESSION
    found = detect(root, env, self_cgroup=self_cgroup, which=which)
    assert found.kind == "procfs" and not found.cgroup_ok
    assert reason in found.reason


# -- a delegated subtree: the decisions ------------------------------------------------------

def fake_v2(tmp_path: Path, controllers: str = "cpu memory pids") -> Path:
    """A cgroup2 root with guardrun's own cgroup /box holding `controllers`, as a unit with
    Delegate=yes gets it; the files a mkdir makes in a real cgroup are written by hand."""
    root = tmp_path / "cgroup2"
    box = root / "box"
    box.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.procs").write_text("")
    (root / "cgroup.subtree_control").write_text("")
    (box / "cgroup.controllers").write_text(controllers + "\n")
    (box / "cgroup.subtree_control").write_text("")
    (box / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return root


@pytest.fixture
def kernel(monkeypatch):
    """What the kernel does with writes under a fake cgroup2 root (a `cgroup2` folder):
    `+memory` in the subtree_control of a non-root cgroup that holds processes is EBUSY;
    a pid written to a cgroup.procs joins it and leaves every other one. (Tests set a
    fake's files up with write_bytes, which it leaves alone.)"""
    real = Path.write_text

    def write(path: Path, text: str, *args, **kwargs):
        root = next((p for p in path.parents if p.name == "cgroup2"), None)
        if root is not None and path.name == "cgroup.subtree_control" and path.parent != root:
            procs = path.parent / "cgroup.procs"
            if procs.is_file() and procs.read_text().split():
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        if root is not None and path.name == "cgroup.procs":
            for other in root.rglob("cgroup.procs"):
                real(other, "".join(f"{pid}\n" for pid in other.read_text().split() if pid not in text.split()))
            text = (path.read_text() if path.is_file() else "") + "".join(f"{pid}\n" for pid in text.split())
        return real(path, text, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", write)


def test_a_delegated_subtree_is_usable(tmp_path):
    assert cgroupv2.why_not(fake_v2(tmp_path), SELF) == ""


@pytest.mark.parametrize("change,reason", [
    ("no-root", "no cgroup v2 hierarchy at"),
    ("not-in-v2", "this process is in no cgroup v2"),
    ("not-visible", "is not visible here"),
    ("no-memory", "the memory controller is not available in"),
    ("read-only", "is not writable by uid"),
])
def test_each_missing_piece_of_a_delegated_subtree_says_why(change, reason, tmp_path, monkeypatch):
    root = fake_v2(tmp_path, "cpu pids" if change == "no-memory" else "cpu memory pids")
    self_cgroup = {"not-in-v2": "4:memory:/box\n", "not-visible": "0::/elsewhere\n"}.get(change, SELF)
    if change == "no-root":
        (root / "cgroup.controllers").unlink()
        monkeypatch.setattr(cgroupv2, "V2_ROOTS", (root,))
    if change == "read-only":  # root may write anything: the access check is what is tested
        monkeypatch.setattr(cgroupv2.os, "access", lambda path, mode: False)
    why = cgroupv2.why_not(None if change == "no-root" else root, self_cgroup)
    assert reason in why


def test_the_first_v2_mount_is_the_whole_tree_or_the_hybrid_one(tmp_path):
    unified, hybrid = tmp_path / "cg", tmp_path / "cg" / "unified"
    hybrid.mkdir(parents=True)
    (hybrid / "cgroup.controllers").write_text("\n")
    assert cgroupv2.find_root((unified, hybrid)) == hybrid
    (unified / "cgroup.controllers").write_text("memory\n")
    assert cgroupv2.find_root((unified, hybrid)) == unified
    assert cgroupv2.find_root((tmp_path / "none",)) is None


def test_a_delegated_subtree_becomes_the_jobs_cgroup(tmp_path, kernel):
    """Guardrun leaves its cgroup for a leaf (EBUSY with it inside), enables memory below it, makes
    guardrun/<job>/attempt-N with memory.max and memory.high, and records where."""
    root = fake_v2(tmp_path)
    state = tmp_path / "state" / "llava"
    state.mkdir(parents=True)
    recipe = make_recipe(tmp_path, BASE + "name: llava\nlimits: {host_memory: 1GiB}\n")
    made = containment.prepare(recipe, state, 8 << 30, mount=tmp_path / "no-v1", root=root, self_cgroup=SELF)
    box = root / "box"
    job = box / "guardrun" / cgroupfs.job_name("llava", state, os.getuid())
    assert (made.kind, made.job.path, made.hard_limit, made.high) == ("cgroup v2", job, int(1.1 * (1 << 30)), 1 << 30)
    assert made.reason.startswith(f"the job's own memory cgroup {job} (hard limit ")
    assert (box / cgroupv2.LEAF / "cgroup.procs").read_text() == f"{os.getpid()}\n"  # out of /box first
    assert (box / "cgroup.procs").read_text() == ""
    for level in (box, box / "guardrun", job):
        assert (level / "cgroup.subtree_control").read_text() == "+memory"
    assert (state / "cgroup").read_text() == f"{job}\n"
    said, emitted = [], []
    group = made.attempt(1, Context(MonotonicClock(), lambda name, **fields: emitted.append((name, fields)), said.append))
    assert isinstance(group, cgroupv2.Group) and group.path == job / "attempt-1"
    assert (group.path / "memory.max").read_text() == str(int(1.1 * (1 << 30)))
    assert (group.path / "memory.high").read_text() == str(1 << 30)
    assert emitted == [("cgroup.attempt", {"attempt": 1, "path": str(group.path), "hard_limit": made.hard_limit})]
    (job / "cgroup.procs").write_text("")  # the kernel's, in a real one
    assert cgroupv2.JobCgroup.path_for("llava", state, root=root, self_cgroup="0::/other\n") == job  # recorded
    _remove_fake(box / "guardrun")
    made.finish(lambda name, **fields: emitted.append((name, fields)))
    assert not (box / "guardrun").exists() and not (state / "cgroup").exists()
    assert emitted[-1] == ("cgroup.removed", {"path": str(job), "left": []})


def _remove_fake(path: Path) -> None:
    """What the kernel does on rmdir of a cgroup: its interface files go with it."""
    for directory, _dirs, files in os.walk(path):
        for name in files:
            Path(directory, name).unlink()


def test_hard_memory_off_sets_neither_memory_max_nor_memory_high(tmp_path, kernel):
    root = fake_v2(tmp_path)
    recipe = make_recipe(tmp_path, BASE + "limits: {host_memory: 1GiB, hard_memory: 'off'}\n")
    made = containment.prepare(recipe, tmp_path, 8 << 30, mount=tmp_path / "no-v1", root=root, self_cgroup=SELF)
    assert (made.kind, made.hard_limit, made.high) == ("cgroup v2", None, None)
    assert made.reason.endswith("(no hard limit)")
    group = made.attempt(1, Context(MonotonicClock(), lambda name, **fields: None, print))
    assert not (group.path / "memory.max").exists() and not (group.path / "memory.high").exists()
    _remove_fake(root / "box" / "guardrun")
    made.finish(lambda name, **fields: None)


def test_other_processes_in_our_cgroup_move_guardrun_back_and_fall_back_with_why(tmp_path, kernel):
    """A login shell's scope: the shell shares the cgroup, so the enable is EBUSY even with
    guardrun in its leaf; guardrun goes back where it was and the job runs on /proc."""
    root = fake_v2(tmp_path)
    box = root / "box"
    (box / "cgroup.procs").write_bytes(f"4242\n{os.getpid()}\n".encode())  # the shell, and guardrun
    found = containment.prepare(make_recipe(tmp_path, BASE), tmp_path, 1 << 30, mount=tmp_path / "no-v1",
                                root=root, self_cgroup=SELF)
    assert found.job is None and found.kind == "procfs"
    assert found.reason.startswith(f"cgroup v1: no cgroup v1 memory hierarchy at {tmp_path / 'no-v1'}; "
                                   f"cgroup v2: cannot enable memory for {box}'s children: ")
    assert "other processes share" in found.reason and "Delegate=yes" in found.reason
    assert sorted((box / "cgroup.procs").read_text().split()) == sorted(["4242", str(os.getpid())])  # back
    assert (box / cgroupv2.LEAF / "cgroup.procs").read_text() == ""  # (a real empty leaf is removed)


def test_a_refusal_that_is_not_ebusy_moves_nothing(tmp_path):
    root = fake_v2(tmp_path)
    box = root / "box"
    (box / "cgroup.subtree_control").unlink()
    (box / "cgroup.subtree_control").mkdir()  # a write there fails, and not with EBUSY
    with pytest.raises(cgroupfs.CgroupError, match="children: Is a directory$"):
        cgroupv2.enter(box, root, SELF)
    assert not (box / cgroupv2.LEAF).exists()


def test_guardrun_already_in_its_leaf_is_not_moved_again(tmp_path, kernel):
    root = fake_v2(tmp_path)
    box, leaf = root / "box", root / "box" / cgroupv2.LEAF
    leaf.mkdir()
    (leaf / "cgroup.procs").write_bytes(b"7\n")
    (box / "cgroup.procs").write_bytes(b"")
    inside = f"0::/box/{cgroupv2.LEAF}\n"
    assert cgroupv2.base_dir(root, inside) == box
    cgroupv2.enter(box, root, inside, pid=7)
    assert (leaf / "cgroup.procs").read_text() == "7\n" and (box / "cgroup.subtree_control").read_text() == "+memory"
    (box / "cgroup.subtree_control").write_bytes(b"")
    (box / "cgroup.procs").write_bytes(b"4242\n")  # someone else came in meanwhile: no second move
    with pytest.raises(cgroupfs.CgroupError, match="other processes share"):
        cgroupv2.enter(box, root, inside, pid=7)
    assert (leaf / "cgroup.procs").read_text() == "7\n"


def test_at_the_root_nothing_moves(tmp_path, kernel):
    root = fake_v2(tmp_path)
    (root / "cgroup.procs").write_bytes(b"1\n7\n")
    cgroupv2.enter(root, root, "0::/\n", pid=7)  # the real root is exempt from the rule
    assert (root / "cgroup.subtree_control").read_text() == "+memory"
    assert not (root / cgroupv2.LEAF).exists()


def test_containment_cgroup_is_refused_with_both_reasons(tmp_path):
    with pytest.raises(containment.ContainmentRequired) as err:
        containment.prepare(make_recipe(tmp_path, BASE + "containment: cgroup\n"), tmp_path, 1 << 30,
                            mount=tmp_path / "no-v1", root=fake_v2(tmp_path, "cpu"), self_cgroup=SELF)
    assert "cgroup v1: no cgroup v1 memory hierarchy" in str(err.value)
    assert "cgroup v2: the memory controller is not available in" in str(err.value)


# -- the readings and the kill switch -------------------------------------------------------

def fake_attempt(tmp_path: Path, kill_switch: bool = True) -> Path:
    group = tmp_path / "attempt-1"
    (group / "rank").mkdir(parents=True)
    (group / "memory.stat").write_text("anon 524288000\nfile 104857600\nkernel 1\nshmem 52428800\n"
                                       "anon_thp 0\n")
    (group / "memory.events").write_text("low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n")
    (group / "cgroup.procs").write_text("")
    (group / "rank" / "cgroup.procs").write_text("")
    if kill_switch:
        (group / "cgroup.kill").write_text("")
    return group


def test_readings_on_a_fake_attempt(tmp_path):
    group = cgroupv2.Group(fake_attempt(tmp_path))
    assert group.anon() == 524288000 + 52428800  # anon is the first line; not the page cache
    assert group.oom_kills() == 0
    (group.path / "memory.events").write_text("low 0\nhigh 9\nmax 4\noom 1\noom_kill 1\n")
    assert group.oom_kills() == 1
    assert cgroupv2.Group(tmp_path / "gone").oom_kills() == 0 and cgroupv2.Group(tmp_path / "gone").procs() == []
    group.set_limits(440, None)
    assert (group.path / "memory.max").read_text() == "440" and not (group.path / "memory.high").exists()
    group.close()


def test_parsers():
    assert cgroupv2.parse_self_cgroup("12:memory:/a\n0::/user.slice/x.scope\n") == "/user.slice/x.scope"
    assert cgroupv2.parse_self_cgroup("0::\n") == "/"
    assert cgroupv2.parse_self_cgroup("4:memory:/a\n") is None
    assert cgroupfs.parse_keyed("low 0\nhigh 12\nmax 3\noom 1\noom_kill 1\n")["oom_kill"] == 1
    assert cgroupfs.field(b"anon 5\nshmem 7\n", b"\nanon ") == 5
    assert cgroupfs.field(b"anon_thp 9\nanon 5\n", b"\nanon ") == 5
    assert cgroupfs.field(b"file 1\n", b"\nshmem ") == 0


def test_the_kill_switch_is_cgroup_kill_where_the_kernel_has_it(tmp_path):
    group = cgroupv2.Group(fake_attempt(tmp_path / "new"))
    assert group.kill_switch() and (group.path / "cgroup.kill").read_text() == "1"
    old = cgroupv2.Group(fake_attempt(tmp_path / "old", kill_switch=False))  # a kernel before 5.14
    assert not old.kill_switch() and not (old.path / "cgroup.kill").exists()
    assert not cgroupv1.Group(tmp_path / "v1").kill_switch()  # v1 has none: member by member


def test_a_recorded_path_is_trusted_only_for_this_jobs_name_in_a_guardrun_folder(tmp_path):
    state = tmp_path / "state" / "job"
    state.mkdir(parents=True)
    name = cgroupfs.job_name("job", state, UID)
    good = tmp_path / "elsewhere" / "guardrun" / name
    for path in (good, tmp_path / "guardrun" / "other-job", tmp_path / "x" / name):
        path.mkdir(parents=True)
        (path / "cgroup.procs").write_text("")
    for text, found in ((good, good), (tmp_path / "guardrun" / "other-job", None), (tmp_path / "x" / name, None),
                        ("relative/guardrun/" + name, None), (good.parent / ".." / "guardrun" / name, None),
                        (tmp_path / "gone" / "guardrun" / name, None)):
        cgroupfs.record(state, Path(text))
        assert cgroupfs.recorded("job", state, UID) == found, text
    assert cgroupfs.recorded("job", tmp_path / "no-state", UID) is None
    cgroupfs.record(state, good)
    cgroupfs.forget(state, tmp_path / "another")
    assert (state / "cgroup").exists()  # a newer record is kept
    cgroupfs.forget(state, good)
    assert not (state / "cgroup").exists()


def test_the_systemd_units_delegate_memory_to_guardrun():
    """So that under systemd the unit's own v2 cgroup can hand memory to the job cgroups
    (systemd-analyze verify checks the value: tests/integration/test_systemd.py)."""
    units = Path(__file__).resolve().parents[2] / "systemd"
    for unit in (units / "guardrun@.service", units / "user" / "guardrun@.service"):
        assert "Delegate=memory" in unit.read_text().splitlines(), unit

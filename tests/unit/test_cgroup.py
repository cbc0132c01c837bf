"""cgroup v2: detection, the scope command and the readers, against a fake cgroup tree.

This machine is cgroup v1 (hybrid) with no systemd running, so the real path cannot
run here: the readers are tested on files laid out as the kernel lays them out
(Documentation/admin-guide/cgroup-v2.rst), and detection must say procfs on this host.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guardrun.launcher.failures import Kind
from guardrun.supervisor.watch import cgroup

UID = 1000


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


SELF = f"0::/user.slice/user-{UID}.slice/session-3.scope\n"


def detect(root, env, self_cgroup=SELF, which=lambda name: f"/usr/bin/{name}"):
    return cgroup.detect(root, self_cgroup=self_cgroup, env=env, uid=UID, which=which)


def test_delegated_memory_controller_is_detected(tmp_path):
    root, env = fake_host(tmp_path)
    found = detect(root, env)
    assert found.cgroup_ok and found.kind == "procfs"  # detected; the loop does not use it yet
    assert "available" in found.reason


@pytest.mark.parametrize("change,reason", [
    ("v1", "no cgroup v2 hierarchy"),
    ("no-manager", "no systemd user manager"),
    ("no-memory", "memory controller is not delegated"),
    ("no-systemd-run", "systemd-run is not installed"),
    ("not-in-v2", "no 0:: line"),
])
def test_each_missing_piece_falls_back_to_procfs_and_says_why(change, reason, tmp_path):
    root, env = fake_host(tmp_path, "cpu pids" if change == "no-memory" else "cpu memory pids")
    if change == "v1":
        (root / "cgroup.controllers").unlink()
    if change == "no-manager":
        env = {}
    which = (lambda name: None) if change == "no-systemd-run" else (lambda name: f"/usr/bin/{name}")
    self_cgroup = "4:memory:/x\n" if change == "not-in-v2" else SELF
    found = detect(root, env, self_cgroup=self_cgroup, which=which)
    assert found.kind == "procfs" and not found.cgroup_ok
    assert reason in found.reason


def test_this_host_uses_procfs():
    found = cgroup.detect()
    assert found.kind == "procfs" and found.reason


def test_scope_command_wraps_the_launch_with_high_and_max():
    argv = cgroup.scope_argv("guardrun-job-1", 10 << 30, ["torchrun", "train.py"])
    assert argv[:6] == ["systemd-run", "--user", "--scope", "--quiet", "--collect",
                        "--unit=guardrun-job-1"]
    assert argv[6:10] == ["-p", f"MemoryHigh={10 << 30}", "-p", f"MemoryMax={11 << 30}"]
    assert argv[10:] == ["--", "torchrun", "train.py"]
    assert "-p" not in cgroup.scope_argv("u", None, ["python"])


def test_parsers():
    assert cgroup.parse_self_cgroup("12:memory:/a\n0::/user.slice/x.scope\n") == "/user.slice/x.scope"
    assert cgroup.parse_self_cgroup("0::\n") == "/"
    assert cgroup.parse_self_cgroup("4:memory:/a\n") is None
    assert cgroup.parse_keyed("low 0\nhigh 12\nmax 3\noom 1\noom_kill 1\n")["oom_kill"] == 1
    pressure = cgroup.parse_pressure("some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\n"
                                     "full avg10=0.75 avg60=0.10 avg300=0.00 total=678\n")
    assert pressure == cgroup.Pressure(1.5, 0.75, 12345, 678)


def test_an_oom_kill_in_the_cgroup_is_a_host_oom():
    assert cgroup.oom_kill_failure({"oom_kill": 2}, {"oom_kill": 2}) is None
    failure = cgroup.oom_kill_failure({"oom_kill": 0}, {"oom_kill": 1, "oom": 1})
    assert failure.kind is Kind.HOST_OOM
    assert "OOM-killed 1 process(es)" in failure.evidence and "memory.events" in failure.evidence


def fake_scope(tmp_path: Path, kill_switch: bool = True) -> Path:
    scope = tmp_path / "cgroup" / "user.slice" / "guardrun-job-1.scope"
    (scope / "child").mkdir(parents=True)
    (scope / "memory.current").write_text("734003200\n")
    (scope / "memory.stat").write_text("anon 524288000\nfile 104857600\nshmem 52428800\n")
    (scope / "memory.events").write_text("low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n")
    (scope / "memory.pressure").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                                           "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    (scope / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    (scope / "cgroup.procs").write_text("")
    (scope / "child" / "cgroup.procs").write_text("")
    if kill_switch:
        (scope / "cgroup.kill").write_text("")
    return scope


def test_reader_on_a_fake_scope(tmp_path):
    scope = cgroup.CgroupMemory(fake_scope(tmp_path))
    assert scope.current() == 734003200
    assert scope.anon() == 524288000 + 52428800  # page cache is not the job's own memory
    assert scope.events()["high"] == 3 and scope.populated()
    assert scope.pressure().some_avg10 == 0.0
    assert scope.kill() == "cgroup.kill"
    assert (scope.path / "cgroup.kill").read_text() == "1"


def test_without_cgroup_kill_each_process_gets_sigkill(tmp_path):
    path = fake_scope(tmp_path, kill_switch=False)
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                for _ in range(2)]
    (path / "cgroup.procs").write_text(f"{sleepers[0].pid}\n")
    (path / "child" / "cgroup.procs").write_text(f"{sleepers[1].pid}\n")
    scope = cgroup.CgroupMemory(path)
    assert sorted(scope.procs()) == sorted(p.pid for p in sleepers)
    assert scope.kill() == "SIGKILL each pid in cgroup.procs"
    assert [p.wait(timeout=10) for p in sleepers] == [-9, -9]


def test_cgroup_of_a_process(tmp_path):
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text("0::/user.slice/guardrun-job-1.scope\n")
    root = tmp_path / "cgroup"
    assert cgroup.cgroup_of(42, str(proc), root) == root / "user.slice" / "guardrun-job-1.scope"
    assert cgroup.cgroup_of(43, str(proc), root) is None


def test_v2_kernel_backstop_and_oom_counter_on_a_fake_scope(tmp_path):
    """issue 17: the v2 side of the questions containment asks of a job's cgroup."""
    scope = cgroup.CgroupMemory(fake_scope(tmp_path))
    assert scope.oom_kills() == 0
    (scope.path / "memory.events").write_text("low 0\nhigh 9\nmax 4\noom 1\noom_kill 1\n")
    assert scope.oom_kills() == 1
    scope.set_limits(400 << 20)
    assert (scope.path / "memory.high").read_text() == str(400 << 20)
    assert (scope.path / "memory.max").read_text() == str(int((400 << 20) * 1.1))
    assert cgroup.CgroupMemory(tmp_path / "gone").oom_kills() == 0
    assert sorted(scope.procs()) == []

"""`guardrun doctor` on machines built in a temp dir: a fake /proc, cgroup tree, /run/user,
linger folder and GPU source. Each test asserts the lines a user reads and the exit code."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from click.testing import CliRunner

from guardrun.launcher.gpus import GpuProcess
from guardrun.launcher.units import GIB
from guardrun.supervisor.cli import doctor
from guardrun.supervisor.cli.main import main
from guardrun.supervisor.cli.doctor import FAIL, OK, WARN, Machine
from guardrun.supervisor.watch.gpu import QUERIES, QueryChoice

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from fakes import FakeGpuSource  # noqa: E402

MEMINFO = "MemTotal:       {total} kB\nMemFree:        1000 kB\nMemAvailable:   {avail} kB\n" \
          "SwapTotal:      {swap} kB\nSwapFree:       {swapfree} kB\n"


def machine(tmp_path: Path, *, v2: bool = True, delegated: bool = True, manager: bool = True,
            linger: bool = True, ptrace: str | None = "1", avail_gib: int = 100, swap_used_gib: int = 0,
            tools=("tmux",)) -> Machine:
    proc, cg, run_user, linger_dir = (tmp_path / n for n in ("proc", "cgroup", "run", "linger"))
    for folder in (proc / "self", cg, run_user, linger_dir):
        folder.mkdir(parents=True, exist_ok=True)
    (proc / "meminfo").write_text(MEMINFO.format(total=128 << 20, avail=avail_gib << 20, swap=8 << 20,
                                                 swapfree=(8 - swap_used_gib) << 20))
    (proc / "self" / "cgroup").write_text("0::/user.slice/user-1000.slice/session-3.scope\n" if v2
                                          else "9:memory:/user.slice\n")
    if ptrace is not None:
        (proc / "sys/kernel/yama").mkdir(parents=True)
        (proc / "sys/kernel/yama/ptrace_scope").write_text(ptrace + "\n")
    if v2:
        (cg / "cgroup.controllers").write_text("cpu memory pids\n")
        manager_cg = cg / "user.slice/user-1000.slice/user@1000.service"
        manager_cg.mkdir(parents=True)
        (manager_cg / "cgroup.controllers").write_text("cpu memory pids\n" if delegated else "cpu pids\n")
    else:
        (cg / "memory").mkdir()
    runtime = run_user / "1000"
    if manager:
        (runtime / "systemd").mkdir(parents=True)
        (runtime / "systemd" / "private").write_text("")
    if linger:
        (linger_dir / "alice").write_text("")
    tool_paths = {name: f"/usr/bin/{name}" for name in (*tools, "systemd-run")}
    return Machine(proc=proc, cgroup_root=cg, run_user=run_user, linger=linger_dir, uid=1000, user="alice",
                   env={"XDG_RUNTIME_DIR": str(runtime)}, which=tool_paths.get)


def lines(checks) -> dict[str, tuple[str, str, str]]:
    return {c.name: (c.status, c.detail, c.fix) for c in checks}


def test_a_ready_gpu_server(tmp_path):
    source = FakeGpuSource(count=2, total=80 * GIB, used=lambda i: (0, 20 * GIB)[i],
                           procs={1: [GpuProcess(pid=4242, used=20 * GIB)]})
    checks = doctor.run(machine(tmp_path, ptrace="0"), source, lambda: "580.65.06", lambda: "/usr/bin/py-spy")
    got = lines(checks)
    assert got["gpu 0"] == (OK, "Fake H100, 80.0 GiB free of 80.0 GiB, idle", "")
    assert got["gpu 1"][0] == WARN
    assert got["gpu 1"][1] == "Fake H100, 60.0 GiB free of 80.0 GiB; used by pid 4242 (another container or user, 20.0 GiB)"
    assert got["driver"] == (OK, "NVIDIA driver 580.65.06 (NVML)", "")
    assert got["memory"] == (OK, "100.0 GiB available of 128.0 GiB", "")
    assert got["cgroup"] == (OK, "cgroup v2, memory controller delegated to your user manager", "")
    assert got["systemd"][0] == OK and got["linger"] == (OK, "enabled for alice: user units survive logout", "")
    assert got["ptrace"] == (OK, "kernel.yama.ptrace_scope = 0: stack dumps work", "")
    assert doctor.exit_code(checks) == 0
    assert checks[0].line() == "OK    gpu 0: Fake H100, 80.0 GiB free of 80.0 GiB, idle"


def test_a_cpu_box_with_cgroup_v1_and_no_user_manager_warns_but_passes(tmp_path):
    checks = doctor.run(machine(tmp_path, v2=False, manager=False, linger=False, tools=()), None,
                        lambda: None, lambda: None)
    got = lines(checks)
    assert got["gpu"][0] == WARN and got["gpu"][1].startswith("no NVIDIA driver")
    assert got["cgroup"][:2] == (WARN, "cgroup v1: no memory containment")
    assert "guardrun follows the job through /proc" in got["cgroup"][2]
    assert got["systemd"][0] == WARN and "guardrun tmux" in got["systemd"][2]
    assert got["linger"] == (WARN, "not enabled for alice: user units stop when you log out",
                             "loginctl enable-linger alice")
    assert got["tmux"] == (WARN, "not found", "apt install tmux: `guardrun tmux` keeps the live view when SSH drops")
    assert got["py-spy"][0] == WARN and "pip install py-spy" in got["py-spy"][2]
    assert got["ptrace"][0] == WARN and "sudo sysctl kernel.yama.ptrace_scope=0" in got["ptrace"][2]
    assert doctor.exit_code(checks) == 0


def test_a_loaded_driver_that_nvml_cannot_reach_fails(tmp_path):
    box = machine(tmp_path)
    (box.proc / "driver/nvidia").mkdir(parents=True)
    (box.proc / "driver/nvidia/version").write_text("NVRM version: 580.65.06\n")
    checks = doctor.gpu_checks(box, None)
    assert checks[0].status == FAIL and "driver/library version mismatch" in checks[0].fix
    assert doctor.exit_code(doctor.run(box, None, lambda: None, lambda: None)) == 1


def test_an_old_driver_says_which_process_query_it_answers(tmp_path):
    source = FakeGpuSource(process_query=QueryChoice(QUERIES[1]), procs={0: [GpuProcess(4242, GIB)]})
    got = lines(doctor.gpu_checks(machine(tmp_path), source, lambda: "470.256.02"))
    assert got["gpu processes"] == (OK, "driver before R510, using the v2 query", "")
    assert got["gpu 0"][1].endswith("used by pid 4242 (another container or user, 1.0 GiB)")


def test_no_process_query_is_a_warning_and_no_gpu_is_called_idle(tmp_path):
    source = FakeGpuSource(process_query=QueryChoice(None, "the driver's NVML has neither ..."))
    checks = doctor.gpu_checks(machine(tmp_path), source, lambda: "418.87.01")
    got = lines(checks)
    assert got["gpu 0"] == (OK, "Fake H100, 80.0 GiB free of 80.0 GiB, processes unknown", "")
    status, detail, fix = got["gpu processes"]
    assert (status, detail) == (WARN, "unavailable: the driver's NVML has neither ...")
    assert "VRAM is watched per GPU" in fix and "update the NVIDIA driver" in fix
    assert doctor.exit_code(checks) == 0


def test_memory_pressure_swap_and_undelegated_cgroup(tmp_path):
    got = lines(doctor.run(machine(tmp_path, avail_gib=5, swap_used_gib=6, delegated=False), None,
                           lambda: None, lambda: None))
    assert got["memory"][0] == WARN and "expect host_oom early" in got["memory"][2]
    assert got["swap"][:2] == (WARN, "6.0 GiB of 8.0 GiB in use")
    assert got["cgroup"][:2] == (WARN, "cgroup v2: the memory controller is not delegated to the user manager")


def test_no_meminfo_is_a_failure(tmp_path):
    box = machine(tmp_path)
    (box.proc / "meminfo").unlink()
    assert doctor.memory_checks(box.proc)[0].status == FAIL


def test_ptrace_scopes(tmp_path):
    for scope, fragment in (("2", "only root may ptrace"), ("3", "disabled until reboot")):
        box = machine(tmp_path / scope, ptrace=scope)
        check = doctor.ptrace_check(box.proc)
        assert check.status == WARN and fragment in check.fix
    assert doctor.ptrace_check(machine(tmp_path / "none", ptrace=None).proc).status == OK


def test_the_cli_prints_every_line_and_exits_0_without_a_fail():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code in (0, 1)
    names = [line.split(":")[0].split(maxsplit=1)[1] for line in result.output.splitlines()
             if line[:4] in ("OK  ", "WARN", "FAIL")]
    for name in ("memory", "swap", "cgroup", "systemd", "linger", "tmux", "py-spy", "ptrace"):
        assert name in names
    assert result.exit_code == (1 if "FAIL" in result.output else 0)


def test_a_writable_cgroup_v1_memory_hierarchy_is_containment(tmp_path):
    found = machine(tmp_path, v2=False, manager=False, linger=False, tools=())
    (found.proc / "self" / "cgroup").write_text("4:memory:/box\n0::/\n")
    (found.cgroup_root / "memory" / "box").mkdir(parents=True)
    (found.cgroup_root / "memory" / "memory.stat").write_text("total_rss 0\n")
    got = lines(doctor.run(found, None, lambda: None, lambda: None))
    assert got["cgroup"][:2] == (OK, "cgroup v1 memory controller writable: each job runs in a memory "
                                     "cgroup of its own (containment: auto), sampled in one read")


def test_a_delegated_cgroup_v2_subtree_is_containment(tmp_path):
    found = machine(tmp_path, v2=True, manager=False, linger=False, tools=())
    (found.proc / "self" / "cgroup").write_text("0::/system.slice/guardrun@demo.service\n")
    unit = found.cgroup_root / "system.slice" / "guardrun@demo.service"
    unit.mkdir(parents=True)
    (unit / "cgroup.controllers").write_text("cpu memory pids\n")
    (unit / "cgroup.subtree_control").write_text("")
    got = lines(doctor.run(found, None, lambda: None, lambda: None))
    assert got["cgroup"][0] == OK and "delegated to guardrun's own cgroup" in got["cgroup"][1]
    (unit / "cgroup.controllers").write_text("cpu pids\n")  # Delegate= without memory
    got = lines(doctor.run(found, None, lambda: None, lambda: None))
    assert got["cgroup"][0] == WARN

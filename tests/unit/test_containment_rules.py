"""Containment's decisions and the v1 readers, against fake cgroup trees in a temp dir (issue 17)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from guardrun.launcher.failures import Kind
from guardrun.launcher.recipe import RecipeError
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.core.context import Context
from guardrun.supervisor.run import attempt
from guardrun.supervisor.watch import cgroupv1, cgroupv2, containment
from guardrun.supervisor.watch.memory import ProcfsMemory
from guardrun.supervisor.watch.seams import RealProcesses
from guardrun.supervisor.run.policy import AttemptEnd, classify
from recipes_util import make_recipe

BASE = "launcher: python\nscript: train.py\n"
SELF = "4:memory:/session/7\n3:cpuset:/\n0::/\n"


def fake_v1(tmp_path: Path) -> Path:
    mount = tmp_path / "memory"
    (mount / "session" / "7").mkdir(parents=True)
    (mount / "memory.stat").write_text("total_rss 0\n")
    return mount


def test_hard_limit_defaults_to_host_memory_plus_ten_percent(tmp_path):
    gib = 1 << 30
    assert containment.hard_limit(make_recipe(tmp_path, BASE + "limits: {host_memory: 10GiB}\n"), gib) \
        == int(10 * gib * 1.1)
    assert containment.hard_limit(make_recipe(tmp_path, BASE), gib) is None
    assert containment.hard_limit(make_recipe(tmp_path, BASE + "limits: {host_memory: 1GiB, "
                                              "hard_memory: 'off'}\n"), gib) is None
    assert containment.hard_limit(make_recipe(tmp_path, BASE + "limits: {hard_memory: 50%}\n"),
                                  8 * gib) == 4 * gib


def test_bad_containment_and_hard_memory_name_file_and_line(tmp_path):
    with pytest.raises(RecipeError) as err:
        make_recipe(tmp_path, BASE + "containment: cgroups\n")
    assert ":3: containment: expected one of auto, cgroup, off" in str(err.value)
    assert "did you mean 'cgroup'" in str(err.value)
    with pytest.raises(RecipeError) as err:
        make_recipe(tmp_path, BASE + "limits:\n  hard_memory: lots\n")
    assert ":4: limits.hard_memory:" in str(err.value)
    assert make_recipe(tmp_path, BASE).containment == "auto"


def test_off_never_tries_and_no_hierarchy_falls_back_with_why(tmp_path):
    nothing = {"mount": tmp_path / "nothing", "root": tmp_path / "nothing"}
    off = containment.prepare(make_recipe(tmp_path, BASE + "containment: 'off'\n"), tmp_path, 1 << 30, **nothing)
    assert (off.job, off.kind, off.reason) == (None, "procfs", "containment: off in the recipe")
    auto = containment.prepare(make_recipe(tmp_path, BASE), tmp_path, 1 << 30, **nothing)
    assert auto.job is None and auto.kind == "procfs"
    assert auto.reason.startswith(f"cgroup v1: no cgroup v1 memory hierarchy at {tmp_path / 'nothing'}; "
                                  f"cgroup v2: this process's cgroup {tmp_path / 'nothing'}")
    with pytest.raises(containment.ContainmentRequired, match="containment: cgroup, but no cgroup"):
        containment.prepare(make_recipe(tmp_path, BASE + "containment: cgroup\n"), tmp_path, 1 << 30, **nothing)


def test_job_names_cannot_collide_across_users_or_state_dirs(tmp_path):
    one = cgroupv1.job_name("llava", tmp_path / "a", 1000)
    assert one.startswith("llava-u1000-")
    assert one != cgroupv1.job_name("llava", tmp_path / "a", 1001)
    assert one != cgroupv1.job_name("llava", tmp_path / "b", 1000)
    assert cgroupv1.job_name("../x y", tmp_path, 0).startswith(".._x_y-u0-")


def test_the_job_cgroup_sits_under_our_own_cgroup_in_a_guardrun_folder(tmp_path):
    mount = fake_v1(tmp_path)
    path = cgroupv1.JobCgroup.path_for("llava", tmp_path / "st", 0, mount, SELF)
    assert path.parent == mount / "session" / "7" / "guardrun"
    assert cgroupv1.own_path("9:name=systemd:/\n4:memory,blkio:/a\n") == "/a"
    assert cgroupv1.own_path("0::/user.slice\n") is None


def test_v1_readers_on_a_fake_cgroup(tmp_path):
    group = cgroupv1.Group(tmp_path / "g")
    (group.path / "child").mkdir(parents=True)
    (group.path / "memory.stat").write_text("cache 4096\nrss 100\ntotal_cache 999999\n"
                                            "total_rss 1048576\ntotal_shmem 4096\ntotal_mapped_file 8192\n")
    (group.path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (group.path / "cgroup.procs").write_text("10\n11\n")
    (group.path / "child" / "cgroup.procs").write_text("12\n")
    assert group.anon() == 1048576 + 4096  # not the page cache
    assert group.oom_kills() == 2
    assert sorted(group.procs()) == [10, 11, 12]
    assert cgroupv1.Group(tmp_path / "gone").procs() == [] and cgroupv1.Group(tmp_path / "gone").oom_kills() == 0


def test_a_kernel_oom_kill_in_the_cgroup_is_host_oom_whatever_the_output_said():
    evidence = "the kernel OOM-killed 1 process(es) in the job's cgroup at the hard limit 440 MiB"
    found = classify(AttemptEnd(exit_code=1, kernel_oom=evidence))
    assert (found.kind, found.evidence) == (Kind.HOST_OOM, evidence)
    assert classify(AttemptEnd(exit_code=0, kernel_oom=evidence)) is None  # a worker killed, the job coped
    assert classify(AttemptEnd(exit_code=-9, interrupted=True, kernel_oom=evidence)).kind is Kind.INTERRUPTED
    saving = classify(AttemptEnd(exit_code=-9, kernel_oom=evidence, incomplete_save="checkpoint-4 is incomplete"))
    assert saving.kind is Kind.SAVE_FAILED


def test_a_cgroup_that_cannot_be_read_falls_back_to_proc_and_says_why(tmp_path):
    group = cgroupv1.Group(tmp_path / "attempt-1")
    group.path.mkdir()
    (group.path / "memory.stat").write_text("cache 1\ntotal_rss 8192\ntotal_shmem 4096\n")
    said = []
    memory = containment.CgroupMemory(group, ProcfsMemory(), said.append)
    assert memory.sample_tree(os.getpid()).anon == 12288
    group.close()
    (group.path / "memory.stat").unlink()  # removed under the watch (another root, a cleanup)
    sample = memory.sample_tree(os.getpid())
    assert sample.pids[0] == os.getpid() and sample.anon > 0  # this process, through /proc
    assert memory.failed.startswith(f"cannot read {group.path / 'memory.stat'}")
    assert said == [memory.failed]
    assert memory.pss([os.getpid()]) > 0


def test_a_launcher_that_cannot_join_its_cgroup_runs_without_it_and_says_why(tmp_path):
    said, emitted = [], []
    box = containment.Containment(None, "cgroup v1", "test")
    ctx = Context(MonotonicClock(), lambda name, **fields: emitted.append((name, fields)), said.append)
    watch = SimpleNamespace(containment=box, ctx=ctx.for_attempt(1), processes=RealProcesses())
    spec = SimpleNamespace(argv=(sys.executable, "-c", "pass"), cwd=tmp_path)
    gone = cgroupv1.Group(tmp_path / "no-such-cgroup")
    popen, group = attempt._spawn(spec, dict(os.environ), 1, gone, watch)
    popen.communicate(timeout=30)
    assert popen.returncode == 0 and group is None
    assert said and said[0].startswith(f"containment: the launcher could not join {gone.path}")
    assert emitted[0][0] == "cgroup.fallback" and "watched through /proc" in emitted[0][1]["why"]
    assert emitted[0][1]["attempt"] == 1


@pytest.mark.parametrize("version, counter, text", [
    (cgroupv1, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
    (cgroupv2, "memory.events", "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\n"),
])
def test_the_kernels_oom_kills_are_evidence_naming_that_versions_counter(tmp_path, version, counter, text):
    group = version.Group(tmp_path / "attempt-1")
    group.path.mkdir()
    (group.path / counter).write_text(text)
    emitted = []
    box = containment.Containment(None, "cgroup", "test", hard_limit=1 << 30)
    watch = SimpleNamespace(containment=box, ctx=Context(MonotonicClock(), lambda name, **fields:
                                                         emitted.append((name, fields)), print))
    evidence = attempt._kernel_oom(group, watch)
    assert evidence == f"the kernel OOM-killed 2 process(es) in the job's cgroup at the hard limit 1.0 GiB ({counter} oom_kill)"
    assert ("cgroup.oom_kill", {"path": str(group.path), "kills": 2, "hard_limit": 1 << 30}) in emitted

"""GPU awareness without a GPU: the pure choices, a fake /proc for the holder scan, and
the watch and loop driven by FakeGpuSource."""
from __future__ import annotations

import ctypes
import io
import json
import os
import struct
import sys
import textwrap

import pynvml
import pytest

from guardrun.launcher.failures import Kind
from guardrun.launcher.gpus import GpuProcess, GpuReading, allowed_indices, check_explicit, pick_gpus
from guardrun.launcher.units import GIB, parse_size
from guardrun.supervisor.watch import gpu as gpu_module
from guardrun.supervisor.watch import proc
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.watch.gpu import (NamespacePids, gpu_holders, open_gpu_source, tagged_pids,
                                     wait_gpus_released)
from guardrun.supervisor.watch.gpuwatch import GpuMonitor, describe_vram
from guardrun.supervisor.record.journal import Journal
from guardrun.supervisor.run.loop import Supervisor
from guardrun.supervisor.run.policy import MemoryLimits, MemoryReading, judge, judge_vram

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from fakes import FakeClock, FakeGpuSource  # noqa: E402
from recipes_util import make_recipe  # noqa: E402


def gpu(index: int, used_gib: float, total_gib: int = 80) -> GpuReading:
    return GpuReading(index, f"GPU-{index:04d}", "H100", int(used_gib * GIB), total_gib * GIB)


# -- choosing GPUs ---------------------------------------------------------------------------

EIGHT = [gpu(0, 0.5), gpu(1, 40), gpu(2, 0.5), gpu(3, 10), gpu(4, 0.5), gpu(5, 0.5), gpu(6, 0.5), gpu(7, 2)]
OTHERS = {1: [GpuProcess(4242, 39 * GIB)], 3: [GpuProcess(5151, None)]}


def test_six_of_eight_skips_other_users_gpus_and_prefers_free_memory():
    choice = pick_gpus(EIGHT, OTHERS, own_pids=set(), count=6)
    # gpu1 and gpu3 hold other processes; gpu7's 2 GiB with no process shown is someone
    # NVML cannot show us: only 5 are free.
    assert not choice.ok
    assert choice.reason.startswith("5 of 8 GPU(s) free, 6 needed: gpu1 is used by pid 4242 (39.0 GiB)")
    assert "gpu3 is used by pid 5151;" in choice.reason
    assert "gpu7 has 2.0 GiB in use by processes NVML does not show" in choice.reason
    assert pick_gpus(EIGHT, OTHERS, set(), count=5).ids == (0, 2, 4, 5, 6)


def test_most_free_memory_first_ties_to_the_lower_index_and_own_pids_do_not_count():
    readings = [gpu(0, 0.9), gpu(1, 0.2), gpu(2, 0.5), gpu(3, 0.2)]
    assert pick_gpus(readings, {}, set(), count=2).ids == (1, 3)
    mine = {0: [GpuProcess(77, 0)]}
    assert pick_gpus(readings, mine, own_pids={77}, count=4).ids == (0, 1, 2, 3)
    assert pick_gpus(readings, mine, own_pids=set(), count=4).reason.startswith("3 of 4 GPU(s) free")


def test_more_gpus_than_the_machine_has_and_allowed_subset():
    choice = pick_gpus([gpu(0, 0.5)], {}, set(), count=2)
    assert choice.reason == "the recipe asks for 2 GPU(s), this machine has 1 GPU(s)"
    assert pick_gpus(EIGHT, OTHERS, set(), count=2, allowed=(4, 6)).ids == (4, 6)
    choice = pick_gpus(EIGHT, OTHERS, set(), count=3, allowed=(4, 6))
    assert choice.reason.endswith("this machine has 2 GPU(s) allowed by CUDA_VISIBLE_DEVICES")


def test_explicit_list_is_taken_with_warnings():
    warnings = check_explicit((0, 1, 9), EIGHT, OTHERS, own_pids=set())
    assert warnings == ["gpu1 is used by pid 4242 (39.0 GiB); 40.0 GiB free",
                        "gpu9 is in the recipe but NVML does not list it (GPUs here: 0, 1, 2, 3, 4, 5, 6, 7)"]
    assert check_explicit((0, 2), EIGHT, OTHERS, set()) == []


@pytest.mark.parametrize("visible,expected", [
    (None, None), ("", ()), ("2,3", (2, 3)), ("3, 2", (3, 2)), ("GPU-0005", (5,)),
    ("1,bogus,2", (1,)), ("9", ()), ("GPU-000", ()),  # a prefix matching several is invalid
])
def test_cuda_visible_devices_given_to_guardrun(visible, expected):
    assert allowed_indices(visible, EIGHT) == expected


# -- judging VRAM ------------------------------------------------------------------------------

def test_vram_over_the_limit_on_the_jobs_gpu_is_cuda_oom():
    readings = [gpu(0, 79), gpu(1, 76.5)]
    procs = {0: [GpuProcess(10, 78 * GIB)], 1: [GpuProcess(20, 70 * GIB), GpuProcess(21, 6 * GIB)]}
    verdict = judge_vram(readings, procs, job_pids={20, 21}, limit=parse_size("95%"))
    assert verdict.failure.kind is Kind.CUDA_OOM
    assert verdict.failure.evidence == ("gpu1 VRAM 76.5 GiB of 80.0 GiB reached the limit 76.0 GiB (95%); "
                                        "the job's processes hold 76.0 GiB")
    # gpu0 is fuller, but not the job's: someone else's problem
    assert not judge_vram(readings, procs, job_pids={20}, limit=parse_size("97%")).stop
    assert not judge_vram(readings, procs, job_pids={20}, limit=None).stop


def test_assigned_gpu_counts_before_nvml_shows_the_job_and_sizes_work():
    verdict = judge_vram([gpu(0, 30.5)], {}, job_pids=set(), limit=parse_size("30GiB"), assigned=(0,))
    assert verdict.failure.evidence == "gpu0 VRAM 30.5 GiB of 80.0 GiB reached the limit 30.0 GiB (30GiB)"
    assert not judge_vram([gpu(0, 30.5)], {}, job_pids=set(), limit=parse_size("30GiB")).stop


# -- who holds a GPU: a fake /proc with real symlinks --------------------------------------------

def fake_proc(root, pid: int, fds: dict[int, str] = None, env: dict[str, str] = None, nspid=None):
    base = root / str(pid)
    (base / "fd").mkdir(parents=True)
    for fd, target in (fds or {}).items():
        os.symlink(target, base / "fd" / str(fd))
    environ = "".join(f"{k}={v}\0" for k, v in (env or {}).items())
    (base / "environ").write_bytes(environ.encode())
    (base / "status").write_text(f"Name:\tpython\nNSpid:\t{' '.join(map(str, nspid or [pid]))}\n")
    return base


def test_holders_scan_finds_dev_nvidia_links_only(tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 100, {0: "/dev/pts/0", 3: "/dev/nvidiactl", 4: "/dev/nvidia0", 5: "/dev/nvidia-uvm"})
    fake_proc(proc, 101, {0: "/dev/null", 7: "socket:[1234]"})
    fake_proc(proc, 102, {9: "/dev/nvidia1"})
    (proc / "self").mkdir()
    holders = gpu_holders(None, str(proc))
    assert holders == {100: ("/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidiactl"), 102: ("/dev/nvidia1",)}
    assert gpu_holders([101, 102, 999], str(proc)) == {102: ("/dev/nvidia1",)}  # 999: gone


def test_job_processes_are_known_by_their_environment(tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 200, env={"GUARDRUN_JOB": "llava", "GUARDRUN_ATTEMPT": "2"})
    fake_proc(proc, 201, env={"GUARDRUN_JOB": "llava", "GUARDRUN_ATTEMPT": "3"})
    fake_proc(proc, 202, env={"GUARDRUN_JOB": "llava-big", "GUARDRUN_ATTEMPT": "2"})
    assert tagged_pids("llava", str(proc)) == {200, 201}
    assert tagged_pids("llava", str(proc), attempt=2) == {200}
    assert tagged_pids("llava", str(proc), pids=[201, 202, 404]) == {201}


def test_nvml_pids_are_mapped_through_nspid_inside_a_pid_namespace(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text("NSpid:\t5000\t1\n")  # guardrun: host pid 5000, pid 1 inside
    fake_proc(proc, 5000, nspid=[5000, 1])
    fake_proc(proc, 5003, nspid=[5003, 4])
    fake_proc(proc, 6000)  # a host process outside guardrun's namespace
    pids = NamespacePids(str(proc))
    assert (pids.depth, pids.local(4), pids.local(6000), pids.local(77)) == (2, 5003, 6000, 77)
    (proc / "self" / "status").write_text("NSpid:\t5000\n")
    assert NamespacePids(str(proc)).local(4) == 4  # the procfs is guardrun's own: no mapping


class ReleasingClock(FakeClock):
    """A fake clock whose sleeps let the world move: `on_sleep(n)` runs after the n-th."""

    def __init__(self, on_sleep):
        super().__init__()
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.on_sleep(len(self.sleeps))


def test_wait_until_the_old_attempts_fds_and_nvml_entries_are_gone(tmp_path):
    proc = tmp_path / "proc"
    base = fake_proc(proc, 300, {4: "/dev/nvidia0"}, env={"GUARDRUN_JOB": "j", "GUARDRUN_ATTEMPT": "1"})
    source = FakeGpuSource(procs={0: [GpuProcess(301, 2 * GIB)]})  # exited, driver still tearing down

    def world(sleeps: int) -> None:
        if sleeps == 3:
            os.unlink(base / "fd" / "4")
        if sleeps == 5:
            source.procs = {}
    clock = ReleasingClock(world)
    seen = []
    release = wait_gpus_released("j", clock, timeout=60, source=source, nvml_pids={301}, proc_root=str(proc),
                                 interval=0.25, on_wait=lambda held, waited: seen.append(sorted(held)))
    assert release.stuck == {} and release.waited == pytest.approx(1.25)
    assert seen[0] == [300, 301] and seen[-1] == [301]


def test_wait_times_out_naming_the_stuck_pid(tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 400, {4: "/dev/nvidia3"}, env={"GUARDRUN_JOB": "j", "GUARDRUN_ATTEMPT": "1"})
    fake_proc(proc, 401, {4: "/dev/nvidia3"}, env={"GUARDRUN_JOB": "other"})
    release = wait_gpus_released("j", FakeClock(), timeout=10, proc_root=str(proc))
    assert release.stuck == {400: "has /dev/nvidia3 open"} and release.waited == pytest.approx(10)


def test_the_guard_waits_as_long_as_the_recipe_says_then_names_the_stuck_pid(tmp_path):
    from guardrun.supervisor.core.context import Context
    from guardrun.supervisor.watch.gpuwatch import GpuGuard
    recipe = make_recipe(tmp_path, """
        launcher: python
        script: train.py
        limits: {gpu_release: 7s}
        """)
    proc = tmp_path / "proc"
    fake_proc(proc, 400, {4: "/dev/nvidia3"}, env={"GUARDRUN_JOB": recipe.name, "GUARDRUN_ATTEMPT": "1"})
    events = []
    console = Console(io.StringIO(), tty=False)
    ctx = Context(FakeClock(), lambda event, **fields: events.append((event, fields)), console.say)
    guard = GpuGuard(FakeGpuSource(), recipe, ctx, console, str(proc))
    why = guard.await_release().why
    assert why.startswith("GPU memory still held 7s after the last attempt ended: pid 400 has /dev/nvidia3")
    assert "limits.gpu_release" in why
    assert events[-1][0] == "gpu.stuck" and events[-1][1]["waited"] == pytest.approx(7)


def test_no_driver_means_no_source_and_a_reason():
    source, why = open_gpu_source()
    if source is not None:
        pytest.skip("this machine has an NVIDIA GPU")
    assert why.startswith("no GPU: ") and len(why) > len("no GPU: ")


# -- the watch: one snapshot per interval -----------------------------------------------------

def test_monitor_stops_for_cuda_oom_and_shows_vram(tmp_path):
    proc = tmp_path / "proc"
    fake_proc(proc, 500, env={"GUARDRUN_JOB": "j", "GUARDRUN_ATTEMPT": "4"})
    fake_proc(proc, 501, env={"GUARDRUN_JOB": "j", "GUARDRUN_ATTEMPT": "3"})  # last attempt's
    used = iter([30.1, 60, 76.1])
    source = FakeGpuSource(count=2, used=lambda i: int(next(used) * GIB) if i == 1 else GIB // 2,
                           procs={1: [GpuProcess(500, 29 * GIB), GpuProcess(501, GIB)]})
    monitor = GpuMonitor(source, "j", 4, parse_size("95%"), proc_root=str(proc))
    host = MemoryReading(tree_fast=GIB, available=100 * GIB)
    no_limits = MemoryLimits(None, None)
    assert not judge(host, no_limits, monitor.sample()).stop
    assert monitor.describe() == "gpu1 30.1/80 GiB" and monitor.job_pids == {500}
    assert not judge(host, no_limits, monitor.sample()).stop
    verdict = judge(host, no_limits, monitor.sample())
    assert verdict.failure.kind is Kind.CUDA_OOM and verdict.failure.evidence.startswith("gpu1 VRAM 76.1 GiB")
    assert monitor.peaks == {1: int(76.1 * GIB)}
    source.fail = "GPU is lost"
    assert monitor.sample() is None and monitor.error == "GPU is lost"
    assert describe_vram([gpu(0, 0.47), gpu(3, 79.6)]) == "gpu0 0.5/80 GiB · gpu3 79.6/80 GiB"


JOB = """
import os, sys, time
batch = int(sys.argv[sys.argv.index("--per_device_train_batch_size") + 1])
print("visible", os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("CUDA_DEVICE_ORDER"), "batch", batch, flush=True)
with open({vram!r}, "w") as f:
    f.write(f"{{os.getpid()}} {{batch * 10}}")   # 10 GiB per sample on the fake card
if batch > 4:
    time.sleep(60)                    # holds on until guardrun stops it
print("{{'loss': 0.5, 'epoch': 1.0}}", flush=True)
"""


def test_loop_picks_a_free_gpu_stops_on_vram_and_halves_the_batch(tmp_path, state_dir, monkeypatch):
    monkeypatch.setattr(proc, "set_child_subreaper", lambda: None)  # pytest must not adopt
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    vram = tmp_path / "vram"
    vram.write_text("0 0")

    def used(index: int) -> int:
        """gpu1 holds what the job wrote while the job lives: the driver frees it at exit."""
        if index == 0:
            return 3 * GIB
        pid, gib = map(int, vram.read_text().split())
        return gib * GIB if pid and os.path.exists(f"/proc/{pid}") else 0
    (tmp_path / "job.py").write_text(JOB.format(vram=str(vram)))
    recipe = make_recipe(tmp_path, """
        launcher: python
        script: job.py
        gpus: 1
        batch: {per_device: 8}
        limits: {vram: 90%}
        monitor: {interval: 0.05}
        stop_grace: 5s
        restarts: {max: 3, backoff: [0.1s, 0.2s]}
        """, script="unused.py")
    source = FakeGpuSource(count=2, used=used, procs={0: [GpuProcess(999999, 3 * GIB)]})
    out = io.StringIO()
    journal = Journal(recipe.name)
    code = Supervisor(recipe, journal, Console(out, tty=False, plain_every=0), MonotonicClock(),
                      gpus=source).run()
    journal.close()
    text = out.getvalue()
    assert code == 0, text
    assert "GPUs chosen: 1" in text and "[1] visible 1 PCI_BUS_ID batch 8" in text
    assert "gpu1 80.0/80 GiB" in text  # the status line's VRAM
    assert "attempt 1 ended: cuda_oom (gpu1 VRAM 80.0 GiB of 80.0 GiB reached the limit 72.0 GiB (90%))" in text
    assert "attempt 2: rung 2, 1 rank(s), micro-batch 4 × accumulation 2" in text
    assert "[2] visible 1 PCI_BUS_ID batch 4" in text and text.rstrip().endswith("the job finished")


def test_loop_gives_up_when_no_gpu_is_free_and_says_how_to_wait(tmp_path, state_dir, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    recipe = make_recipe(tmp_path, textwrap.dedent("""
        launcher: python
        script: train.py
        gpus: 1
        """))
    source = FakeGpuSource(count=1, procs={0: [GpuProcess(999999, 20 * GIB)]})
    out = io.StringIO()
    journal = Journal(recipe.name)
    code = Supervisor(recipe, journal, Console(out, tty=False), FakeClock(), gpus=source).run()
    journal.close()
    assert code == 1
    assert ("giving up: not enough free GPUs (set wait_for_gpus to wait for them): "
            "0 of 1 GPU(s) free, 1 needed: gpu0 is used by pid 999999 (20.0 GiB)") in out.getvalue()


def run_supervisor(recipe, source, clock) -> tuple[int, str, list[dict]]:
    out = io.StringIO()
    journal = Journal(recipe.name)
    code = Supervisor(recipe, journal, Console(out, tty=False, plain_every=0), clock, gpus=source).run()
    journal.close()
    events = [json.loads(line) for line in (journal.dir / "events.jsonl").read_text().splitlines()]
    return code, out.getvalue(), events


def test_wait_for_gpus_waits_with_a_status_line_until_one_is_free(tmp_path, state_dir, monkeypatch):
    monkeypatch.setattr(proc, "set_child_subreaper", lambda: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "job.py").write_text("import os; print('on', os.environ['CUDA_VISIBLE_DEVICES'])\n")
    recipe = make_recipe(tmp_path, "launcher: python\nscript: job.py\ngpus: 1\nwait_for_gpus: 1m\n",
                         script="unused.py")
    source = FakeGpuSource(count=1, procs={0: [GpuProcess(999999, 20 * GIB)]})
    clock = ReleasingClock(lambda sleeps: sleeps == 30 and source.procs.clear())  # the other job ends at 6 s
    code, text, events = run_supervisor(recipe, source, clock)
    assert code == 0, text
    assert ("waiting for 1 free GPU(s), 60s left: 0 of 1 GPU(s) free, 1 needed: "
            "gpu0 is used by pid 999999 (20.0 GiB)") in text
    assert "GPUs chosen: 0" in text and "[1] on 0" in text
    [chosen] = [e for e in events if e["event"] == "guardrun.gpu.chosen"]
    assert chosen["gpus"] == [0] and chosen["waited"] == pytest.approx(10.0)  # seen at the next look


def test_wait_for_gpus_gives_up_after_the_wait(tmp_path, state_dir, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    recipe = make_recipe(tmp_path, "launcher: python\nscript: train.py\ngpus: 2\nwait_for_gpus: 30s\n")
    source = FakeGpuSource(count=2, procs={1: [GpuProcess(999999, None)]})
    code, text, _events = run_supervisor(recipe, source, FakeClock())
    assert code == 1
    assert ("giving up: not enough free GPUs after waiting 30s: 1 of 2 GPU(s) free, 2 needed: "
            "gpu1 is used by pid 999999") in text


# -- NVML's process query on old drivers (the real library path: tests/faults/test_nvml_old_driver.py)

V3, V2, V1 = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
              "nvmlDeviceGetComputeRunningProcesses")
#: The entries as NVML's headers lay them out, packed here independently of gpu.py's structs.
LAYOUT = {V3: "=I4xQII", V2: "=I4xQII", V1: "=I4xQ"}
QUERY_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p)


class FakeNvml:
    """pynvml's symbol lookup answering from C-callable fakes: `lists[symbol]` gives, per call,
    the processes the driver has then ((pid, used) pairs); a symbol not in it is missing."""

    def __init__(self, monkeypatch, lists, fail: int = 0):
        self.lists, self.fail, self.looked_up, self._keep = lists, fail, [], {}
        monkeypatch.setattr(gpu_module, "_choice", None)
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer", self.lookup)

    def lookup(self, name):
        self.looked_up.append(name)
        if name not in self.lists:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if name not in self._keep:  # the C callable must outlive the call
            self._keep[name] = QUERY_FN(lambda handle, count, entries: self.call(name, count, entries))
        return self._keep[name]

    def call(self, name, count, entries) -> int:
        if self.fail:
            return self.fail
        running = self.lists[name]() if callable(self.lists[name]) else self.lists[name]
        if entries is None or count[0] < len(running):
            count[0] = len(running)
            return pynvml.NVML_SUCCESS if not running else pynvml.NVML_ERROR_INSUFFICIENT_SIZE
        size = struct.calcsize(LAYOUT[name])
        for i, (pid, used) in enumerate(running):
            extra = (0xFFFFFFFF, 0xFFFFFFFF) if name != V1 else ()
            ctypes.memmove(entries + i * size, struct.pack(LAYOUT[name], pid, used, *extra), size)
        count[0] = len(running)
        return pynvml.NVML_SUCCESS


NOT_AVAILABLE = (1 << 64) - 1


def test_process_query_falls_back_to_v2_and_remembers_it(monkeypatch):
    nvml = FakeNvml(monkeypatch, {V2: [(11, GIB), (12, NOT_AVAILABLE)]})
    assert gpu_module.running_processes(None) == [(11, GIB), (12, None)]
    assert nvml.looked_up == [V3, V2]
    assert gpu_module._choice.note == "driver before R510, using the v2 query"
    assert gpu_module.running_processes(None) == [(11, GIB), (12, None)]
    assert nvml.looked_up == [V3, V2, V2]  # v3 is not asked again


def test_v1_entries_are_read_with_the_16_byte_struct(monkeypatch):
    FakeNvml(monkeypatch, {V1: [(21, 1 * GIB), (22, 2 * GIB), (23, 3 * GIB)]})
    assert gpu_module.running_processes(None) == [(21, GIB), (22, 2 * GIB), (23, 3 * GIB)]
    assert gpu_module._choice.query.version == "v1"


def test_v3_is_used_when_the_driver_has_it(monkeypatch):
    nvml = FakeNvml(monkeypatch, {V3: [(31, GIB)], V2: [(99, GIB)], V1: [(98, GIB)]})
    assert gpu_module.running_processes(None) == [(31, GIB)]
    assert nvml.looked_up == [V3] and gpu_module._choice.note == "NVML's v3 query"


def test_processes_started_between_the_two_calls_are_asked_for_again(monkeypatch):
    counts = iter([2, 12, 12])  # 2 at the sizing call; 12 by the time the array of 9 is passed
    FakeNvml(monkeypatch, {V3: lambda: [(100 + i, GIB) for i in range(next(counts))]})
    assert [pid for pid, _used in gpu_module.running_processes(None)] == list(range(100, 112))


def test_no_process_query_lists_nothing_and_says_why(monkeypatch):
    nvml = FakeNvml(monkeypatch, {})
    assert gpu_module.running_processes(None) == []
    assert gpu_module._choice.query is None
    assert gpu_module._choice.note == ("unavailable: the driver's NVML has neither nvmlDeviceGetComputeRunning"
                                       "Processes_v3, _v2 nor the v1 one (Function Not Found)")
    assert gpu_module.running_processes(None) == [] and nvml.looked_up == [V3, V2, V1]


def test_a_gpu_error_from_a_found_query_is_raised_and_nothing_is_remembered(monkeypatch):
    FakeNvml(monkeypatch, {V3: [(1, GIB)]}, fail=pynvml.NVML_ERROR_GPU_IS_LOST)
    with pytest.raises(pynvml.nvmlExceptionClass(pynvml.NVML_ERROR_GPU_IS_LOST)):
        gpu_module.running_processes(None)
    assert gpu_module._choice is None


def test_a_library_mismatch_is_no_gpu_not_a_traceback(monkeypatch):
    """NVMLLibraryMismatchError is not an NVMLError: it must still mean "no GPU"."""
    def mismatch(*_args):
        raise pynvml.NVMLLibraryMismatchError("Unversioned function called ...")
    assert not issubclass(pynvml.NVMLLibraryMismatchError, pynvml.NVMLError)
    monkeypatch.setattr(gpu_module, "_initialised", False)
    monkeypatch.setattr(pynvml, "nvmlInit", mismatch)
    monkeypatch.setattr(pynvml, "nvmlSystemGetDriverVersion", mismatch)
    source, why = open_gpu_source()
    assert source is None and why == "no GPU: Unversioned function called ..."
    assert gpu_module.driver_version() is None

"""GPU awareness on a real NVIDIA GPU: NVML readings, the /dev/nvidia* holder scan, a VRAM
limit stopping a growing torch job, and a real CUDA OOM walked down the ladder.

Skipped without a GPU (NVML cannot initialise, or torch has no CUDA). Each test prints
`GPU-CHECK` lines with what it measured; tests/gpu/run_gpu_checks.sh shows them.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


from needs_gpu import GUARDRUN, pytestmark  # noqa: F401 (skips the module without a GPU)

from conftest import wait_until

from guardrun.launcher.units import GIB, format_bytes
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.watch.gpu import gpu_holders, open_gpu_source, wait_gpus_released

HERE = Path(__file__).resolve().parent



HOLD = """
import os, sys, time, torch
x = torch.empty(int(sys.argv[1]) << 30, dtype=torch.uint8, device="cuda"); x.fill_(1)
torch.cuda.synchronize()
if len(sys.argv) > 2 and os.fork() == 0:   # a loader worker: inherits the fds, no CUDA of its own
    print("worker", os.getpid(), flush=True)
    time.sleep(600)
    os._exit(0)
print("ready", os.getpid(), flush=True)
time.sleep(600)
"""


def report(what: str, **numbers) -> None:
    print(f"\nGPU-CHECK {what}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)


def tagged_env(job: str) -> dict:
    return {**os.environ, "GUARDRUN_JOB": job, "GUARDRUN_ATTEMPT": "1"}


def test_nvml_sees_a_torch_process_and_the_release_is_waited_for():
    source, why = open_gpu_source()
    before = source.devices()[0]
    report("nvml", gpus=why, gpu0_used=before.used, gpu0_total=before.total)
    child = subprocess.Popen([sys.executable, "-c", HOLD, "4"], stdout=subprocess.PIPE, text=True,
                             env=tagged_env("hold"))
    try:
        pid = int(child.stdout.readline().split()[1])
        listed = {p.pid: p.used for p in source.processes(0)}
        during = source.devices()[0]
        holders = gpu_holders([pid])
        report("torch process", pid=pid, nvml_used=listed.get(pid), device_used=during.used,
               holds=holders.get(pid))
        assert listed[pid] >= 4 * GIB and during.used - before.used >= 4 * GIB
        assert any(dev.startswith("/dev/nvidia") for dev in holders[pid])
    finally:
        child.kill()
        child.wait()
    clock = MonotonicClock()
    release = wait_gpus_released("hold", clock, timeout=30, source=source, nvml_pids={pid}, interval=0.01)
    after = source.devices()[0]
    report("release after SIGKILL", waited_s=round(release.waited, 3), device_used=after.used)
    assert release.stuck == {} and pid not in {p.pid for p in source.processes(0)}


def test_orphaned_worker_holding_the_device_is_named():
    source, _ = open_gpu_source()
    parent = subprocess.Popen([sys.executable, "-c", HOLD, "2", "fork"], stdout=subprocess.PIPE, text=True,
                              env=tagged_env("orphan"), start_new_session=True)
    lines = [parent.stdout.readline().split() for _ in range(2)]
    worker = int(next(words[1] for words in lines if words[0] == "worker"))
    try:
        parent.kill()
        parent.wait()
        time.sleep(1.0)  # let the driver do what it will with the parent's context
        listed = {p.pid: p.used for p in source.processes(0)}
        release = wait_gpus_released("orphan", MonotonicClock(), timeout=2.0, source=source)
        report("orphaned worker", worker=worker, nvml_lists=listed, device_used=source.devices()[0].used,
               stuck=release.stuck)
        assert worker in release.stuck and release.stuck[worker].startswith("has /dev/nvidia")
    finally:
        os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not wait_gpus_released("orphan", MonotonicClock(), 0).stuck, 30, what="release")


def write_recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def events(state_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (state_dir / "job" / "events.jsonl").read_text().splitlines()]


def named(evts: list[dict], name: str) -> list[dict]:
    return [e for e in evts if e["event"] == f"guardrun.{name}"]


def test_vram_limit_stops_a_growing_torch_job(tmp_path, state_dir):
    interval = 0.25
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        script: {HERE / 'vram_grow.py'}
        args: [--mark-fraction, "0.5", --chunk-mib, "256"]
        limits: {{vram: 50%}}
        monitor: {{interval: {interval}}}
        stop_grace: 10s
        ladder: []
        """)
    started = time.monotonic()
    result = subprocess.run([GUARDRUN, "run", str(recipe)], capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    crossed = float(re.search(r"crossed 50% at ([\d.]+)", out).group(1))
    termed = float(re.search(r"got SIGTERM at ([\d.]+)", out).group(1))
    evts = events(state_dir)
    [ended] = named(evts, "attempt.ended")
    [peak] = named(evts, "vram.peak")
    [released] = named(evts, "gpu.released")[-1:]
    status = [line for line in out.splitlines() if " · gpu0 " in line]
    report("vram limit", reaction_s=round(termed - crossed, 3), interval_s=interval, evidence=ended["evidence"],
           peak=format_bytes(peak["peaks"]["gpu0"]), status_line=status[-1] if status else None,
           total_s=round(time.monotonic() - started, 1))
    assert ended["kind"] == "cuda_oom" and re.match(r"gpu0 VRAM [\d.]+ GiB of [\d.]+ GiB reached the limit", ended["evidence"])
    assert -0.01 <= termed - crossed <= 2 * interval + 0.1, (termed - crossed, out)
    assert "giving up: no rung left in the ladder for cuda_oom" in out
    assert "GPUs chosen: 0" in out and released["stuck"] == {}


def test_real_cuda_oom_is_classified_and_the_halved_batch_finishes(tmp_path, state_dir):
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        script: {HERE / 'oom_train.py'}
        batch: {{per_device: 16, grad_accum: 1}}
        stop_grace: 10s
        restarts: {{max: 3, backoff: [1s, 2s]}}
        """)
    result = subprocess.run([GUARDRUN, "run", str(recipe)], capture_output=True, text=True, timeout=400)
    out = result.stdout
    evts = events(state_dir)
    ended = named(evts, "attempt.ended")
    started = named(evts, "attempt.started")
    report("cuda oom", kinds=[e["kind"] for e in ended], evidence=ended[0]["evidence"][:160],
           batches=[(s["per_device"], s["grad_accum"]) for s in started],
           release_waits=[e["waited"] for e in named(evts, "gpu.released")],
           attempt_s=[e["took"] for e in ended])
    assert result.returncode == 0, out + result.stderr
    assert [e["kind"] for e in ended] == ["cuda_oom", "success"]
    assert "CUDA out of memory" in ended[0]["evidence"]
    assert [(s["per_device"], s["grad_accum"], s["global_batch"]) for s in started] == [(16, 1, 16), (8, 2, 16)]
    assert "[2] micro-batch 8 x accumulation 2" in out and "[2] training done" in out
    assert out.rstrip().endswith("the job finished")

"""NVML's process-query fallback (`_v3` → `_v2` → v1) against a real driver.

The stub-library tests (tests/faults/test_nvml_old_driver.py) prove the fallback and the
messages; only a real driver proves the entry structs: here every query the driver has
must list the same torch process with the same memory, and with `_v3` (then `_v2`) hidden
from pynvml's symbol lookup, NvmlSource and doctor must fall back and still see it.
Skipped without a GPU. Prints `GPU-CHECK` lines (tests/gpu/run_gpu_checks.sh shows them).
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from needs_gpu import GUARDRUN, pytestmark  # noqa: F401 (skips the module without a GPU)

from guardrun.launcher.units import GIB
from guardrun.supervisor.cli import doctor
from guardrun.supervisor.watch import gpu

pynvml = pytest.importorskip("pynvml")


FUNCTION_NOT_FOUND = pynvml.nvmlExceptionClass(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

HOLD = """
import sys, time, torch
x = torch.empty(int(sys.argv[1]) << 30, dtype=torch.uint8, device="cuda"); x.fill_(1)
torch.cuda.synchronize()
print("ready", flush=True)
time.sleep(600)
"""


def report(what: str, **numbers) -> None:
    print(f"\nGPU-CHECK {what}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)


@pytest.fixture
def holder():
    """A torch process holding 2 GiB on GPU 0; its pid as guardrun's /proc names it."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        yield child.pid
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def hide(monkeypatch):
    """hide(*symbols): pynvml's lookup says "Function Not Found" for them, as an older
    driver's library would; the remembered query is forgotten."""
    real = pynvml._nvmlGetFunctionPointer

    def apply(*symbols: str) -> None:
        def lookup(name):
            if name in symbols:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            return real(name)
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer", lookup)
        monkeypatch.setattr(gpu, "_choice", None)
    return apply


def test_every_query_the_driver_has_reads_the_same_entries(holder):
    source, _ = gpu.open_gpu_source()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    pids = gpu.NamespacePids()
    seen = {}
    for query in gpu.QUERIES:
        started = time.perf_counter()
        try:
            listed = {pids.local(pid): used for pid, used in gpu._query(query, handle)}
        except FUNCTION_NOT_FOUND:
            report(f"query {query.version}", symbol=query.symbol, present=False)
            continue
        seen[query.version] = listed
        took_ms = round(1e3 * (time.perf_counter() - started), 3)
        report(f"query {query.version}", symbol=query.symbol, present=True, ms=took_ms,
               holder_used=listed.get(holder), entries=len(listed))
    source.processes(0)
    report("driver", version=gpu.driver_version(), chosen=source.process_query.note)
    newest = next(iter(seen))  # v3 on any R510+ driver (every H100/H200 one)
    assert newest == source.process_query.query.version
    for version, listed in seen.items():
        assert listed.get(holder, 0) >= 2 * GIB, (version, listed)
        assert listed[holder] == seen[newest][holder], (version, listed, seen[newest])


@pytest.mark.parametrize("hidden, version, note", [
    (("nvmlDeviceGetComputeRunningProcesses_v3",), "v2", "driver before R510, using the v2 query"),
    (("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2"), "v1",
     "driver before R450, using the v1 query"),
])
def test_with_newer_queries_hidden_the_source_and_doctor_fall_back(holder, hide, hidden, version, note):
    hide(*hidden)
    source, _ = gpu.open_gpu_source()
    listed = {p.pid: p.used for p in source.processes(0)}
    if source.process_query.query is None:
        pytest.skip(f"this driver has no {version} query either: {source.process_query.note}")
    report(f"fallback to {version}", holder_used=listed.get(holder), note=source.process_query.note)
    assert source.process_query.query.version == version
    assert listed.get(holder, 0) >= 2 * GIB
    checks = {c.name: c for c in doctor.gpu_checks(doctor.Machine(), source)}
    assert checks["gpu processes"].detail == note
    assert f"pid {holder} " in checks["gpu 0"].detail


def test_with_no_query_left_the_gpus_are_still_read(hide):
    hide(*(q.symbol for q in gpu.QUERIES))
    source, _ = gpu.open_gpu_source()
    assert source.processes(0) == [] and source.devices()[0].total > 0
    assert source.process_query.query is None
    checks = {c.name: c for c in doctor.gpu_checks(doctor.Machine(), source)}
    assert checks["gpu processes"].status == doctor.WARN
    assert checks["gpu 0"].detail.endswith(", processes unknown")


def test_doctor_on_this_driver_names_the_query_in_use():
    source, _ = gpu.open_gpu_source()
    source.processes(0)
    result = subprocess.run([GUARDRUN, "doctor"], capture_output=True, text=True, timeout=120)
    report("guardrun doctor", rc=result.returncode, query=source.process_query.note)
    assert "Traceback" not in result.stdout + result.stderr
    assert f"gpu processes: {source.process_query.note}\n" in result.stdout, result.stdout

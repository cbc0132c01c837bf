"""NVML on old drivers: a real stub libnvidia-ml.so.1 that lacks the newest process query.

nvidia-ml-py maps `nvmlDeviceGetComputeRunningProcesses` to the `_v3` symbol, which drivers
before R510 do not have; nvidia-ml-py >= 12.550 then raises NVMLLibraryMismatchError, which
is not an NVMLError (FIELD_NOTES). Each test compiles a tiny C library with gcc that has
only some of the queries (`_v3`, `_v2`, the unversioned v1 with its 16-byte entries, or
none), puts it first on LD_LIBRARY_PATH (pynvml dlopens "libnvidia-ml.so.1") and runs the
real `guardrun doctor` or `guardrun run` against it. What is asserted is what a user reads:
the exit code, the lines, no traceback; the two listed processes (this test and the
guardrun process, 2 and 1 GiB) prove each entry was read with the right struct.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GUARDRUN = str(Path(sys.executable).parent / "guardrun")

STUB = r"""
#include <stdio.h>
#include <unistd.h>

#define GIB (1ULL << 30)
#define SUCCESS 0
#define INVALID_ARGUMENT 2
#define INSUFFICIENT_SIZE 7

typedef struct { unsigned int pid; unsigned long long used; } info_v1;                 /* 16 bytes */
typedef struct { unsigned int pid; unsigned long long used; unsigned int gi, ci; } info_v2; /* 24 */
typedef struct { unsigned long long total, free, used; } memory_v1;

static int the_gpu;

int nvmlInitWithFlags(unsigned int flags) { (void)flags; return SUCCESS; }
int nvmlInit_v2(void) { return SUCCESS; }
int nvmlShutdown(void) { return SUCCESS; }
const char *nvmlErrorString(int ret) { return ret == INSUFFICIENT_SIZE ? "Insufficient Size" : "Stub Error"; }
int nvmlSystemGetDriverVersion(char *out, unsigned int n) { snprintf(out, n, "%s", DRIVER); return SUCCESS; }
int nvmlDeviceGetCount_v2(unsigned int *n) { *n = 1; return SUCCESS; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) {
    if (i != 0) return INVALID_ARGUMENT;
    *h = &the_gpu;
    return SUCCESS;
}
int nvmlDeviceGetName(void *h, char *out, unsigned int n) { (void)h; snprintf(out, n, "Stub GPU"); return 0; }
int nvmlDeviceGetUUID(void *h, char *out, unsigned int n) { (void)h; snprintf(out, n, "GPU-stub-0"); return 0; }
int nvmlDeviceGetMemoryInfo(void *h, memory_v1 *m) {
    (void)h;
    m->total = 80 * GIB; m->used = 3 * GIB; m->free = 77 * GIB;
    return SUCCESS;
}

/* Two processes: the caller (1 GiB) and its parent (2 GiB). */
#define FILL(entries)                                                        \
    if (entries == NULL || *count < 2) { *count = 2; return INSUFFICIENT_SIZE; } \
    entries[0].pid = getpid();  entries[0].used = 1 * GIB;                   \
    entries[1].pid = getppid(); entries[1].used = 2 * GIB;                   \
    *count = 2;                                                              \
    return SUCCESS;

#ifdef WITH_V3
int nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned int *count, info_v2 *e) { (void)h; FILL(e) }
#endif
#ifdef WITH_V2
int nvmlDeviceGetComputeRunningProcesses_v2(void *h, unsigned int *count, info_v2 *e) {
    (void)h;
    if (e) for (unsigned int i = 0; i < *count; i++) e[i].gi = e[i].ci = 0xFFFFFFFF;
    FILL(e)
}
#endif
#ifdef WITH_V1
int nvmlDeviceGetComputeRunningProcesses(void *h, unsigned int *count, info_v1 *e) { (void)h; FILL(e) }
#endif
"""

#: variant -> (queries it has, the driver version it reports)
VARIANTS = {
    "r535": (("WITH_V3", "WITH_V2", "WITH_V1"), "535.183.01"),
    "r470": (("WITH_V2", "WITH_V1"), "470.256.02"),
    "r440": (("WITH_V1",), "440.118.02"),
    "none": ((), "0.0"),
}


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> dict[str, Path]:
    """variant -> a folder holding that variant's libnvidia-ml.so.1, built once per module."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the stub libnvidia-ml.so.1")
    root = tmp_path_factory.mktemp("nvml-stubs")
    source = root / "stub.c"
    source.write_text(STUB)
    built = {}
    for name, (queries, driver) in VARIANTS.items():
        folder = root / name
        folder.mkdir()
        flags = [f"-D{q}" for q in queries] + [f'-DDRIVER="{driver}"']
        subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", *flags, "-o",
                        str(folder / "libnvidia-ml.so.1"), str(source)], check=True, timeout=60)
        built[name] = folder
    return built


def guardrun(stub: Path, *argv: str, state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LD_LIBRARY_PATH": str(stub), "GUARDRUN_STATE_DIR": str(state)}
    proc = subprocess.Popen([GUARDRUN, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    out, err = proc.communicate(timeout=60)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    result.pid = proc.pid
    return result


def doctor_line(out: str, name: str) -> str:
    found = [line for line in out.splitlines() if line[6:].startswith(f"{name}: ")]
    assert len(found) == 1, out
    return found[0]


ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.mark.parametrize("variant, query", [
    ("r535", "OK    gpu processes: NVML's v3 query"),
    ("r470", "OK    gpu processes: driver before R510, using the v2 query"),
    ("r440", "OK    gpu processes: driver before R450, using the v1 query"),
])
def test_doctor_lists_the_processes_with_the_newest_query_the_driver_has(stubs, tmp_path, variant, query):
    result = guardrun(stubs[variant], "doctor", state=tmp_path / "state")
    out = result.stdout
    assert "Traceback" not in out + result.stderr, out + result.stderr
    assert result.returncode == 0, out + result.stderr
    # Both entries right: a 16-byte v1 array read with the 24-byte struct shifts the second.
    assert doctor_line(out, "gpu 0") == (
        f"WARN  gpu 0: Stub GPU, 77.0 GiB free of 80.0 GiB; used by pid {result.pid} ({ME}, 1.0 GiB), "
        f"pid {os.getpid()} ({ME}, 2.0 GiB)")
    assert doctor_line(out, "gpu processes") == query
    assert doctor_line(out, "driver") == f"OK    driver: NVIDIA driver {VARIANTS[variant][1]} (NVML)"


def test_doctor_says_the_process_list_is_unavailable_when_no_query_exists(stubs, tmp_path):
    result = guardrun(stubs["none"], "doctor", state=tmp_path / "state")
    out = result.stdout
    assert "Traceback" not in out + result.stderr, out + result.stderr
    assert result.returncode == 0, out + result.stderr
    assert doctor_line(out, "gpu 0") == "OK    gpu 0: Stub GPU, 77.0 GiB free of 80.0 GiB, processes unknown"
    assert doctor_line(out, "gpu processes") == (
        "WARN  gpu processes: unavailable: the driver's NVML has neither nvmlDeviceGetComputeRunningProcesses_v3, "
        "_v2 nor the v1 one (Function Not Found)")
    assert "VRAM is watched per GPU" in out


JOB = "import sys; print('job ran', flush=True); sys.exit(0)\n"


def run_job(stub: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    (tmp_path / "job.py").write_text(JOB)
    recipe = tmp_path / "job.yaml"
    recipe.write_text(textwrap.dedent(f"""
        launcher: python
        script: {tmp_path / 'job.py'}
        gpus: [0]
        monitor: {{interval: 0.1}}
        ladder: []
        """))
    state = tmp_path / "state"
    result = guardrun(stub, "run", str(recipe), state=state)
    events = [json.loads(line) for line in (state / "job" / "events.jsonl").read_text().splitlines()]
    return result, events


def test_run_on_a_driver_before_r510_watches_the_gpu_and_finishes(stubs, tmp_path):
    result, events = run_job(stubs["r470"], tmp_path)
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    assert result.returncode == 0, text
    assert "job ran" in text
    [query] = [e for e in events if e["event"] == "guardrun.gpu.processes"]
    assert query["query"] == "v2" and query["detail"] == "driver before R510, using the v2 query"
    assert "GPU process list" not in text  # a working fallback is journaled, not shouted


def test_run_without_any_process_query_goes_on_and_says_so_once(stubs, tmp_path):
    result, events = run_job(stubs["none"], tmp_path)
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    assert result.returncode == 0, text
    assert "job ran" in text
    assert text.count("GPU process list unavailable") == 1, text
    [query] = [e for e in events if e["event"] == "guardrun.gpu.processes"]
    assert query["query"] is None and query["detail"].startswith("unavailable: ")

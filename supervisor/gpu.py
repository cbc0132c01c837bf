"""GPUs as the machine tells it: NVML readings, and which processes still hold a GPU.

- A `GpuSource` gives per-GPU memory and the processes with a context on each GPU.
  `NvmlSource` is the real one (nvidia-ml-py, `import pynvml`, initialised once);
  tests.fakes.FakeGpuSource stands in for it where there is no GPU (CI).
- `gpu_holders` scans /proc/*/fd for /dev/nvidia*: GPU memory stays held while any
  process keeps the device open, and a forked DataLoader worker that inherited the fds
  is invisible to NVML (FIELD_NOTES). `wait_gpus_released` waits, on the injected clock,
  until no process of a job holds a GPU, so the next attempt does not OOM at once.

A job's processes are recognised by the GUARDRUN_JOB / GUARDRUN_ATTEMPT variables that
launcher/command.py puts in their environment: every rank, worker and orphan inherits
them, even one that left the process tree, and a reused pid does not carry them.
The procfs root is a parameter so tests can hand over a fake /proc in a temp dir.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Protocol

from guardrun.launcher.gpus import GpuProcess, GpuReading
from guardrun.launcher.units import format_bytes

from .clock import Clock
from .proctree import GONE, environ_pids

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but guardrun must run without it
    pynvml = None

#: Unreadable /proc entries: the process exited, or it is another user's.
_SKIP = GONE + (PermissionError, NotADirectoryError)


class GpuError(RuntimeError):
    """NVML failed (driver gone, GPU fallen off the bus): callers carry on without GPUs."""


class GpuSource(Protocol):
    def devices(self) -> list[GpuReading]:
        """Every GPU, in NVML index order."""

    def processes(self, index: int) -> list[GpuProcess]:
        """The processes with a compute context on GPU `index`."""


@dataclass(frozen=True)
class GpuSnapshot:
    readings: tuple[GpuReading, ...]
    processes: dict[int, tuple[GpuProcess, ...]] = field(default_factory=dict)


def snapshot(source: GpuSource) -> GpuSnapshot:
    """One reading of every GPU and its processes. Raises GpuError."""
    readings = tuple(source.devices())
    return GpuSnapshot(readings, {r.index: tuple(source.processes(r.index)) for r in readings})


class NvmlSource:
    """The real GPU source. NVML is initialised once per process and never shut down:
    nvmlInit is reference-counted and cheap to keep (14 ms to start on an H100 here)."""

    def __init__(self, proc_root: str = "/proc"):
        if pynvml is None:
            raise GpuError("nvidia-ml-py is not installed")
        try:
            _init_once()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._names = [(_text(pynvml.nvmlDeviceGetUUID(h)), _text(pynvml.nvmlDeviceGetName(h)))
                           for h in self._handles]
        except pynvml.NVMLError as err:
            raise GpuError(str(err)) from None
        self._pids = NamespacePids(proc_root)

    def devices(self) -> list[GpuReading]:
        out = []
        for index, handle in enumerate(self._handles):
            try:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except pynvml.NVMLError as err:
                raise GpuError(f"gpu{index}: {err}") from None
            # v1 `used` counts the driver's reservation (480 MiB on an idle H100, where
            # nvidia-smi, using v2, says 0): total - free is what an allocation can get.
            uuid, name = self._names[index]
            out.append(GpuReading(index, uuid, name, used=memory.total - memory.free, total=memory.total))
        return out

    def processes(self, index: int) -> list[GpuProcess]:
        try:
            found = pynvml.nvmlDeviceGetComputeRunningProcesses(self._handles[index])
        except pynvml.NVMLError as err:
            raise GpuError(f"gpu{index}: {err}") from None
        # usedGpuMemory is None where NVML cannot attribute memory (the binding maps
        # NVML_VALUE_NOT_AVAILABLE to None: MIG, Windows WDDM, some containers).
        return [GpuProcess(self._pids.local(p.pid), p.usedGpuMemory) for p in found]


_initialised = False


def _init_once() -> None:
    global _initialised
    if not _initialised:
        pynvml.nvmlInit()
        _initialised = True


def _text(value: str | bytes) -> str:
    """nvidia-ml-py returns str; the deprecated `pynvml` package's older releases, bytes."""
    return value.decode() if isinstance(value, bytes) else value


def open_gpu_source(proc_root: str = "/proc") -> tuple[NvmlSource | None, str]:
    """The NVML source and what it sees, or None and why (no driver, no GPU). Never raises."""
    try:
        source = NvmlSource(proc_root)
        readings = source.devices()
    except GpuError as err:
        return None, f"no GPU: {err}"
    if not readings:
        return None, "no GPU: NVML lists none"
    names = sorted({r.name for r in readings})
    return source, f"{len(readings)} GPU(s): {', '.join(names)}"


# -- pid namespaces ---------------------------------------------------------------------

def nspid(proc_root: str, pid: int | str) -> tuple[int, ...]:
    """The NSpid line of /proc/PID/status: the pid in each namespace, from the procfs's
    own namespace inwards (Linux >= 4.1). Empty when the process is gone or unreadable."""
    try:
        with open(f"{proc_root}/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"NSpid:"):
                    return tuple(int(x) for x in line.split()[1:])
    except _SKIP:
        return ()
    return ()


class NamespacePids:
    """NVML pids -> the pids this procfs names.

    Drivers that know pid namespaces report pids in the caller's namespace; older ones
    report the host's (NVIDIA/nvidia-docker#1483, open-gpu-kernel-modules#614). When
    guardrun runs in a pid namespace but reads an outer procfs (its own NSpid has more
    than one entry), a pid of guardrun's namespace is mapped to the procfs's through each
    process's NSpid. With a private procfs there is nothing outer to see: a host pid from
    an old driver then names no process of ours and is treated as someone else's.
    """

    def __init__(self, proc_root: str = "/proc"):
        self.proc_root = proc_root
        self.depth = len(nspid(proc_root, "self"))
        self._map: dict[int, int] = {}
        self._misses: set[int] = set()

    def local(self, pid: int) -> int:
        if self.depth <= 1:
            return pid
        if pid not in self._map and pid not in self._misses:
            self._rebuild()
            if pid not in self._map:
                self._misses.add(pid)
        return self._map.get(pid, pid)

    def _rebuild(self) -> None:
        self._misses.clear()
        for entry in _pid_entries(self.proc_root):
            chain = nspid(self.proc_root, entry)
            if len(chain) >= self.depth:
                self._map[chain[self.depth - 1]] = chain[0]


# -- who still holds a GPU ----------------------------------------------------------------

def _pid_entries(proc_root: str) -> list[int]:
    return [int(name) for name in os.listdir(proc_root) if name.isdigit()]


def tagged_pids(job: str, proc_root: str = "/proc", attempt: int | None = None,
                pids: Iterable[int] | None = None) -> set[int]:
    """Live processes whose environment names this job (and attempt), guardrun excluded."""
    needles = {b"GUARDRUN_JOB=" + job.encode()}
    if attempt is not None:
        needles.add(b"GUARDRUN_ATTEMPT=%d" % attempt)
    return environ_pids(needles, proc_root, pids)


def gpu_holders(pids_or_all: Iterable[int] | None, proc_root: str = "/proc") -> dict[int, tuple[str, ...]]:
    """pid -> the /dev/nvidia* files it has open, for `pids_or_all` (None: every process).

    Another user's fds are unreadable without privileges and are skipped; fds come and go
    while we read them (a CUDA process opens and closes some at start), so a vanished fd
    is skipped too.
    """
    holders = {}
    for pid in _pid_entries(proc_root) if pids_or_all is None else pids_or_all:
        fd_dir = f"{proc_root}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except _SKIP:
            continue
        devices = set()
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except _SKIP:
                continue
            if target.startswith("/dev/nvidia"):
                devices.add(target)
        if devices:
            holders[pid] = tuple(sorted(devices))
    return holders


@dataclass(frozen=True)
class Release:
    stuck: dict[int, str]  # pid -> what it still holds; empty when all is released
    waited: float          # seconds


def still_holding(job: str, source: GpuSource | None, nvml_pids: Collection[int] = (),
                  proc_root: str = "/proc") -> dict[int, str]:
    """The job's processes that still hold a GPU: /dev/nvidia* open, or listed by NVML
    (`nvml_pids`: the pids NVML showed for the job, which may outlive their /proc entry
    while the driver tears the context down)."""
    held = {pid: "has " + ", ".join(devices) + " open"
            for pid, devices in gpu_holders(tagged_pids(job, proc_root), proc_root).items()}
    if source is None or not nvml_pids:
        return held
    try:
        current = snapshot(source)
    except GpuError:
        return held  # NVML is gone: the fd scan is all there is
    for index, processes in current.processes.items():
        for proc in processes:
            if proc.pid in nvml_pids:
                used = f" ({format_bytes(proc.used)})" if proc.used else ""
                held.setdefault(proc.pid, f"listed by NVML on gpu{index}{used}")
    return held


def wait_gpus_released(job: str, clock: Clock, timeout: float, source: GpuSource | None = None,
                       nvml_pids: Collection[int] = (), proc_root: str = "/proc", interval: float = 0.25,
                       stop: Callable[[], bool] = lambda: False,
                       on_wait: Callable[[dict[int, str], float], None] | None = None) -> Release:
    """Wait until no process of `job` holds a GPU, `timeout` passes, or `stop()` says so.

    Returns the pids still holding one (empty when released) so the caller can name them.
    """
    started = clock.monotonic()
    while True:
        held = still_holding(job, source, nvml_pids, proc_root)
        waited = clock.monotonic() - started
        if not held or waited >= timeout or stop():
            return Release(held, waited)
        if on_wait is not None:
            on_wait(held, waited)
        clock.sleep(min(interval, timeout - waited))

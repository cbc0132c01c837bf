"""GPUs as the machine tells it: NVML readings, and which processes still hold a GPU.

- A `GpuSource` gives per-GPU memory and the processes with a context on each GPU.
  `NvmlSource` is the real one (nvidia-ml-py, `import pynvml`, initialised once);
  tests.fakes.FakeGpuSource stands in for it where there is no GPU (CI).
- `running_processes` asks the newest process query the driver has (`_v3`, then `_v2`,
  then the v1 one), each with its own entry struct, and remembers the one that answered.
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

import ctypes
import os
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Protocol

from guardrun.launcher.gpus import GpuProcess, GpuReading
from guardrun.launcher.units import format_bytes

from ..core.clock import Clock
from .proctree import GONE, environ_pids

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but guardrun must run without it
    pynvml = None


def _nvml_errors() -> tuple[type[Exception], ...]:
    """Every exception type pynvml defines: NVMLError (with its per-code subclasses) and
    those beside it. NVMLLibraryMismatchError (nvidia-ml-py >= 12.550, for an unversioned
    function whose newest symbol the library lacks) is not an NVMLError: catching NVMLError
    alone let it end `run` and `doctor` in a traceback (issue 12)."""
    if pynvml is None:
        return ()
    own = [value for value in vars(pynvml).values() if isinstance(value, type)
           and issubclass(value, Exception) and value.__module__ == pynvml.__name__]
    return tuple(v for v in own if v is pynvml.NVMLError or not issubclass(v, pynvml.NVMLError))


NVML_ERRORS = _nvml_errors()

#: Unreadable /proc entries: the process exited, or it is another user's.
_SKIP = GONE + (PermissionError, NotADirectoryError)


class GpuError(RuntimeError):
    """NVML failed (driver gone, GPU fallen off the bus): callers carry on without GPUs."""


class GpuSource(Protocol):
    #: Which process query the driver answered (None until processes() was first asked).
    process_query: QueryChoice | None

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
        except NVML_ERRORS as err:
            raise GpuError(str(err)) from None
        self._pids = NamespacePids(proc_root)

    def devices(self) -> list[GpuReading]:
        out = []
        for index, handle in enumerate(self._handles):
            try:
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except NVML_ERRORS as err:
                raise GpuError(f"gpu{index}: {err}") from None
            # v1 `used` counts the driver's reservation (480 MiB on an idle H100, where
            # nvidia-smi, using v2, says 0): total - free is what an allocation can get.
            uuid, name = self._names[index]
            out.append(GpuReading(index, uuid, name, used=memory.total - memory.free, total=memory.total))
        return out

    def processes(self, index: int) -> list[GpuProcess]:
        """The compute processes on GPU `index`; [] for good when the driver has no
        process query guardrun can read (see `process_query`)."""
        try:
            found = running_processes(self._handles[index])
        except NVML_ERRORS as err:
            raise GpuError(f"gpu{index}: {err}") from None
        return [GpuProcess(self._pids.local(pid), used) for pid, used in found]

    @property
    def process_query(self) -> QueryChoice | None:
        return _choice


_initialised = False


def _init_once() -> None:
    global _initialised
    if not _initialised:
        pynvml.nvmlInit()
        _initialised = True


def driver_version() -> str | None:
    """The driver version NVML reports, or None (no NVML, or it failed). Never raises."""
    if pynvml is None:
        return None
    try:
        return _text(pynvml.nvmlSystemGetDriverVersion())
    except NVML_ERRORS:
        return None


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


# -- the running-process query, by driver age ----------------------------------------------

class _ProcessInfoV1(ctypes.Structure):
    """nvmlProcessInfo_v1_t, the entry of the unversioned (v1) query: 16 bytes."""
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


class _ProcessInfoV2(ctypes.Structure):
    """nvmlProcessInfo_v2_t, the entry of both `_v2` (R450, MIG) and `_v3` (R510): 24 bytes.
    Our own copy, so the layout does not move with the binding's release: nvidia-ml-py's
    `_v3` struct changed around the 535 drivers and read scrambled pids (nvitop#75; hence
    also the pin in setup.cfg)."""
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


@dataclass(frozen=True)
class ProcessQuery:
    version: str
    symbol: str
    entry: type[ctypes.Structure]
    note: str  # what doctor says when it is the one in use


#: Newest first, as nvitop falls back. nvidia-ml-py maps the unversioned name to `_v3`,
#: which drivers before R510 lack; the v1 symbol is the unversioned one itself.
QUERIES = (
    ProcessQuery("v3", "nvmlDeviceGetComputeRunningProcesses_v3", _ProcessInfoV2, "NVML's v3 query"),
    ProcessQuery("v2", "nvmlDeviceGetComputeRunningProcesses_v2", _ProcessInfoV2,
                 "driver before R510, using the v2 query"),
    ProcessQuery("v1", "nvmlDeviceGetComputeRunningProcesses", _ProcessInfoV1,
                 "driver before R450, using the v1 query"),
)

_NOT_AVAILABLE = (1 << 64) - 1  # NVML_VALUE_NOT_AVAILABLE: MIG, Windows WDDM, some containers


@dataclass(frozen=True)
class QueryChoice:
    """The process query this driver answered, or None and why none did."""
    query: ProcessQuery | None
    why: str = ""

    @property
    def note(self) -> str:
        return self.query.note if self.query else f"unavailable: {self.why}"


_choice: QueryChoice | None = None  # once per process: the driver does not change under us


def running_processes(handle) -> list[tuple[int, int | None]]:
    """(pid, used bytes or None) of each compute process on the GPU, through the newest
    query the driver has. A query whose symbol is missing is skipped and the first that
    answers is remembered; when none exists, [] from then on (GPUs are still read, only
    per-process attribution is lost). Other NVML errors are raised (pynvml's types)."""
    global _choice
    if _choice is not None:
        return _query(_choice.query, handle) if _choice.query else []
    missing = None
    for query in QUERIES:
        try:
            found = _query(query, handle)
        except pynvml.NVMLError_FunctionNotFound as err:  # a driver older than this query
            missing = err
            continue
        _choice = QueryChoice(query)
        return found
    why = f"the driver's NVML has neither {QUERIES[0].symbol}, _v2 nor the v1 one ({missing})"
    _choice = QueryChoice(None, why)
    return []


def _query(query: ProcessQuery, handle) -> list[tuple[int, int | None]]:
    """One call of `query`, sized as NVML wants: ask for the count, then fill an array
    with room to spare (processes start between the two calls)."""
    # pynvml's own lookup (in every release since 2.285): cached, and NVMLError_FunctionNotFound
    # for a missing symbol. A binding without it counts as having no query, not a traceback.
    lookup = getattr(pynvml, "_nvmlGetFunctionPointer", None)
    if lookup is None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    function = lookup(query.symbol)
    count, entries = ctypes.c_uint(0), None
    for _ in range(3):
        ret = function(handle, ctypes.byref(count), entries)
        if ret == pynvml.NVML_SUCCESS:
            listed = entries[:count.value] if entries is not None else []
            return [(e.pid, None if e.usedGpuMemory == _NOT_AVAILABLE else e.usedGpuMemory) for e in listed]
        if ret != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
            raise pynvml.NVMLError(ret)
        count.value = count.value * 2 + 5
        entries = (query.entry * count.value)()
    raise pynvml.NVMLError(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)


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

"""Which GPUs a job gets: pure choices from per-GPU readings (no NVML, no /proc in here).

The readings come from supervisor.gpu (NVML); these functions only decide, so every rule
is tested with plain values. GPU indices are NVML's, which follow the PCI bus order;
launcher/command.py sets CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA numbers them the same
way (CUDA's own default order, FASTEST_FIRST, can differ on mixed machines).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

from .units import GIB, format_bytes

#: A GPU with no process NVML can show us but more memory in use than this is taken by a
#: process we cannot see (another container's, or one in another pid namespace on an old
#: driver: FIELD_NOTES, NVML). An idle H100 80GB with driver 580 reports 480 MiB used
#: (the driver's own reservation, counted in NVML's v1 `used`), so 1 GiB leaves room.
IDLE_USED = 1 * GIB


@dataclass(frozen=True)
class GpuReading:
    """One GPU as NVML reports it. `used` is total - free: what decides an OOM."""

    index: int
    uuid: str
    name: str
    used: int   # bytes
    total: int  # bytes

    @property
    def free(self) -> int:
        return max(0, self.total - self.used)


@dataclass(frozen=True)
class GpuProcess:
    """A process with a CUDA context on a GPU."""

    pid: int          # as guardrun's /proc names it (translated from NVML's where needed)
    used: int | None  # bytes; None where NVML cannot tell (MIG, some containers)


@dataclass(frozen=True)
class GpuChoice:
    """The GPUs picked for a job, or why not enough are free."""

    ids: tuple[int, ...] | None
    reason: str = ""  # set when ids is None

    @property
    def ok(self) -> bool:
        return self.ids is not None


def busy_reason(reading: GpuReading, processes: Sequence[GpuProcess], own_pids: Collection[int],
                idle_used: int = IDLE_USED) -> str:
    """Why another job is on this GPU, or "" when it is free for us."""
    foreign = [p for p in processes if p.pid not in own_pids]
    if foreign:
        shown = ", ".join(f"pid {p.pid}" + (f" ({format_bytes(p.used)})" if p.used else "")
                          for p in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return f"gpu{reading.index} is used by {shown}{more}"
    if not processes and reading.used > idle_used:
        return (f"gpu{reading.index} has {format_bytes(reading.used)} in use by processes NVML "
                "does not show (another container?)")
    return ""


def pick_gpus(readings: Sequence[GpuReading], processes_by_gpu: Mapping[int, Sequence[GpuProcess]],
              own_pids: Collection[int], count: int, allowed: Collection[int] | None = None) -> GpuChoice:
    """`count` free GPUs with the most free memory, in index order; or the reason why not.

    A GPU is free when no other process has a context on it (its memory would shrink under
    us at any time). Ties on free memory go to the lower index, so the same readings give
    the same GPUs. `allowed` limits the candidates (CUDA_VISIBLE_DEVICES given to guardrun).
    """
    candidates = [r for r in readings if allowed is None or r.index in allowed]
    free, busy = [], []
    for reading in candidates:
        why = busy_reason(reading, processes_by_gpu.get(reading.index, ()), own_pids)
        (busy if why else free).append((reading, why))
    if len(free) >= count:
        best = sorted(free, key=lambda pair: (-pair[0].free, pair[0].index))[:count]
        return GpuChoice(tuple(sorted(reading.index for reading, _ in best)))
    have = f"{len(candidates)} GPU(s)" + (" allowed by CUDA_VISIBLE_DEVICES" if allowed is not None else "")
    if len(candidates) < count:
        return GpuChoice(None, f"the recipe asks for {count} GPU(s), this machine has {have}")
    reasons = "; ".join(why for _, why in busy)
    return GpuChoice(None, f"{len(free)} of {have} free, {count} needed: {reasons}")


def check_explicit(ids: Sequence[int], readings: Sequence[GpuReading],
                   processes_by_gpu: Mapping[int, Sequence[GpuProcess]],
                   own_pids: Collection[int]) -> list[str]:
    """Warnings for `gpus: [..]` (taken as given): GPUs missing or held by others."""
    known = {r.index: r for r in readings}
    warnings = []
    for index in ids:
        reading = known.get(index)
        if reading is None:
            warnings.append(f"gpu{index} is in the recipe but NVML does not list it "
                            f"(GPUs here: {', '.join(map(str, sorted(known))) or 'none'})")
            continue
        why = busy_reason(reading, processes_by_gpu.get(index, ()), own_pids)
        if why:
            warnings.append(f"{why}; {format_bytes(reading.free)} free")
    return warnings


def allowed_indices(visible: str | None, readings: Sequence[GpuReading]) -> tuple[int, ...] | None:
    """The GPUs guardrun itself was given through CUDA_VISIBLE_DEVICES (a SLURM or admin
    allocation), as NVML indices; None when the variable is unset (every GPU).

    Entries are indices or UUIDs (`GPU-...`, a prefix is enough, as CUDA accepts); CUDA
    stops at the first invalid entry, and so does this.
    """
    if visible is None:
        return None
    out: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        index = _entry_index(entry, readings)
        if index is None:
            break
        if index not in out:
            out.append(index)
    return tuple(out)


def _entry_index(entry: str, readings: Sequence[GpuReading]) -> int | None:
    if entry.isdigit():
        return int(entry) if any(r.index == int(entry) for r in readings) else None
    if entry.startswith("GPU-"):
        matches = [r.index for r in readings if r.uuid.startswith(entry)]
        return matches[0] if len(matches) == 1 else None
    return None


def job_gpus(readings: Sequence[GpuReading], processes_by_gpu: Mapping[int, Sequence[GpuProcess]],
             job_pids: Collection[int], assigned: Collection[int] = ()) -> list[GpuReading]:
    """The GPUs the job is on: those NVML lists one of its processes on, and those the
    plan gave it (its memory there counts even before NVML shows its pid, or where NVML's
    pids cannot be mapped to ours: an old driver in a container)."""
    return [r for r in readings if r.index in assigned
            or any(p.pid in job_pids for p in processes_by_gpu.get(r.index, ()))]

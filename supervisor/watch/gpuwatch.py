"""GPU awareness for the loop: choose GPUs, watch VRAM during an attempt, wait for release.

The loop holds one `GpuGuard` (or none: no NVML, no GPU, and everything runs as on a
CPU machine). Decisions are the pure functions of launcher/gpus.py and policy.judge;
this module measures, waits on the injected clock and reports.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

from guardrun.launcher.gpus import (
    GpuChoice,
    GpuProcess,
    GpuReading,
    allowed_indices,
    check_explicit,
    job_gpus,
    pick_gpus,
)
from guardrun.launcher.spec import Recipe
from guardrun.launcher.units import GIB, Size

from ..core import events
from ..core.context import Context
from ..core.signals import wait_unless_stopped
from ..core.states import GiveUp
from ..record.console import Console
from .gpu import (
    GpuError,
    GpuSnapshot,
    GpuSource,
    snapshot,
    tagged_pids,
    wait_gpus_released,
)

#: How long the last attempt's processes may keep a GPU after they were stopped. The
#: driver frees a context within a second of the last fd closing (an H100 here); a
#: process stuck in the driver (D state, Xid) never lets go, and waiting longer would
#: only hide it: guardrun gives up naming it.
#: Seconds between two looks at the GPUs while waiting for enough to be free.
PICK_EVERY = 5.0


def describe_vram(readings) -> str:
    """`gpu0 30.1/80 GiB · gpu1 2.0/80 GiB`: the status line's VRAM part."""
    return " · ".join(f"gpu{r.index} {r.used / GIB:.1f}/{r.total / GIB:.0f} GiB" for r in readings)


@dataclass(frozen=True)
class VramSample:
    """One interval's look at the GPUs, with what judging it needs (policy.judge)."""

    readings: Sequence[GpuReading]
    processes: Mapping[int, Sequence[GpuProcess]]
    job_pids: frozenset[int]
    limit: Size | None
    assigned: tuple[int, ...]


class GpuMonitor:
    """One attempt's VRAM: a snapshot per watch interval, the job's processes recognised
    by their environment tags, and the peaks for the journal."""

    def __init__(self, source: GpuSource, job: str, attempt: int, limit: Size | None,
                 assigned: Collection[int] = (), proc_root: str = "/proc"):
        self.source, self.job, self.attempt = source, job, attempt
        self.limit, self.assigned, self.proc_root = limit, tuple(assigned), proc_root
        self.job_pids: set[int] = set()   # every pid NVML showed for this attempt
        self.peaks: dict[int, int] = {}   # gpu index -> highest used bytes seen
        self.last: GpuSnapshot | None = None
        self.error = ""
        self._seen: dict[int, bool] = {}  # pid -> ours; NVML lists few pids, each checked once

    def sample(self) -> VramSample | None:
        """Measure once; never raises (a failing NVML leaves the host watch running: None)."""
        try:
            current = snapshot(self.source)
        except GpuError as err:
            self.error = str(err)
            return None
        self.last = current
        for processes in current.processes.values():
            for proc in processes:
                if proc.pid not in self._seen:
                    self._seen[proc.pid] = bool(tagged_pids(self.job, self.proc_root, self.attempt, [proc.pid]))
                if self._seen[proc.pid]:
                    self.job_pids.add(proc.pid)
        for reading in self.gpus():
            self.peaks[reading.index] = max(self.peaks.get(reading.index, 0), reading.used)
        return VramSample(current.readings, current.processes, frozenset(self.job_pids), self.limit, self.assigned)

    def gpus(self):
        """The job's GPUs in the last snapshot (all of them while none is known yet)."""
        if self.last is None:
            return []
        mine = job_gpus(self.last.readings, self.last.processes, self.job_pids, self.assigned)
        return mine or list(self.last.readings)

    def describe(self) -> str:
        return describe_vram(self.gpus())


@dataclass(frozen=True)
class Pick:
    ids: tuple[int, ...] | None  # what `decide` gets as the visible GPUs; None: as today
    give_up: GiveUp | None = None
    interrupted: bool = False


class GpuGuard:
    """What the loop asks about GPUs, with its messages and journal events."""

    def __init__(self, source: GpuSource, recipe: Recipe, ctx: Context, console: Console,
                 proc_root: str = "/proc"):
        self.source, self.recipe, self.console, self.proc_root = source, recipe, console, proc_root
        self.clock, self.emit, self.say, self.requests = ctx.clock, ctx.emit, ctx.say, ctx.requests
        self._last: GpuMonitor | None = None
        self._query_noted = False

    def pick_for_run(self) -> Pick:
        """The GPUs for this run: `gpus: N` picks, waiting up to `wait_for_gpus`;
        `all` takes every GPU guardrun may use; a list is taken as given, with warnings."""
        try:
            current = snapshot(self.source)
        except GpuError as err:
            self.say(f"NVML failed, GPUs not checked: {err}")
            return Pick(None)
        self._note_process_query()
        allowed = allowed_indices(os.environ.get("CUDA_VISIBLE_DEVICES"), current.readings)
        own = tagged_pids(self.recipe.name, self.proc_root)
        wanted = self.recipe.gpus
        if isinstance(wanted, tuple) or wanted == "all":
            ids = wanted if isinstance(wanted, tuple) else (allowed if allowed is not None
                                                            else tuple(r.index for r in current.readings))
            for warning in check_explicit(ids, current.readings, current.processes, own):
                self.say(f"warning: {warning}")
                self.emit(events.GPU_WARNING, message=warning)
            return Pick(None if isinstance(wanted, tuple) else ids)
        return self._pick(int(wanted), allowed)

    def _pick(self, count: int, allowed) -> Pick:
        wait = self.recipe.wait_for_gpus or 0.0
        started = self.clock.monotonic()
        while True:
            choice = self._try_pick(count, allowed)
            if choice.ok:
                self.emit(events.GPU_CHOSEN, gpus=list(choice.ids),
                          waited=round(self.clock.monotonic() - started, 3))
                self.say("GPUs chosen: " + ",".join(map(str, choice.ids)))
                return Pick(choice.ids)
            waited = self.clock.monotonic() - started
            if waited >= wait:
                self.emit(events.GPU_UNAVAILABLE, reason=choice.reason, waited=round(waited, 3))
                after = f" after waiting {waited:g}s" if wait else " (set wait_for_gpus to wait for them)"
                return Pick(None, give_up=GiveUp(f"not enough free GPUs{after}: {choice.reason}"))
            if waited == 0:
                self.emit(events.GPU_WAITING, reason=choice.reason, up_to=wait)
            self.console.status(f"waiting for {count} free GPU(s), {wait - waited:.0f}s left: "
                                f"{choice.reason}", self.clock.monotonic())
            if not self._sleep(min(PICK_EVERY, wait - waited)):
                return Pick(None, interrupted=True)

    def _try_pick(self, count: int, allowed) -> GpuChoice:
        try:
            current = snapshot(self.source)
        except GpuError as err:
            return GpuChoice(None, f"NVML failed: {err}")
        own = tagged_pids(self.recipe.name, self.proc_root)
        return pick_gpus(current.readings, current.processes, own, count, allowed)

    def _sleep(self, seconds: float) -> bool:
        """Sleep in short steps so a Ctrl-C is acted on at once; False when asked to stop."""
        return wait_unless_stopped(self.clock, self.requests, seconds)

    def _note_process_query(self) -> None:
        """Journal once which process query the driver answered; say so when none did,
        since then the job's GPU processes cannot be told from others'."""
        choice = self.source.process_query
        if choice is None or self._query_noted:
            return
        self._query_noted = True
        self.emit(events.GPU_PROCESSES, query=choice.query.version if choice.query else None, detail=choice.note)
        if choice.query is None:
            self.say(f"GPU process list {choice.note}; VRAM is watched per GPU, "
                             "without telling the job's processes from others'")

    def monitor(self, attempt: int, gpu_ids) -> GpuMonitor:
        self._note_process_query()  # in case pick_for_run() could not ask (NVML failed then)
        self._last = GpuMonitor(self.source, self.recipe.name, attempt, self.recipe.limits.vram,
                                gpu_ids or (), self.proc_root)
        return self._last

    def attempt_ended(self) -> None:
        """Journal the attempt's VRAM peaks."""
        self._note_process_query()
        monitor = self._last
        if monitor is not None and monitor.peaks:
            self.emit(events.VRAM_PEAK, attempt=monitor.attempt,
                      peaks={f"gpu{i}": used for i, used in sorted(monitor.peaks.items())},
                      error=monitor.error or None)

    def await_release(self) -> GiveUp | None:
        """Before an attempt: wait until no earlier process of this job holds a GPU.
        Returns why to give up (naming the stuck pids), or None to go on."""
        nvml_pids = self._last.job_pids if self._last else set()
        release = wait_gpus_released(
            self.recipe.name, self.clock, self.recipe.limits.gpu_release, self.source, nvml_pids, self.proc_root,
            stop=lambda: self.requests.stop,
            on_wait=lambda held, waited: self.console.status(
                f"waiting for the last attempt's GPU memory to be released ({waited:.0f}s): "
                + _held_text(held), self.clock.monotonic()))
        self.emit(events.GPU_STUCK if release.stuck else events.GPU_RELEASED, waited=round(release.waited, 3),
                  stuck={str(pid): why for pid, why in release.stuck.items()})
        if release.stuck and not self.requests.stop:
            return GiveUp(f"GPU memory still held {release.waited:.0f}s after the last attempt ended: "
                          f"{_held_text(release.stuck)}; stop these processes (or reset the GPU) and "
                          f"run again, or wait longer with limits.gpu_release")
        return None


def _held_text(held: dict[int, str]) -> str:
    return "; ".join(f"pid {pid} {why}" for pid, why in sorted(held.items()))

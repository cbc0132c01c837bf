"""Pure decisions: is the job over its limits, and why did an attempt end.

No clock, no /proc, no subprocess in here: the loop measures, this module judges, so
every rule is tested with plain values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Mapping, Sequence

from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.gpus import GpuProcess, GpuReading, job_gpus
from guardrun.launcher.units import Size, format_bytes

from ..diagnose.logs import Event, first_failure
from ..diagnose.rootcause import judged

if TYPE_CHECKING:
    from ..watch.gpuwatch import VramSample

#: The fast figure (summed anonymous RSS) over-counts a forked tree's copy-on-write pages
#: (FIELD_NOTES: 65 forked processes summed to 322 MB RSS). Above this share of the limit
#: the loop measures PSS before it acts, so a job is never stopped on a double count.
CONFIRM_AT = 0.9
#: Default for the recipe's `startup_window`: long enough for 8 ranks to load a 13B model
#: from a network disk before their first step, short enough that a job which trained for
#: hours and then hit an error is never taken for a crash loop.
STARTUP_WINDOW = 600.0


@dataclass(frozen=True)
class MemoryLimits:
    """The recipe's host limits, resolved to bytes against this machine."""

    tree: int | None        # the job tree's memory (anon + shmem, PSS-confirmed)
    min_available: int | None  # MemAvailable must stay above this


@dataclass(frozen=True)
class MemoryReading:
    tree_fast: int             # summed anonymous RSS of the tree (cheap, over-counts)
    available: int             # MemAvailable
    tree_pss: int | None = None  # PSS anon + shmem, when measured


@dataclass(frozen=True)
class Verdict:
    failure: Failure | None = None
    confirm: bool = False  # measure PSS and ask again before deciding

    @property
    def stop(self) -> bool:
        return self.failure is not None


KEEP_GOING = Verdict()


def judge_memory(reading: MemoryReading, limits: MemoryLimits) -> Verdict:
    """Stop for host_oom, keep going, or ask for a PSS confirmation first."""
    if limits.min_available is not None and reading.available < limits.min_available:
        return Verdict(Failure(Kind.HOST_OOM, (
            f"MemAvailable {format_bytes(reading.available)} fell below min_available "
            f"{format_bytes(limits.min_available)}")))
    if limits.tree is None or reading.tree_fast < CONFIRM_AT * limits.tree:
        return KEEP_GOING
    if reading.tree_pss is None:
        return Verdict(confirm=True)
    if reading.tree_pss >= limits.tree:
        return Verdict(Failure(Kind.HOST_OOM, (
            f"job memory {format_bytes(reading.tree_pss)} (PSS) reached the limit "
            f"{format_bytes(limits.tree)}")))
    return KEEP_GOING


def judge_vram(readings: Sequence[GpuReading], processes_by_gpu: Mapping[int, Sequence[GpuProcess]],
               job_pids: Collection[int], limit: Size | None, assigned: Collection[int] = ()) -> Verdict:
    """Stop for cuda_oom when a GPU the job is on crosses `limits.vram`.

    The GPU's whole use counts (total - free), not only the job's processes: a CUDA OOM
    happens when the device is full, whoever filled it, and stopping first lets guardrun
    lower the batch instead of losing the step to a crash.
    """
    if limit is None:
        return KEEP_GOING
    for reading in job_gpus(readings, processes_by_gpu, job_pids, assigned):
        allowed = limit.resolve(reading.total)
        if reading.used < allowed:
            continue
        held = [p.used for p in processes_by_gpu.get(reading.index, ()) if p.pid in job_pids]
        mine = (f"; the job's processes hold {format_bytes(sum(u for u in held if u))}"
                if any(u is not None for u in held) else "")
        return Verdict(Failure(Kind.CUDA_OOM, (
            f"gpu{reading.index} VRAM {format_bytes(reading.used)} of {format_bytes(reading.total)} "
            f"reached the limit {format_bytes(allowed)} ({limit.text}){mine}")))
    return KEEP_GOING


def judge(reading: MemoryReading, limits: MemoryLimits, vram: VramSample | None) -> Verdict:
    """Both limits in one place: host memory first, then the GPUs of this interval's VRAM
    sample (None: no GPU watched, or NVML failed this time)."""
    verdict = judge_memory(reading, limits)
    if verdict.stop or vram is None:
        return verdict
    return judge_vram(vram.readings, vram.processes, vram.job_pids, vram.limit, vram.assigned)


@dataclass(frozen=True)
class AttemptEnd:
    """Everything known when an attempt is over, for `classify`."""

    exit_code: int | None           # the launcher's; negative = killed by that signal
    events: Sequence[Event] = ()    # what the output said, in order
    stopped_for: Failure | None = None  # guardrun stopped it, and why
    interrupted: bool = False       # the user or systemd asked guardrun to stop
    progressed: bool = False        # any training step was seen
    attempt: int = 0
    last_step: int | None = None
    incomplete_save: str | None = None  # a checkpoint begun in this attempt and never finished
    took: float = 0.0               # seconds from spawn to exit: the crash-loop guard's clock
    nan_from: int | None = None     # first step whose weights may be NaN (NaN rollback bound)
    success_missing: str = ""       # the recipe's success evidence that was not seen, if any
    success_seen: bool = False      # this attempt printed the recipe's success line (and any file is there)
    traces: Sequence = ()           # rootcause.Trace: failure lines with their frames (root cause)
    building: Sequence = ()         # extlocks.Build: the tree's torch-extension builds at its end
    reached_target: str = ""        # the training ran to its end ("step 30/30"): see target_of
    kernel_oom: str = ""            # the kernel OOM-killed in the attempt's cgroup: the evidence


def classify(end: AttemptEnd, history: Sequence[Failure] = (),
             startup_window: float = STARTUP_WINDOW) -> Failure | None:
    """None when the attempt succeeded, else the Failure to record.

    A nan_loss's step is the first step whose weights may be NaN (the rollback bound), not
    the last step seen: the next attempt resumes from a checkpoint older than it.
    """
    def failure(kind: Kind, evidence: str, step: int | None = None) -> Failure:
        if step is None:
            step = end.nan_from if kind is Kind.NAN_LOSS and end.nan_from is not None else end.last_step
        return Failure(kind, evidence, attempt=end.attempt, step=step)

    if end.interrupted:
        return failure(Kind.INTERRUPTED, "stopped on request")
    if end.kernel_oom and end.exit_code != 0:
        # The cgroup's own counter, whichever rank died and whatever the others printed.
        return _while_saving(failure(Kind.HOST_OOM, end.kernel_oom), end)
    if end.stopped_for is not None:
        stopped = end.stopped_for
        if stopped.kind is Kind.HANG and end.reached_target and end.incomplete_save is None:
            return None  # hung on the way out after the last step (a process group's teardown)
        return _while_saving(failure(stopped.kind, stopped.evidence, stopped.step), end)
    if end.exit_code == 0:
        if end.success_missing:  # XTuner's `xtuner train` exits 0 after a failed run
            return failure(Kind.UNKNOWN, f"exit 0 without the success evidence: {end.success_missing}")
        return None
    if end.success_seen:
        # The job showed the recipe's proof that it finished, then died on the way out (a
        # rank aborting in teardown: "terminate called without an active exception").
        # Relaunching would only redo the end, from a checkpoint that may not resume cleanly.
        return None
    if end.reached_target and end.incomplete_save is None:
        # The same without a `success:` section (issue 13: a 2-rank HF run logged 30/30, a
        # rank aborted in teardown, and the relaunch from checkpoint-30 ran a 31st step).
        # A save cut off on the way is not the end: resuming before it trains no step twice.
        return None
    events = judged(end.events, end.traces)  # whose fault, from the frames (issue 13 §3)
    if end.progressed:
        # An ImportError printed by a library that then trained fine is not why it died.
        events = [event for event in events if event.kind != "user_error"]
    found = first_failure(events)
    if found is not None and found.kind in _EVENT_KINDS:
        kind = _EVENT_KINDS[found.kind]
    elif end.exit_code in (-9, 137):
        kind = Kind.HOST_OOM  # the launcher itself died of SIGKILL: the kernel's OOM killer
        found = None
    else:
        kind = Kind.UNKNOWN
    evidence = found.text if found is not None else f"exit code {end.exit_code}"
    if crash_loop(kind, evidence, end, history, startup_window):
        return failure(Kind.USER_ERROR, f"the same error twice before any progress: {evidence}")
    return _while_saving(failure(kind, evidence), end)


def target_of(step: int | None, total: int | None, per_epoch: bool,
              saved_step: int | None, saved_total: int | None) -> str:
    """"step 30/30" when the attempt trained to its end, else ''.

    The trainer's own record wins: `saved_step`/`saved_total` are the global_step and
    max_steps of a checkpoint this attempt wrote (trainer_state.json). Without one, the
    output's progress counts when it reached its total, unless that total is one epoch's
    (Lightning's `Epoch 0: 100%| 10/10` ends every epoch): a death between epochs is no end.
    """
    if saved_step is not None and saved_total is not None and saved_total > 0:
        return f"step {saved_step}/{saved_total}" if saved_step >= saved_total else ""
    if step is not None and total and not per_epoch and step >= total:
        return f"step {step}/{total}"
    return ""


#: Kinds a death during a save turns into save_failed: the save is the likelier culprit
#: (FIELD_NOTES situation 2: the save's memory spike kills the job), and its rung
#: (no 16-bit gather) is what makes the next save lighter.
_SAVE_MASKS = frozenset({Kind.HOST_OOM, Kind.UNKNOWN, Kind.TRANSIENT, Kind.HANG})


def _while_saving(found: Failure, end: AttemptEnd) -> Failure:
    if end.incomplete_save is None or found.kind not in _SAVE_MASKS:
        return found
    return Failure(Kind.SAVE_FAILED, f"died while saving: {end.incomplete_save}; {found.evidence}",
                   attempt=found.attempt, step=found.step)


_EVENT_KINDS = {
    "host_oom": Kind.HOST_OOM,
    "cuda_oom": Kind.CUDA_OOM,
    "user_error": Kind.USER_ERROR,
    "transient": Kind.TRANSIENT,
    "nan": Kind.NAN_LOSS,
}


#: Kinds the crash-loop guard looks at. The others change the configuration (a rung) or
#: were decided by guardrun itself (a hang), so a repeat is not the same attempt again.
_LOOPING = frozenset({Kind.UNKNOWN, Kind.TRANSIENT})
_VOLATILE = re.compile(r"0x[0-9a-fA-F]+|\b(?:pid|PID)\W{0,3}\d+|\d{4}-\d\d-\d\d[ T_]\d\d:\d\d:\d\d[.,\d]*"
                       r"|^\[(?:rank|default)\d+\]: ?")


def crash_loop(kind: Kind, evidence: str, end: AttemptEnd, history: Sequence[Failure],
               startup_window: float) -> bool:
    """The crash-loop guard: this attempt died before any progress, within `startup_window`
    of its start, of the same cause as the last failure. Restarting again would only
    repeat it (a bad flag, a missing file, a config the code rejects): stop and say so."""
    if kind not in _LOOPING or end.progressed or end.took > startup_window or not history:
        return False
    last = history[-1]
    return last.kind is kind and signature(last.evidence) == signature(evidence)


def signature(evidence: str) -> str:
    """The evidence with what changes between two runs of the same error (pids, addresses,
    times, the rank tag) masked."""
    return _VOLATILE.sub("#", evidence.strip())


def backoff(failures_at_rung: int, first: float, cap: float) -> float:
    """Seconds to wait before the next attempt: none after a change of rung, then doubling.

    A new rung is a new configuration, so it starts at once; only a restart of the same
    configuration (transient, unknown) waits, first, 2×first, ... up to cap.
    """
    if failures_at_rung <= 0:
        return 0.0
    return min(cap, first * 2 ** (failures_at_rung - 1))

"""One attempt: spawn the launch, look at it when asked, stop it when told, classify its end.

Each look measures (memory, output progress) and hands the numbers to the pure policy;
the loop (run.loop) stops the attempt only on the policy's verdict or a recorded signal.
Processes are reached only through the seam (watch.seams.ProcessOps).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from guardrun.launcher import checkpoints
from guardrun.launcher.command import LaunchSpec
from guardrun.launcher.failures import Failure
from guardrun.launcher.units import format_bytes

from ..core import events
from ..core.context import Context
from ..diagnose.output import MAX_LOG, OutputReader, Progress
from ..diagnose.patterns import Patterns
from ..record import levels
from ..record.console import Console
from ..record.spacewatch import SpaceWatch
from ..watch.cgroupfs import Group
from ..watch.containment import CgroupMemory, Containment
from ..watch.follow import CheckpointFollower, Seen
from ..watch.gpuwatch import GpuMonitor
from ..watch.seams import Launched, MemorySource, ProcessOps, RealProcesses, Tree
from .diagnosis import Diagnosis
from .extlocks import clear_build_locks, extensions_root, find_builds
from .memtrail import MemoryTrail
from .policy import (
    AttemptEnd,
    MemoryLimits,
    MemoryReading,
    judge,
    judge_memory,
    target_of,
)

#: How long the output pipe may stay open after the tree is gone (a writer we do not
#: know of); past it the reader is abandoned rather than hang the supervisor.
READER_JOIN_TIMEOUT = 10.0


class SpawnError(Exception):
    """The launcher could not be started (its program missing, not executable, ENOEXEC)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


@dataclass
class Peaks:
    tree: int = 0
    pss: int = 0
    min_available: int | None = None

    def update(self, reading: MemoryReading) -> None:
        self.tree = max(self.tree, reading.tree_fast)
        self.pss = max(self.pss, reading.tree_pss or 0)
        if self.min_available is None or reading.available < self.min_available:
            self.min_available = reading.available


@dataclass(frozen=True)
class Watch:
    """What the attempt needs from the supervisor, bundled so it is passed as one thing."""

    ctx: Context  # the attempt's: its emit names the attempt
    memory: MemorySource
    console: Console
    limits: MemoryLimits
    grace: float
    checkpoints: CheckpointFollower | None = None  # follows the checkpoint folder, if the recipe has one
    gpu: GpuMonitor | None = None  # samples VRAM each interval, where there are GPUs
    diagnosis: Diagnosis | None = None  # NaN and hang watch, recipe patterns, per-rank logs
    space: SpaceWatch | None = None  # the state dir's write health (the journal's), for output.log
    log_max_size: int = MAX_LOG  # logs.max_size: output.log's bound
    containment: Containment | None = None  # the job's cgroup, where it has one
    processes: ProcessOps = RealProcesses()  # spawn, the tree, its stop (supervisor.watch.seams)


@dataclass(frozen=True)
class Watched:
    """Why the watch ended: the launcher exited (neither set), a stop was asked for
    (`interrupted`), or a failure found while it ran (`stopped_for`: a limit, a hang, NaN)."""

    stopped_for: Failure | None = None
    interrupted: bool = False


@dataclass(frozen=True)
class Look:
    """One look at a running attempt: its progress and memory (None: it had ended, or a
    stop was asked for, before they were measured), and how the watch ended, if it did."""

    progress: Progress | None = None
    reading: MemoryReading | None = None
    ended: Watched | None = None


@dataclass(frozen=True)
class Ended:
    """An attempt's end as the policy classifies it, and the memory peaks it reached."""

    end: AttemptEnd
    peaks: Peaks


class Attempt:
    """One launch, in the phases the loop moves the job's state between: spawn (then
    RUNNING), a look every interval, stop (STOPPING while the launcher still runs), its end."""

    def __init__(self, spec: LaunchSpec, number: int, attempt_dir: Path, watch: Watch):
        self.spec, self.number, self.dir, self.watch = spec, number, attempt_dir, watch
        self.env = dict(os.environ)
        self.env.update(spec.env)
        self.peaks = Peaks()

    def spawn(self) -> int:
        """Start the launch and its output reader; the launcher's pid (SpawnError: none)."""
        for path, text in self.spec.files:
            path.write_text(text)
        # Wall clock on purpose: it is compared with file mtimes. One second of slack
        # covers filesystems that store whole seconds.
        self.spawned_at = time.time() - 1.0
        watch, number = self.watch, self.number
        group = watch.containment.attempt(number, watch.ctx) if watch.containment else None
        self.popen, self.group = _spawn(self.spec, self.env, number, group, watch)
        watch.ctx.emit(events.ATTEMPT_SPAWNED, attempt=number, pid=self.popen.pid, argv=list(self.spec.argv),
                   cgroup=str(self.group.path) if self.group else None)
        if self.group is not None:  # one memory.stat read per sample instead of the /proc walk
            fell_back = (lambda why, w=watch: w.containment.fell_back(why, w.ctx))
            self.watch = watch = dataclasses.replace(
                watch, memory=CgroupMemory(self.group, watch.memory, fell_back))
        self.started = watch.ctx.clock.monotonic()
        diagnosis = watch.diagnosis
        self.reader = OutputReader(self.popen.stdout, self.dir / "output.log", watch.console,
                                   prefix=f"[{number}] ",
                                   patterns=diagnosis.patterns if diagnosis else Patterns(),
                                   rank_logs=diagnosis.rank_logs if diagnosis else None,
                                   max_log=watch.log_max_size, space=watch.space).start()
        self.tree = watch.processes.tree()
        self.trail = MemoryTrail(number, watch.ctx.emit)
        return self.popen.pid

    def look(self) -> Look:
        """One look at the attempt (the loop's, every monitor interval): how it ended, if it
        did or must be stopped, and what was measured while it runs."""
        return _look(self.popen, self.tree, self.reader, self.peaks, self.watch, self.trail)

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, watched: Watched, running: bool) -> Ended:
        """Make sure nothing of the attempt is left (graceful if `running`), then its end;
        the tree is verified gone when this returns."""
        watch, number, popen = self.watch, self.number, self.popen
        # Before the kill: which torch extensions the tree is compiling (their locks are its own;
        # the compiler also goes into the root cause). Cleared once the tree is gone.
        extensions = extensions_root(self.env)
        builds = find_builds(extensions, self.tree.pids(popen.pid))
        if running:
            self.reader.stopping()
        _stop(popen, self.tree, watch, number, running,
              hurry=watched.interrupted and watch.ctx.requests.kill_now, group=self.group)
        kernel_oom = _kernel_oom(self.group, watch)
        clear_build_locks(extensions, builds, self.spawned_at, watch.ctx.emit, number)
        if not self.reader.join(READER_JOIN_TIMEOUT):
            watch.ctx.emit(events.OUTPUT_STILL_OPEN, attempt=number)
        progress = self.reader.progress()
        seen = watch.checkpoints.stop() if watch.checkpoints else None
        diagnosis = watch.diagnosis
        end = AttemptEnd(exit_code=popen.returncode, events=self.reader.evidence(),
                         stopped_for=watched.stopped_for, interrupted=watched.interrupted,
                         progressed=progress.step is not None or progress.loss is not None,
                         attempt=number, last_step=progress.step,
                         incomplete_save=_incomplete(seen), took=watch.ctx.clock.monotonic() - self.started,
                         building=builds, reached_target=_reached(progress, seen), kernel_oom=kernel_oom,
                         **(diagnosis.end_facts(self.reader) if diagnosis else {}))
        return Ended(end, self.peaks)


def _spawn(spec: LaunchSpec, env: dict, number: int, group: Group | None,
           watch: Watch) -> tuple[Launched, Group | None]:
    """Start the launch inside `group` (it joins before exec); if joining fails, without
    it, said (never the run's failure). SpawnError when nothing could be started."""
    join = os.fsencode(group.path / "cgroup.procs") if group is not None else None
    while True:
        try:
            return watch.processes.spawn(list(spec.argv), env=env, cwd=str(spec.cwd), join=join), group
        except subprocess.SubprocessError as err:
            if join is None or "preexec_fn" not in str(err):
                watch.ctx.emit(events.ATTEMPT_SPAWN_FAILED, attempt=number, program=spec.argv[0], error=str(err))
                raise SpawnError(OSError(str(err))) from None
            watch.containment.fell_back(f"the launcher could not join {group.path} ({err}); this "
                                        "attempt is watched through /proc", watch.ctx)
            group.remove()
            join = group = None
        except OSError as err:  # nothing was started: nothing to stop
            watch.ctx.emit(events.ATTEMPT_SPAWN_FAILED, attempt=number, program=spec.argv[0], error=str(err))
            if group is not None:
                group.remove()
            raise SpawnError(err) from None


def _kernel_oom(group: Group | None, watch: Watch) -> str:
    """The kernel's OOM kills inside the attempt's cgroup, as host_oom's evidence; then
    the (now empty) cgroup is removed."""
    if group is None:
        return ""
    kills = group.oom_kills()
    limit = watch.containment.hard_limit if watch.containment else None
    left = group.remove()
    if left:
        watch.ctx.emit(events.CGROUP_NOT_REMOVED, left=left)
    if kills <= 0:
        return ""
    at = f" at the hard limit {format_bytes(limit)}" if limit else ""
    watch.ctx.emit(events.CGROUP_OOM_KILL, path=str(group.path), kills=kills, hard_limit=limit)
    return f"the kernel OOM-killed {kills} process(es) in the job's cgroup{at} ({group.oom_counter})"


def _look(popen: Launched, tree: Tree, reader: OutputReader, peaks: Peaks, watch: Watch,
          trail: MemoryTrail) -> Look:
    """One look: has the launcher exited, is a stop requested, did a diagnosis or memory
    find a failure; memory measured (and judged) while it runs."""
    if popen.poll() is not None:
        return Look(ended=Watched())
    if watch.ctx.requests.stop:
        return Look(ended=Watched(interrupted=True))
    if watch.checkpoints is not None:
        watch.checkpoints.poll()
    if watch.diagnosis is not None:
        found = watch.diagnosis.check(reader, lambda: tree.pids(popen.pid))
        if found is not None:
            watch.ctx.emit(events.DIAGNOSIS_STOP, kind=str(found.kind), evidence=found.evidence, step=found.step)
            return Look(ended=Watched(stopped_for=found))
    reading = _measure(popen.pid, watch)
    peaks.update(reading)
    verdict = judge(reading, watch.limits, watch.gpu.sample() if watch.gpu is not None else None)
    trail.record(watch.ctx.clock.monotonic(), reading, watch.gpu, force=verdict.stop)  # for `guardrun report`
    if not verdict.stop:
        return Look(reader.progress(), reading)
    watch.ctx.emit(events.LIMIT_BREACHED, kind=str(verdict.failure.kind),
               evidence=verdict.failure.evidence, tree=reading.tree_fast,
               pss=reading.tree_pss, available=reading.available)
    return Look(reader.progress(), reading, Watched(stopped_for=verdict.failure))


def _incomplete(seen: Seen | None) -> str | None:
    """The checkpoint this attempt began and never finished, as evidence for save_failed."""
    if seen is None or not seen.incomplete:
        return None
    last = seen.incomplete[-1]
    return f"{last.name} is incomplete ({last.reason})"


def _reached(progress: Progress, seen: Seen | None) -> str:
    """"step 30/30" when the attempt trained to its end (policy.target_of): judged from the
    trainer_state.json of a checkpoint it wrote, else from its progress output. A checkpoint
    from before the attempt does not count: a recipe may have raised max_steps since."""
    saved = (checkpoints.inspect(seen.newest.path)
             if seen is not None and seen.newest is not None and seen.newest_at is not None else None)
    return target_of(progress.step, progress.total, progress.per_epoch,
                     saved.global_step if saved else None, saved.max_steps if saved else None)


def _measure(root_pid: int, watch: Watch) -> MemoryReading:
    sample = watch.memory.sample_tree(root_pid, adopter=os.getpid())
    host = watch.memory.host()
    reading = MemoryReading(tree_fast=sample.anon, available=host.available)
    if judge_memory(reading, watch.limits).confirm:
        # Re-read just before acting (earlyoom's habit): PSS counts each shared page once.
        reading = MemoryReading(tree_fast=sample.anon, available=host.available,
                                tree_pss=watch.memory.pss(sample.pids))
    return reading


def _stop(popen: Launched, tree: Tree, watch: Watch, number: int, running: bool, hurry: bool,
          group: Group | None) -> None:
    """Make sure nothing of the attempt is left: graceful if it is still `running`."""
    if running:
        watch.ctx.say(f"stopping attempt {number} (SIGTERM, then SIGKILL after "
                      f"{watch.grace:g}s)" if not hurry else f"killing attempt {number}")
    report = watch.processes.stop_tree(popen, tree, grace=0.0 if hurry else watch.grace,
                                       clock=watch.ctx.clock, hurry=lambda: watch.ctx.requests.kill_now,
                                       group=group, on_event=watch.ctx.emit)
    watch.ctx.emit(events.ATTEMPT_STOPPED, attempt=number, was_running=running,
               killed=list(report.killed), left=list(report.left), took=round(report.took, 3))
    if report.left:
        watch.ctx.say(levels.warning("processes survived SIGKILL: " + ", ".join(map(str, report.left))))


def describe_reading(reading: MemoryReading | None, limits: MemoryLimits) -> str:
    if reading is None:
        return ""
    used = reading.tree_pss if reading.tree_pss is not None else reading.tree_fast
    limit = f"/{format_bytes(limits.tree)}" if limits.tree else ""
    return f"mem {format_bytes(used)}{limit} · avail {format_bytes(reading.available)}"

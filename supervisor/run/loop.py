"""The one loop that wires it all: plan -> launch -> watch -> classify -> record -> next rung.

Everything that decides is pure and lives elsewhere (ladder, command, policy); this
module owns the clock, the processes, the journal and the terminal.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from guardrun.launcher.command import Resume, build
from guardrun.launcher.executable import launch_problem
from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.hostfit import limits_problem
from guardrun.launcher.ladder import added_flag_rejected, decide
from guardrun.launcher.plan import Plan, batch_words, job_global_batch
from guardrun.launcher.preflight import Resources
from guardrun.launcher.spec import Recipe
from guardrun.launcher.units import format_elapsed

from ..core import events, exits, signals
from ..core.clock import Clock
from ..core.context import Context
from ..core.states import TERMINAL, State, check_transition
from ..diagnose.output import Progress
from ..diagnose.rankcount import ranks_in_file
from ..record import levels
from ..record.console import Console
from ..record.journal import Journal, history
from ..record.metrics import Textfile
from ..record.shared import SharedDir, SharedDirError
from ..record.spacewatch import RETRY_EVERY, SUSPENDED
from ..record.statusline import SEP, Field, StatusLine, gpu_summary
from ..watch.containment import Containment, ContainmentRequired
from ..watch.containment import prepare as prepare_containment
from ..watch.fitcheck import measure, preflight_plan
from ..watch.follow import CheckpointFollower
from ..watch.follow import describe as describe_checkpoint
from ..watch.gpu import GpuSource, open_gpu_source
from ..watch.gpuwatch import GpuGuard, GpuMonitor, Pick
from ..watch.leftovers import start_time as process_start_time
from ..watch.memory import ProcfsMemory
from ..watch.seams import MemorySource, ProcessOps, RealProcesses
from .attempt import Attempt, Ended, SpawnError, Watch, Watched, describe_reading
from .checkpointprep import AtTarget, ResumeError, Tools
from .checkpointprep import prepare as prepare_resume
from .diagnosis import Diagnosis, root_cause
from .jobcheckpoint import for_node as resume_for_node
from .nodes import NODE, NodeFacts
from .nodes import part as node_part
from .policy import AttemptEnd, MemoryLimits, MemoryReading, backoff, classify
from .snapshot import JobSnapshot, measured
from .target import LastRun, already_finished, last_run

#: state.json is rewritten at most this often while a job runs (seconds).
STATE_EVERY = 2.0


@dataclass(frozen=True)
class Options:
    fresh: bool = False  # ignore the failure history of earlier runs of this recipe


def recipe_digest(recipe: Recipe) -> str:
    """The recipe file's bytes and the command line's overrides: one digest per job as run."""
    overrides = "".join(f"\n{o}" for o in recipe.overrides).encode()
    return hashlib.sha256(recipe.path.read_bytes() + overrides).hexdigest()[:16]


def free_port() -> int:
    """A TCP port free right now, for DeepSpeed's rendezvous (torchrun picks its own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nodes_free(shared: SharedDir, attempt: int) -> list[Resources]:
    """Every node's free memory as it wrote it at the end of the job's `attempt`, this node's
    too (issue 16: the tightest node decides the preflight, every node from the same files);
    none before the first attempt, and none of a node whose facts cannot be read."""
    found = []
    for rank in sorted(shared.ranks(attempt, NODE)) if attempt else ():
        try:
            found.append(NodeFacts.from_json(shared.read(attempt, NODE, rank)).resources())
        except (SharedDirError, TypeError, ValueError):
            continue
    return found


#: Told of every state change: the new state, and the exit code when it is terminal.
StateListener = Callable[[State, "int | None"], None]


class Supervisor:
    def __init__(self, recipe: Recipe, journal: Journal, console: Console, clock: Clock,
                 memory: MemorySource | None = None, options: Options = Options(),
                 gpus: GpuSource | None | str = "detect", requests: signals.Requests | None = None,
                 processes: ProcessOps | None = None):
        self.recipe = recipe
        self._hangup_noted = False
        self.journal = journal
        self.console = console
        self.clock = clock
        self.memory = memory or ProcfsMemory()
        self.processes = processes or RealProcesses()
        self._listeners: list[StateListener] = []
        self.options = options
        # Given: `guardrun run` installed the handlers before the recipe was read (cli.py).
        self._own_signals = requests is None
        self.requests = requests if requests is not None else signals.Requests()
        self.ctx = Context(clock, journal.emit, console.say, self.requests)
        self.state = State.STARTING
        self.digest = recipe_digest(recipe)
        self._snapshot = JobSnapshot(job=recipe.name, pid=os.getpid(), recipe=str(recipe.path),
                                     started=_now_iso(), state_since=time.time())
        self._last_state_write: float | None = None
        self._metrics = (Textfile(recipe.metrics.textfile, recipe.name, console.say, journal.emit)
                         if recipe.metrics else None)  # Prometheus' textfile, beside state.json
        self._gpus_given = gpus  # "detect": ask NVML when the run starts
        self.gpu: GpuGuard | None = None
        self._vram: GpuMonitor | None = None
        self.containment: Containment | None = None  # made when the run starts (_contain)
        self.nodes = node_part(recipe, clock, journal.emit, console.say)  # None on one machine

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        restore = signals.install(self.requests, self.console.detach) if self._own_signals else None
        try:
            self.processes.adopt_orphans()
            return self._run()
        finally:
            if self.containment is not None:
                self.containment.finish(self.journal.emit)
            if restore is not None:
                restore()
            self.console.clear_status()

    def snapshot(self) -> dict:
        """A copy of what state.json says, live (for the control socket's `status`)."""
        return self._snapshot.as_json()

    def note(self, **fields) -> None:
        """Add facts from around the loop to state.json (memory source, control socket)."""
        self._snapshot.update(**fields)

    def listen(self, listener: StateListener) -> None:
        """Call `listener` at every state change (systemd's notify: record.notify)."""
        self._listeners.append(listener)

    def _run(self) -> int:
        limits = self._limits()
        failures = [] if self.options.fresh else (self.nodes.history(self.digest) if self.nodes  # issue 16
                                                  else history(self.journal.dir, self.digest))
        earlier = None if self.options.fresh else last_run(self.journal.dir)
        self.journal.emit(events.RUN_STARTED, recipe=str(self.recipe.path), digest=self.digest,
                          overrides=list(self.recipe.overrides),
                          pid=os.getpid(), tree_limit=limits.tree,
                          min_available=limits.min_available, resumed_history=len(failures))
        if self._metrics is not None:  # `starting` before the first state change (waiting for GPUs)
            self._metrics.write(self._snapshot.as_json())
        early = self._before_launching(earlier)
        if early is not None:
            return early
        try:
            self._contain()
        except ContainmentRequired as err:
            return self._give_up(str(err), exits.USAGE)
        pick = self._choose_gpus()
        if pick.interrupted:
            return self._finish(State.INTERRUPTED, exits.INTERRUPTED, "interrupted while waiting for GPUs")
        if pick.give_up is not None:
            return self._give_up(pick.give_up.why)
        restarts, same_rung, last_plan, attempts = 0, 0, None, 0
        while True:
            decision = decide(self.recipe, failures, pick.ids)
            if decision.plan is None:
                return self._give_up(_no_rung(decision.give_up, len(failures), attempts))
            same_rung = same_rung + 1 if decision.plan == last_plan else 0
            if not self._wait_backoff(same_rung):
                return self._finish(State.INTERRUPTED, exits.INTERRUPTED, "interrupted during backoff")
            last_plan = decision.plan
            held = self.gpu.await_release() if self.gpu else None
            if self.requests.stop:
                return self._finish(State.INTERRUPTED, exits.INTERRUPTED, "stopped on request")
            if held is not None:
                return self._give_up(held.why)
            try:
                # issue 7: skip rungs predicted not to fit the free GPU and host memory
                plan = preflight_plan(self.recipe, failures, pick.ids, decision.plan,
                                      self.gpu.source if self.gpu else None, self.memory, self.ctx,
                                      nodes=nodes_free(self.nodes.nodes.shared, self.nodes.attempt)
                                      if self.nodes is not None else None)
                attempts += 1
                failure = self._attempt(plan, limits, failures, fresh=self.options.fresh and attempts == 1)
            except AtTarget as done:  # issue 13 §1: never resume at or past the end of training
                return self._finish(State.FINISHED, exits.FINISHED, f"the newest checkpoint {done}: the "
                                    "run is finished, not resumed")
            except ResumeError as err:
                if self.requests.stop:
                    return self._finish(State.INTERRUPTED, exits.INTERRUPTED, "stopped on request")
                return self._give_up(f"cannot resume: {err}")
            except SpawnError as err:  # found at the spawn itself (ENOEXEC, EACCES, a race)
                return self._give_up(launch_problem(self.recipe, os.environ, err.error), exits.USAGE)
            if failure is None:
                return self._finish(State.FINISHED, exits.FINISHED, "the job finished")
            if failure.kind is Kind.INTERRUPTED:
                return self._finish(State.INTERRUPTED, exits.INTERRUPTED, "stopped on request")
            if failure.kind is Kind.USER_ERROR:
                return self._give_up(f"user error, not retried: {failure.evidence}"
                                     + added_flag_rejected(self.recipe, plan, failure.evidence))
            if failure.kind is Kind.NODE_LOST:  # issue 16: never run on with fewer nodes
                return self._give_up(f"{failure.evidence}; the job is not run on without them")
            failures.append(failure)
            restarts += 1
            if restarts > self.recipe.restarts.max:
                return self._give_up(f"restarts used up ({self.recipe.restarts.max})")
            self._snapshot.count_restart(str(failure.kind))
            self._move(State.BACKOFF)

    def _before_launching(self, earlier: LastRun | None) -> int | None:
        """The exit code when the run ends before any attempt: a stop asked for already, a
        recipe that cannot launch or whose limits this machine cannot meet, a job finished before."""
        if self.requests.stop:  # asked before the first attempt (during startup or the leftovers)
            return self._finish(State.INTERRUPTED, exits.INTERRUPTED, "stopped on request before the first attempt")
        unlaunchable = launch_problem(self.recipe, os.environ)
        if unlaunchable:  # issue 12 §6: `python:` or `command[0]` missing, said with file:line
            return self._give_up(unlaunchable, exits.USAGE)
        unshared = self.nodes.problem() if self.nodes else ""
        if unshared:  # issue 16: the nodes' one channel
            return self._give_up(unshared, exits.USAGE)
        unmeetable = limits_problem(self.recipe, self.memory.host().total)
        if unmeetable:  # issue 13 §7: a limit at or above MemTotal
            return self._give_up(unmeetable, exits.USAGE)
        done = "" if self.options.fresh else already_finished(self.recipe, self.digest, earlier)
        if done:  # issue 13 §7: said, nothing launched
            return self._finish(State.FINISHED, exits.FINISHED, done)
        return None

    def _attempt(self, plan: Plan, limits: MemoryLimits, failures: list[Failure],
                 fresh: bool = False) -> Failure | None:
        number = self._next_attempt_number()
        if self.nodes is not None:
            self.nodes.begin(number)
        self._move(State.STARTING)
        attempt_dir = self.journal.attempt_dir(number)
        ctx = self.ctx.for_attempt(number)
        resume = self._prepare_resume(plan, failures, attempt_dir, ctx, fresh)
        spec = build(self.recipe, plan, attempt=number, resume=resume, files_dir=attempt_dir,
                     port=free_port() if self.recipe.launcher == "deepspeed" else None,
                     log_dir=attempt_dir)
        self._announce(number, plan, resume)
        started = self.clock.monotonic()
        watch = self._watch_for(number, plan, limits, attempt_dir, ctx)
        ended = self._run_attempt(Attempt(spec, number, attempt_dir, watch), lambda progress, reading: (
            self._status(number, plan, started, progress, reading, limits, watch.checkpoints)))
        if self.gpu is not None:
            self.gpu.attempt_ended()
        failure = self._classify(number, plan, ended, failures, attempt_dir, started)
        if self.nodes is None:
            return failure
        facts = NodeFacts.of(failure, measure(self.recipe, self.gpu.source if self.gpu else None, self.memory),
                             exit_code=ended.end.exit_code, reached_target=bool(ended.end.reached_target),
                             digest=self.digest, host_total=self.memory.host().total)
        return self.nodes.settle(number, failure, facts, lambda: self.requests.stop)

    def _classify(self, number: int, plan: Plan, ended: Ended, failures: list[Failure],
                  attempt_dir: Path, started: float) -> Failure | None:
        """The attempt's end as the policy names it (None: success), said in the journal,
        state.json and on the console."""
        end, peaks = ended.end, ended.peaks
        failure = classify(end, failures, startup_window=self.recipe.startup_window)
        if failure is not None:  # issue 13 §6: ranks the tool really ran, for the ladder's gpus rungs
            failure = dataclasses.replace(failure, ranks_seen=ranks_in_file(attempt_dir / "output.log"))
        cause = root_cause(end, failure, attempt_dir)
        kind = str(failure.kind) if failure else "success"
        self.journal.emit(events.ATTEMPT_ENDED, attempt=number, kind=kind,
                          evidence=failure.evidence if failure else "", exit_code=end.exit_code,
                          step=failure.step if failure else end.last_step, rung=plan.rung,
                          root_cause=cause.as_dict() if cause else None, peak_tree=peaks.tree,
                          peak_pss=peaks.pss, min_available=peaks.min_available,
                          reached_target=end.reached_target or None,
                          ranks_seen=failure.ranks_seen if failure else None,
                          took=round(self.clock.monotonic() - started, 3))
        self._snapshot.update(last_kind=kind, last_evidence=failure.evidence if failure else "",
                              root_cause=cause.as_dict() if cause else None)
        self.console.clear_status()
        self.console.say((levels.warning if failure else str)(
            f"attempt {number} ended: {kind}"
            + (f" ({failure.evidence})" if failure and failure.evidence else "")
            + (f" (the success evidence was seen, then it exited with code {end.exit_code})"
               if failure is None and end.exit_code != 0 and end.success_seen else "")))
        if failure is None and end.exit_code != 0 and not end.success_seen and end.reached_target:
            self.console.say(levels.warning(_teardown_warning(end)))
        for line in cause.lines() if cause else ():
            self.console.say(levels.warning(line))
        return failure

    def _watch_for(self, number: int, plan: Plan, limits: MemoryLimits, attempt_dir: Path,
                   ctx: Context) -> Watch:
        """What attempt `number` is watched with (`ctx`: the attempt's, its emit names it)."""
        follower = self._follower(ctx)
        self._vram = self.gpu.monitor(number, plan.gpu_ids) if self.gpu else None
        return Watch(ctx=ctx, memory=self.memory, console=self.console, limits=limits,
                     grace=self.recipe.stop_grace, checkpoints=follower, gpu=self._vram,
                     space=self.journal.space, log_max_size=self.recipe.logs.max_size,
                     containment=self.containment, processes=self.processes,
                     diagnosis=Diagnosis.for_attempt(
                         self.recipe, attempt_dir, ctx,
                         checkpoint_activity=lambda: follower.last_activity if follower else None))

    def _run_attempt(self, attempt: Attempt, status: Callable[[Progress, MemoryReading], str]) -> Ended:
        """Spawn (RUNNING), look every interval, stop (STOPPING while it still runs): the
        attempt's end. The launcher goes to state.json as (pid, start time), so the next run
        can find one a SIGKILLed supervisor left (supervisor.watch.leftovers); each look
        that measured is the status line."""
        pid = attempt.spawn()
        self._snapshot.update(launcher_pid=pid, launcher_start=process_start_time(pid))
        self._move(State.RUNNING)
        watched = self._watch(attempt, status)
        if attempt.running:  # guardrun stops it: the other nodes stop their part too (issue 16)
            self._tell_nodes(attempt.number, watched, None)
            self._move(State.STOPPING)
            return attempt.stop(watched, True)
        ended = attempt.stop(watched, False)
        if not ended.end.reached_target:  # a launcher's error in teardown after the target is no stop
            self._tell_nodes(attempt.number, watched, attempt.popen.returncode)
        return ended

    def _tell_nodes(self, number: int, watched: Watched, exit_code: int | None) -> None:
        if self.nodes is not None:
            self.nodes.stopping(number, watched, exit_code)

    def _watch(self, attempt: Attempt, status: Callable[[Progress, MemoryReading], str]) -> Watched:
        """Look at the attempt every monitor interval until it ends or must be stopped."""
        while True:
            look = attempt.look()
            if look.reading is not None:  # also the look that found a limit crossed: its figures
                self.console.status(status(look.progress, look.reading), self.clock.monotonic())
            if look.ended is not None:
                return look.ended
            peer = self.nodes.peer_stop() if self.nodes else None
            if peer is not None:
                return Watched(stopped_for=peer)
            self.clock.sleep(self.recipe.monitor.interval)

    # -- pieces --------------------------------------------------------------------------
    def _limits(self) -> MemoryLimits:
        total = self.memory.host().total
        limits = self.recipe.limits
        return MemoryLimits(
            tree=limits.host_memory.resolve(total) if limits.host_memory else None,
            min_available=limits.min_available.resolve(total) if limits.min_available else None)

    def _contain(self) -> None:
        """The job's cgroup (or why not), said in the journal and state.json (`guardrun status`)."""
        self.containment = prepare_containment(self.recipe, self.journal.dir, self.memory.host().total)
        self.journal.emit(events.MEMORY_SOURCE, kind=self.containment.kind, why=self.containment.reason,
                          hard_limit=self.containment.hard_limit)
        self._snapshot.update(memory_source=self.containment.kind,
                              memory_source_why=self.containment.reason)

    def _prepare_resume(self, plan: Plan, failures: list[Failure], attempt_dir: Path, ctx: Context,
                        fresh: bool = False) -> Resume:
        """The checkpoint to resume, set aside what must not be picked, convert if needed.
        Several nodes: node 0 does that and writes its decision, the others resume it (issue 16)."""
        last = failures[-1] if failures else None
        # After a NaN, resume from before it: later checkpoints may hold NaN weights.
        before = last.step if last and last.kind is Kind.NAN_LOSS and last.step is not None else None
        tools = Tools(attempt_dir, self.processes)
        prepare = functools.partial(prepare_resume, self.recipe, plan, ctx, tools, before_step=before, fresh=fresh)
        if self.nodes is None:
            return prepare()
        nodes = self.nodes.nodes
        return resume_for_node(nodes.shared, self.nodes.attempt, prepare, self.clock, nodes.timeout, ctx.say,
                               should_stop=lambda: self.requests.stop)

    def _announce(self, number: int, plan: Plan, resume_spec: Resume) -> None:
        resume = resume_spec.path
        nodes = self.recipe.node.count
        batch = f", {batch_words(plan, nodes)}" if plan.per_device else ""
        job_batch = job_global_batch(plan, nodes)  # every node's
        self.journal.emit(events.ATTEMPT_STARTED, attempt=number, rung=plan.rung, rungs=list(plan.rungs),
                          ranks=plan.ranks, gpus=plan.gpu_ids, per_device=plan.per_device,
                          grad_accum=plan.grad_accum, global_batch=job_batch,
                          lr=plan.lr, notes=list(plan.notes),
                          resume_from=str(resume) if resume else None,
                          load_universal=resume_spec.load_universal,
                          weights_only=resume_spec.weights_only)
        self.console.say(f"attempt {number}: rung {plan.rung}, {plan.ranks} rank(s){batch}"
                         + (f", resuming from {resume.name}" if resume else ", from the start"))
        for note in plan.notes:
            self.console.say(note)
        self._snapshot.update(attempt=number, rung=plan.rung, ranks=plan.ranks,
                              per_device=plan.per_device, grad_accum=plan.grad_accum,
                              global_batch=job_batch,
                              resume_from=str(resume) if resume else None)

    def _choose_gpus(self) -> Pick:
        """Open NVML (unless given a source) and pick the run's GPUs. With no GPU there is
        no guard, and `gpus:` counts CPU ranks as it always did."""
        source, why = open_gpu_source() if self._gpus_given == "detect" else (self._gpus_given, "given")
        self.journal.emit(events.GPU_SOURCE, found=source is not None, detail=why)
        if source is None:
            return Pick(None)
        self.gpu = GpuGuard(source, self.recipe, self.ctx, self.console)
        return self.gpu.pick_for_run()

    def _follower(self, ctx: Context) -> CheckpointFollower | None:
        spec = self.recipe.checkpoints
        if spec is None:
            return None
        return CheckpointFollower(spec.dir, spec.pattern, ctx, nodes=self.recipe.node.count)

    def _status(self, number: int, plan: Plan, started: float, progress: Progress,
                reading: MemoryReading | None, limits: MemoryLimits,
                follower: CheckpointFollower | None) -> str:
        now = self.clock.monotonic()
        self._note_logging()
        if self.requests.hung_up and not self._hangup_noted:
            # journaled here, not in the signal handler: the journal is not reentrant
            self._hangup_noted = True
            self.journal.emit(events.TERMINAL_HUNG_UP, attempt=number)
        mem, _, avail = describe_reading(reading, limits).partition(SEP)
        fields = [Field("attempt", f"attempt {number}"), Field("rung", f"rung {plan.rung}"),
                  Field("ranks", f"{plan.ranks} rank(s)"), Field("mem", mem), Field("avail", avail),
                  Field("gpu", self._vram.describe(), gpu_summary(self._vram.gpus())) if self._vram
                  else Field("gpu", "")]
        if progress.step is not None:
            total = f"/{progress.total}" if progress.total else ""
            fields.append(Field("step", f"step {progress.step}{total}"))
        if progress.loss is not None:
            fields.append(Field("loss", f"loss {progress.loss:.4g}"))
        if follower is not None:
            fields.append(Field("ckpt", describe_checkpoint(follower.seen, now)))
            self._snapshot.update(newest_checkpoint=str(follower.seen.newest.path)
                                  if follower.seen.newest else None)
        fields.append(Field("elapsed", format_elapsed(now - started)))
        self._snapshot.update(step=progress.step, loss=progress.loss, memory=describe_reading(reading, limits))
        self._snapshot.update(vram=self._vram.describe() if self._vram else None)
        self._snapshot.update(**measured(reading, limits, self._vram, follower.seen.newest.path
                                         if follower is not None and follower.seen.newest else None))
        if self._last_state_write is None or now - self._last_state_write >= STATE_EVERY:
            self._write_state(now)
        return StatusLine(fields)  # the console fits it to the terminal (record/statusline.py)

    def _wait_backoff(self, same_rung: int) -> bool:
        first, cap = self.recipe.restarts.backoff
        delay = backoff(same_rung, first, cap)
        if delay > 0:
            self.console.say(f"same configuration again: waiting {delay:g}s before the next attempt")
            self.journal.emit(events.BACKOFF, seconds=delay)
        return signals.wait_unless_stopped(self.clock, self.requests, delay)

    def _next_attempt_number(self) -> int:
        attempts = self.journal.dir / "attempts"
        # isascii: '²'.isdigit() is True and int('²') raises; such a folder is not an attempt.
        numbers = ([int(p.name) for p in attempts.iterdir() if p.name.isascii() and p.name.isdigit()]
                   if attempts.is_dir() else [])
        return max(numbers, default=0) + 1

    def _move(self, target: State, exit_code: int | None = None) -> None:
        """The one place the state changes: journaled, in state.json, told to the listeners
        (`exit_code`: the run's, with a terminal state)."""
        if target is self.state:
            return
        self.state = check_transition(self.state, target)
        self.journal.emit(events.STATE_CHANGED, state=str(target))
        self._snapshot.update(state_since=time.time())
        self._write_state(self.clock.monotonic())
        for listener in self._listeners:
            listener(target, exit_code if target in TERMINAL else None)

    def _write_state(self, now: float) -> None:
        self._last_state_write = now
        self._note_logging()
        self._snapshot.update(state=str(self.state), updated=_now_iso())
        state = self._snapshot.as_json()
        self.journal.write_state(state)
        if self._metrics is not None:
            self._metrics.write(state)

    def _note_logging(self) -> None:
        """Say (console, journal) when a state-dir write began or stopped failing; keep the
        standing line in state.json and `guardrun status` ("state dir full: logging suspended")."""
        for change in self.journal.space.changes():
            if change.resumed:
                lost = ", ".join(f"{count} {unit}" for count, unit in
                                 ((change.lost_lines, "lines"), (change.lost_events, "events")) if count)
                self.console.say(f"{change.what} is written again after {change.seconds:g}s of "
                                 f"{change.reason}" + (f"; {lost} were not written" if lost else ""))
                if change.what != "events.jsonl":  # the journal says its own resumption
                    self.journal.emit(events.LOGGING_RESUMED, what=change.what, reason=change.reason,
                                      lost_lines=change.lost_lines, lost_bytes=change.lost_bytes,
                                      seconds=change.seconds)
            else:
                self.console.say(f"{SUSPENDED}: {change.what}: {change.reason}; the job keeps "
                                 f"running and is still guarded; retrying every {RETRY_EVERY:g}s")
                self.journal.emit(events.LOGGING_SUSPENDED, what=change.what, reason=change.reason)
        self._snapshot.update(logging=self.journal.space.describe())

    def _finish(self, state: State, code: int, why: str) -> int:
        self._move(state, code)
        self.journal.emit(events.RUN_FINISHED if state is State.FINISHED else events.RUN_STOPPED,
                          state=str(state), exit_code=code, why=why)
        self.console.say(why)
        return code

    def _give_up(self, why: str, code: int = exits.GAVE_UP) -> int:
        """Record and say why; exit 1, or 2 (exits.USAGE) when the recipe cannot be launched."""
        self._snapshot.update(gave_up=why)
        self._move(State.GAVE_UP, code)
        self.journal.emit(events.RUN_GAVE_UP, exit_code=code, why=why)
        self.console.say(levels.error(f"giving up: {why}"))
        if code == exits.USAGE:  # a bad recipe, said where bad recipes are said
            exits.say_error(why)
        return code


def _no_rung(why: str, remembered: int, attempts: int) -> str:
    """The ladder's give-up, plus how to forget the history when this run made no attempt:
    the rungs were used up by earlier runs of the same recipe."""
    if attempts or not remembered:
        return why
    return (f"{why}, from the {remembered} failure(s) that earlier runs of this recipe recorded; "
            f"nothing was launched: `guardrun run --fresh` forgets them and starts at rung 0")


def _teardown_warning(end: AttemptEnd) -> str:
    """What a user is told when the job reached its target and then failed on the way out."""
    how = (f"hung in teardown ({end.stopped_for.evidence}) and was stopped" if end.stopped_for
           else f"exited with {_exit(end.exit_code)} in teardown")
    return f"warning: the job reached its target ({end.reached_target}), then {how}: not relaunched"


def _exit(code: int | None) -> str:
    """'code 1' or 'signal 6 (SIGABRT)' for an exit status (negative: killed by that signal)."""
    if code is None or code >= 0:
        return f"code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


def _now_iso() -> str:
    """Wall-clock time for people to read (never used for durations)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

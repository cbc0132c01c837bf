"""What memory cannot show: a loss gone NaN, a job that stopped moving.

`NanTracker` is fed every loss/nan event by the output reader; `HangWatch` is told, each
interval, whether the output or the checkpoint folder moved. Both decide with plain
numbers. `Sentinel` is the per-attempt object the watch loop asks every interval; it
owns the one side effect here, the stack dumps taken before a hung job is stopped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from guardrun.launcher.failures import Failure, Kind

from ..core import events
from ..core.clock import Clock
from . import stacks
from .logs import Event, split_rank

#: guardrun is on no package index, so `pip install 'guardrun[diagnosis]'` finds nothing.
PY_SPY_INSTALL = "pip install py-spy; in a guardrun clone: pip install '.[diagnosis]'"


@dataclass
class NanTracker:
    """The current run of logged steps whose loss or grad norm is nan/inf.

    HF Trainer logs on rank 0 only, but a script printing on every rank would repeat the
    same line: a line equal to the last NaN line (rank tag aside) counts once. A finite
    loss ends the run (a single inf from a loss-scaler overflow is tolerated when
    `nan_patience` > 1).
    """

    streak: int = 0
    first: Event | None = None        # the first NaN line of the current run
    first_step: int | None = None     # the step shown when it was logged
    last_clean: int | None = None     # step of the last finite loss before the run
    lowest_step: int | None = None    # the first training step this attempt showed
    _last_text: str = ""

    def see_step(self, step: int) -> None:
        if self.lowest_step is None or step < self.lowest_step:
            self.lowest_step = step

    def feed(self, event: Event, step: int | None) -> None:
        if event.kind == "loss":
            self.streak, self.first, self.first_step, self._last_text = 0, None, None, ""
            if step is not None:
                self.last_clean = step
        elif event.kind == "nan":
            text = split_rank(event.text)[1]
            if self.streak and text == self._last_text:
                return
            self._last_text = text
            self.streak += 1
            if self.first is None:
                self.first, self.first_step = event, step

    def unsafe_from(self) -> int | None:
        """The first step whose weights may be NaN: checkpoints from it on are suspect.

        A logged loss covers the steps since the previous log, and the step shown is the
        progress bar's, which lags the trainer (tqdm redraws at most every 0.1 s), so the
        bound is taken low: one past the last finite log, else one past the first step
        this attempt showed (its resume point), else the NaN's own step.
        """
        if self.last_clean is not None:
            return self.last_clean + 1
        if self.lowest_step is not None:
            return self.lowest_step + 1
        return self.first_step

    def state(self) -> "NanState":
        return NanState(self.streak, self.first.text if self.first else "", self.first_step,
                        self.unsafe_from() if self.streak else None)


def judge_nan(streak: int, patience: int) -> bool:
    """Act on NaN once `patience` logged steps in a row were nan/inf."""
    return streak >= max(1, patience)


class HangWatch:
    """How long the job has shown no sign of life: no output line, no checkpoint write."""

    def __init__(self, started: float):
        self.last_activity = started
        self._lines = 0

    def observe(self, now: float, lines: int, checkpoint_activity: float | None) -> float:
        """Record this interval's signs; the seconds since the last one."""
        if lines != self._lines:
            self._lines, self.last_activity = lines, now
        if checkpoint_activity is not None and checkpoint_activity > self.last_activity:
            self.last_activity = checkpoint_activity
        return now - self.last_activity


def judge_hang(silent_for: float, hang_after: float | None) -> bool:
    return hang_after is not None and silent_for >= hang_after


@dataclass(frozen=True)
class NanState:
    """What the output reader hands the sentinel about NaN losses."""

    streak: int = 0
    evidence: str = ""
    step: int | None = None        # the step shown when the first NaN of the run was logged
    unsafe_from: int | None = None


class Sentinel:
    """Asked every interval by the attempt's watch loop: stop for NaN or a hang?"""

    def __init__(self, *, clock: Clock, attempt_dir: Path, emit: Callable[..., None],
                 say: Callable[[str], None], nan_patience: int = 1, hang_after: float | None = None,
                 checkpoint_activity: Callable[[], float | None] = lambda: None):
        self.clock, self.attempt_dir, self.emit, self.say = clock, attempt_dir, emit, say
        self.nan_patience, self.hang_after = nan_patience, hang_after
        self.checkpoint_activity = checkpoint_activity
        self.hang = HangWatch(clock.monotonic())

    def check(self, lines: int, nan: NanState, pids: Callable[[], Sequence[int]]) -> Failure | None:
        if judge_nan(nan.streak, self.nan_patience):
            return Failure(Kind.NAN_LOSS, nan.evidence, step=nan.unsafe_from)
        now = self.clock.monotonic()
        silent = self.hang.observe(now, lines, self.checkpoint_activity())
        if not judge_hang(silent, self.hang_after):
            return None
        evidence = f"no output and no checkpoint activity for {silent:.0f}s (hang_after {self.hang_after:g}s)"
        self.emit(events.HANG_DETECTED, silent_for=round(silent, 3), hang_after=self.hang_after)
        self.dump(pids())
        return Failure(Kind.HANG, evidence)

    def dump(self, pids: Sequence[int]) -> None:
        """Stacks of every Python process of the job into attempts/N/stacks/<pid>.txt."""
        py_spy = stacks.find_py_spy()
        python_pids = [pid for pid in pids if stacks.is_python(pid)]
        if py_spy is None:
            self.emit(events.STACKS_SKIPPED, why=f"py-spy not found ({PY_SPY_INSTALL})", pids=python_pids)
            self.say(f"hang: no py-spy to dump the stacks with ({PY_SPY_INSTALL})")
            return
        folder = self.attempt_dir / "stacks"
        started = self.clock.monotonic()
        dumps = stacks.dump_stacks(py_spy, python_pids, folder, self.clock)
        self.emit(events.STACKS_DUMPED, dir=str(folder), took=round(self.clock.monotonic() - started, 3),
                  ok=[d.pid for d in dumps if d.ok],
                  failed={str(d.pid): d.note for d in dumps if not d.ok})
        self.say(f"hang: stacks of {sum(d.ok for d in dumps)} process(es) in {folder}")

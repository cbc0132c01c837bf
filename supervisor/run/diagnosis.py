"""Knowing why it failed: what an attempt needs beyond memory, bundled for the watch loop.

The loop builds one `Diagnosis` per attempt from the recipe (`for_attempt`); the attempt
asks it every interval whether to stop (NaN, hang: `check`) and, at the end, for the
facts the classifier needs (`end_facts`); the loop then asks for the root cause of the
classified failure (`root_cause`), which goes to the terminal, the journal and state.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from guardrun.launcher.command import RANKS_DIR
from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.spec import Recipe

from ..core.context import Context
from ..diagnose.output import OutputReader
from ..diagnose.patterns import Patterns
from ..diagnose.rootcause import (
    RootCause,
    compile_cause,
    pick_root_cause,
    read_error_files,
    settle,
)
from ..diagnose.sentinel import Sentinel
from .extlocks import compiling
from .policy import AttemptEnd


@dataclass(frozen=True)
class Diagnosis:
    sentinel: Sentinel
    patterns: Patterns = field(default_factory=Patterns)
    rank_logs: Path | None = None      # DeepSpeed's per-rank log folder, followed into the stream
    success_file: Path | None = None   # must exist after an exit 0
    needs_success_line: bool = False   # the recipe's success regex must have matched

    @classmethod
    def for_attempt(cls, recipe: Recipe, attempt_dir: Path, ctx: Context,
                    checkpoint_activity: Callable[[], float | None] = lambda: None) -> "Diagnosis":
        sentinel = Sentinel(clock=ctx.clock, attempt_dir=attempt_dir, emit=ctx.emit, say=ctx.say,
                            nan_patience=recipe.nan_patience, hang_after=recipe.limits.hang_after,
                            checkpoint_activity=checkpoint_activity)
        success = recipe.success
        return cls(sentinel=sentinel, patterns=Patterns.from_recipe(recipe.progress, success),
                   rank_logs=attempt_dir / RANKS_DIR if recipe.launcher == "deepspeed" else None,
                   success_file=success.file if success else None,
                   needs_success_line=bool(success and success.regex))

    def check(self, reader: OutputReader, pids: Callable[[], Sequence[int]]) -> Failure | None:
        """Every interval: a NaN run past `nan_patience`, or a hang (stacks dumped first)."""
        return self.sentinel.check(reader.progress().lines, reader.nan(), pids)

    def end_facts(self, reader: OutputReader) -> dict:
        """AttemptEnd's fields that come from the output: the NaN bound, the success evidence,
        the failure lines with their frames."""
        missing = self.success_missing(reader)
        # Seen means this attempt printed the success line (a success file alone may be
        # an earlier run's), and the rest of the evidence is there too.
        return {"nan_from": reader.nan().unsafe_from, "success_missing": missing,
                "success_seen": self.needs_success_line and not missing, "traces": reader.traces()}

    def success_missing(self, reader: OutputReader) -> str:
        missing = []
        if self.needs_success_line and not reader.succeeded():
            missing.append(f"no line matched success.regex {self.patterns.success.pattern!r}")
        if self.success_file is not None and not self.success_file.exists():
            missing.append(f"success.file {self.success_file} does not exist")
        return "; ".join(missing)


def root_cause(end: AttemptEnd, failure: Failure | None, attempt_dir: Path) -> RootCause | None:
    """The classified failure's root cause: error files first, then the output's traceback
    behind the classifier's evidence; guardrun's own evidence when it stopped the job. Host
    memory exhausted while a compiler of the tree built a torch extension: that build."""
    if failure is None or failure.kind is Kind.INTERRUPTED:
        return None
    extensions = compiling(end.building)
    if failure.kind is Kind.HOST_OOM and extensions:
        return compile_cause(str(failure.kind), extensions, failure.evidence)
    found = pick_root_cause(read_error_files(attempt_dir), end.traces, evidence=failure.evidence)
    return settle(found, str(failure.kind), failure.evidence,
                  decided_by_guardrun=end.stopped_for is not None)

"""What state.json says about a job while it runs: one typed record, written as it always was.

`guardrun status`, `guardrun list`, the control socket's `status` and the next run's
leftovers check read the file; its keys are part of the journal's format (README, "What
guardrun keeps"). A fact not known yet is left out of the file (not written as null):
`attempt` appears with the first attempt, `gave_up` only when the run gave up.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..watch.gpuwatch import GpuMonitor
from .policy import MemoryLimits, MemoryReading


class _Unset:
    """A fact not known yet: left out of state.json."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


@dataclass
class JobSnapshot:
    job: str
    pid: int
    recipe: str                               # the recipe's path
    started: str                              # wall-clock ISO time the supervisor started
    state: str = "starting"                   # core.states.State's value
    updated: str | _Unset = UNSET             # when the file was last written
    # how host memory is read, and the supervisor's own handles (unattended.jobrun)
    memory_source: str | _Unset = UNSET
    memory_source_why: str | _Unset = UNSET
    control_socket: str | _Unset = UNSET
    supervisor_start: int | None | _Unset = UNSET
    # the current attempt's plan (from attempt.started)
    attempt: int | _Unset = UNSET
    rung: int | _Unset = UNSET
    ranks: int | _Unset = UNSET
    per_device: int | None | _Unset = UNSET
    grad_accum: int | None | _Unset = UNSET
    global_batch: int | None | _Unset = UNSET
    resume_from: str | None | _Unset = UNSET
    # its launcher, as (pid, start time): what a next run stops if this supervisor dies
    launcher_pid: int | _Unset = UNSET
    launcher_start: int | None | _Unset = UNSET
    # its progress, from the status line
    step: int | None | _Unset = UNSET
    loss: float | None | _Unset = UNSET
    memory: str | _Unset = UNSET
    vram: str | None | _Unset = UNSET
    newest_checkpoint: str | None | _Unset = UNSET  # only for a recipe with `checkpoints:`
    # the same as numbers (bytes, Unix seconds), for the Prometheus textfile (record.metrics)
    tree_memory: int | None | _Unset = UNSET
    tree_limit: int | None | _Unset = UNSET
    available: int | None | _Unset = UNSET
    gpu_memory: list | None | _Unset = UNSET  # [{gpu, used, total, limit}] for the job's GPUs
    checkpoint_mtime: float | None | _Unset = UNSET
    state_since: float | _Unset = UNSET       # when the job entered `state`
    restarts: dict | _Unset = UNSET           # failure kind -> attempts relaunched after it
    # how the last attempt ended, and why the run gave up
    last_kind: str | _Unset = UNSET
    last_evidence: str | _Unset = UNSET
    root_cause: dict | None | _Unset = UNSET
    gave_up: str | _Unset = UNSET
    logging: str | None | _Unset = UNSET      # the state dir's write health (record.spacewatch)

    def update(self, **facts: Any) -> None:
        """Set facts by name; a name state.json does not have is a bug (TypeError)."""
        for name, value in facts.items():
            if name not in _FIELDS:
                raise TypeError(f"state.json has no field {name!r}")
            setattr(self, name, value)

    def count_restart(self, kind: str) -> None:
        counts = {} if isinstance(self.restarts, _Unset) else self.restarts
        self.restarts = {**counts, kind: counts.get(kind, 0) + 1}

    def as_json(self) -> dict[str, Any]:
        """state.json's content: every fact known, in the fields' order."""
        return {name: value for name in _FIELDS if (value := getattr(self, name)) is not UNSET}


_FIELDS: Final = tuple(field.name for field in dataclasses.fields(JobSnapshot))


def measured(reading: MemoryReading | None, limits: MemoryLimits, vram: GpuMonitor | None,
             checkpoint: Path | None) -> dict[str, Any]:
    """A look's figures as state.json's number fields (None: not measured)."""
    gpus = vram.gpus() if vram is not None else []
    return {
        "tree_memory": None if reading is None else (
            reading.tree_pss if reading.tree_pss is not None else reading.tree_fast),
        "tree_limit": limits.tree,
        "available": None if reading is None else reading.available,
        "gpu_memory": [{"gpu": g.index, "used": g.used, "total": g.total,
                        "limit": vram.limit.resolve(g.total) if vram.limit else None} for g in gpus] or None,
        "checkpoint_mtime": _mtime(checkpoint),
    }


def _mtime(path: Path | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path is not None else None
    except OSError:  # removed since it was seen
        return None

"""The job's numbers for Prometheus, as a file node_exporter's textfile collector reads.

`metrics: {textfile: DIR}` (or `--metrics-dir DIR`) writes `DIR/guardrun_<job>.prom` from
state.json's facts each time state.json is written (every few seconds while an attempt
runs, and at every state change). The collector's rules: only `*.prom` files are read, a
file is read whole at each scrape (so it is written to a temp file in DIR that the
collector skips, then renamed over the old one), and a sample with a timestamp makes it
skip the file (so none has one). A metric with the same name in two jobs' files must have
the same HELP, so no HELP names a job.

Times are exported as Unix timestamps (`*_timestamp_seconds`), not ages: an age in a file
written every few seconds is stale by the time it is scraped and frozen once the run
ends, while `time() - guardrun_checkpoint_timestamp_seconds` is right at any moment
(Prometheus' instrumentation guide: export the time something happened).

The metrics never cost the run: a DIR that is missing, read-only or full is said once
(console and journal), retried at every write, and said again when a write works.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from guardrun.launcher.failures import FATAL, Kind

from ..core import events
from ..core.states import State

#: Failure kinds a run restarts after: each has a restart counter from the start, at 0,
#: so that `increase()` sees the first one.
RESTART_KINDS = tuple(str(kind) for kind in Kind if kind not in FATAL)

#: The gauges of one value each: name, HELP, and the state.json fact it shows.
GAUGES = (
    ("guardrun_job_attempt", "the current attempt's number (1 for the first)", "attempt"),
    ("guardrun_job_rung", "the ladder rung the current attempt runs (0: the recipe as written)", "rung"),
    ("guardrun_job_step", "the newest training step the job logged", "step"),
    ("guardrun_job_loss", "the newest loss the job logged", "loss"),
    ("guardrun_job_memory_bytes", "the job's process tree memory (PSS when measured, else anonymous RSS)",
     "tree_memory"),
    ("guardrun_job_memory_limit_bytes", "limits.host_memory: the tree memory the job is stopped at",
     "tree_limit"),
    ("guardrun_host_memory_available_bytes", "the machine's MemAvailable", "available"),
    ("guardrun_checkpoint_timestamp_seconds", "when the newest valid checkpoint was written (its mtime)",
     "checkpoint_mtime"),
    ("guardrun_job_state_change_timestamp_seconds", "when the job entered its current state",
     "state_since"),
)


def file_name(job: str) -> str:
    return f"guardrun_{job}.prom"


def render(job: str, state: Mapping[str, Any]) -> str:
    """The textfile for `state` (state.json's content): HELP and TYPE for each metric, then
    its samples; a fact not known yet (no step logged, no limit set) has no sample."""
    label = f'job="{_escape(job)}"'
    blocks = [_family("guardrun_job_state", "gauge", "1 for the state the job is in, 0 for the others",
                      ((f'{label},state="{s}"', int(state.get("state") == str(s))) for s in State))]
    for name, help_text, fact in GAUGES:
        if state.get(fact) is not None:
            blocks.append(_family(name, "gauge", help_text, ((label, state[fact]),)))
    restarts = state.get("restarts") or {}
    kinds = RESTART_KINDS + tuple(k for k in restarts if k not in RESTART_KINDS)
    blocks.append(_family("guardrun_restarts_total", "counter", "attempts relaunched after a failure, by its kind",
                          ((f'{label},kind="{_escape(k)}"', restarts.get(k, 0)) for k in kinds)))
    gpus = state.get("gpu_memory") or ()
    blocks.append(_family("guardrun_gpu_memory_bytes", "gauge", "memory used on each of the job's GPUs",
                          ((f'{label},gpu="{g["gpu"]}"', g["used"]) for g in gpus)))
    blocks.append(_family("guardrun_gpu_memory_limit_bytes", "gauge", "limits.vram on each of the job's GPUs",
                          ((f'{label},gpu="{g["gpu"]}"', g["limit"]) for g in gpus if g.get("limit") is not None)))
    return "".join(block for block in blocks if block)


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> str:
    lines = [f"{name}{{{labels}}} {_number(value)}\n" for labels, value in samples]
    if not lines:
        return ""
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n" + "".join(lines)


def _number(value: float) -> str:
    if isinstance(value, int):  # bool too: 0 or 1
        return str(int(value))
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    """A label value as the text format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Textfile:
    """Writes one job's textfile; a failing write is said once and retried at the next."""

    def __init__(self, directory: Path, job: str, say: Callable[[str], None], emit: Callable[..., None]):
        self.path = directory / file_name(job)
        self.job = job
        self._say, self._emit = say, emit
        self._failing: str | None = None  # why the last write failed

    def write(self, state: Mapping[str, Any]) -> None:
        try:
            _replace(self.path, render(self.job, state))
        except OSError as err:
            if self._failing is None:
                reason = err.strerror or str(err)
                self._say(f"metrics: cannot write {self.path}: {reason}; the job goes on, "
                          "retrying at every state write")
                self._emit(events.METRICS_FAILED, path=str(self.path), reason=reason)
                self._failing = reason
            return
        if self._failing is not None:
            self._failing = None
            self._say(f"metrics: {self.path} is written again")
            self._emit(events.METRICS_RESUMED, path=str(self.path))


def _replace(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path` (a name the collector skips), then rename
    it over `path`: a scrape reads the old file or the new one, never half of one."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o644)  # node_exporter runs as its own user
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise

"""Every journal event name guardrun emits, in one place.

`Journal.emit(NAME, **fields)` writes `{"job": ..., **fields, "event": "guardrun." + NAME}`
to events.jsonl; readers get NAME back with `name_of(event)`. The strings are part of
the journal's public format (README, "What guardrun keeps"): a rename breaks readers.
Emitters and readers use these constants, never a spelled-out string
(tests/unit/test_events.py checks every emit call in supervisor/).
"""
from __future__ import annotations

from typing import Any

PREFIX = "guardrun."  # the prefix of every name as written in events.jsonl

# -- the run -------------------------------------------------------------------------------
RUN_STARTED = "run.started"    # a supervisor began: recipe, digest, pid, limits; divides runs in the journal
RUN_FINISHED = "run.finished"  # the job is done (exit 0, or nothing was left to train): exit_code, why
RUN_STOPPED = "run.stopped"    # stopped on request (^C, `guardrun stop`, systemd): exit_code, why
RUN_GAVE_UP = "run.gave_up"    # no more attempts (restarts used up, no rung left, user error): exit_code, why
STATE_CHANGED = "state.changed"  # the job's state moved (core.states): state
BACKOFF = "backoff"            # waiting before the next attempt: seconds
TERMINAL_HUNG_UP = "terminal.hung_up"  # the controlling terminal went away (SIGHUP); the run goes on
LEFTOVERS_STOPPED = "leftovers.stopped"  # a dead run's launcher tree was found and stopped: pids, killed

# -- one attempt ---------------------------------------------------------------------------
ATTEMPT_STARTED = "attempt.started"  # an attempt is planned: rung, ranks, batch, lr, resume_from
ATTEMPT_SPAWNED = "attempt.spawned"  # its launcher runs: pid, argv, cgroup
ATTEMPT_SPAWN_FAILED = "attempt.spawn_failed"  # nothing could be started: program, error
ATTEMPT_STOPPED = "attempt.stopped"  # its tree is gone: was_running, killed, left, took
ATTEMPT_ENDED = "attempt.ended"      # it ended, classified: kind, evidence, exit_code, step, root_cause, peaks
OUTPUT_STILL_OPEN = "output.still_open"  # a process outside the tree still holds its output pipe
LIMIT_BREACHED = "limit.breached"    # host memory crossed a limit, the attempt is stopped: kind, evidence
DIAGNOSIS_STOP = "diagnosis.stop"    # the output showed a failure (NaN, hang, pattern): kind, evidence, step
HANG_DETECTED = "hang.detected"      # no output and no checkpoint for hang_after: silent_for
STACKS_DUMPED = "stacks.dumped"      # py-spy dumped the hung tree's stacks: dir, took
STACKS_SKIPPED = "stacks.skipped"    # no stacks for a hang: why

# -- memory --------------------------------------------------------------------------------
MEMORY_SOURCE = "memory.source"      # how host memory is read for this run (cgroup or /proc): kind, why
MEMORY_SAMPLE = "memory.sample"      # a sparse memory reading for `guardrun report`: pss, tree, available, vram
CGROUP_ATTEMPT = "cgroup.attempt"    # an attempt's cgroup was made: path, hard_limit
CGROUP_FALLBACK = "cgroup.fallback"  # the attempt is watched through /proc instead of its cgroup: why
CGROUP_OOM_KILL = "cgroup.oom_kill"  # the kernel OOM-killed processes in the attempt's cgroup: kills
CGROUP_NOT_REMOVED = "cgroup.not_removed"  # an attempt's cgroup could not be removed: left
CGROUP_REMOVED = "cgroup.removed"    # the job's cgroup was removed at the end of the run: path, left
CGROUP_LEFTOVER_REMOVED = "cgroup.leftover_removed"  # a dead run's cgroup was removed: path, left

# -- GPUs ----------------------------------------------------------------------------------
GPU_SOURCE = "gpu.source"            # whether NVML was found: found, detail
GPU_CHOSEN = "gpu.chosen"            # the run's GPUs: gpus, waited
GPU_WAITING = "gpu.waiting"          # not enough free GPUs yet, waiting: reason, up_to
GPU_UNAVAILABLE = "gpu.unavailable"  # gave up waiting for free GPUs: reason, waited
GPU_WARNING = "gpu.warning"          # something about the GPUs worth knowing: message
GPU_PROCESSES = "gpu.processes"      # which process query the driver answered (None: none did): query, detail
GPU_RELEASED = "gpu.released"        # the last attempt's VRAM was given back: waited
GPU_STUCK = "gpu.stuck"              # the last attempt's VRAM was not given back in time: waited, stuck
VRAM_PEAK = "vram.peak"              # an attempt's VRAM peak per GPU: peaks, error

# -- the preflight -------------------------------------------------------------------------
PREFLIGHT_FITS = "preflight.fits"        # the rung is predicted to fit: rung, gpu, host
PREFLIGHT_SKIPPED = "preflight.skipped"  # rungs skipped as predicted not to fit: rung, rungs, kind
PREFLIGHT_NONE_FITS = "preflight.none_fits"  # no rung is predicted to fit; the chosen one is tried: rung, reason

# -- checkpoints ---------------------------------------------------------------------------
CHECKPOINT_SAVED = "checkpoint.saved"  # the job wrote a complete checkpoint: path, step
CHECKPOINT_INCOMPLETE = "checkpoint.incomplete"  # a checkpoint was begun and not finished: path, step, reason
CHECKPOINT_QUARANTINED = "checkpoint.quarantined"  # a checkpoint not to resume was set aside: path, to
CHECKPOINT_NOT_QUARANTINED = "checkpoint.not_quarantined"  # setting it aside failed: path, error
CHECKPOINT_BATCH_FIXED = "checkpoint.batch_fixed"  # its saved train_batch_size was set to the new rung's
CHECKPOINT_BATCH_NOT_FIXED = "checkpoint.batch_not_fixed"  # that failed: path, error
CHECKPOINT_LR_RESCALED = "checkpoint.lr_rescaled"  # its scheduler's lr was rescaled for the new batch
CHECKPOINT_CONVERTED = "checkpoint.converted"  # converted to a universal checkpoint for a new world size

# -- several nodes (nodes.count > 1: supervisor/run/nodes.py) -----------------------------
NODE_ATTEMPT = "node.attempt"    # this node's part of the job's attempt begins: job_attempt, node, nodes, shared_dir
NODE_STOPPING = "node.stopping"  # this node told the others it stops its part: job_attempt, kind, evidence, error
NODE_SETTLED = "node.settled"    # every node's word on the attempt, merged: job_attempt, kind, evidence, parts, waited

# -- torch extension build locks -----------------------------------------------------------
EXTENSION_LOCK_CLEARED = "extension_lock.cleared"  # a build lock the stopped tree held was removed: path
EXTENSION_LOCK_KEPT = "extension_lock.kept"        # a build lock was left in place: path, why

# -- the journal itself --------------------------------------------------------------------
LOGGING_SUSPENDED = "logging.suspended"  # a state-dir file stopped being written (disk full): what, reason
LOGGING_RESUMED = "logging.resumed"      # writing works again: what, since, lost lines/events
METRICS_FAILED = "metrics.failed"        # the Prometheus textfile cannot be written (the run goes on): path, reason
METRICS_RESUMED = "metrics.resumed"      # it is written again: path

# -- a tree's stop (proc.stop_tree's on_event: an attempt's, a checkpoint helper's) -----------
PROC_TERM_SENT = "proc.term_sent"            # SIGTERM went to the launcher (or each member): pids
PROC_TERM_FORWARDED = "proc.term_forwarded"  # the launcher is gone: each member left got its own SIGTERM
PROC_KILL_SENT = "proc.kill_sent"            # SIGKILL sent: pids
PROC_GROUP_KILLED = "proc.group_killed"      # the attempt's cgroup killed at once (v2's cgroup.kill)
PROC_SURVIVED_KILL = "proc.survived_kill"    # processes still alive after SIGKILL: pids, after

#: Every name above.
ALL = frozenset(value for key, value in dict(globals()).items()
                if key.isupper() and key not in ("PREFIX", "ALL") and isinstance(value, str))


def journaled(name: str) -> str:
    """The name as events.jsonl spells it (`guardrun.attempt.ended`)."""
    return PREFIX + name


def name_of(event: dict[str, Any]) -> str | None:
    """An events.jsonl object's event name without the prefix (ATTEMPT_ENDED, ...);
    None when it has none, or not one of guardrun's."""
    value = event.get("event")
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return None
    return value[len(PREFIX):]

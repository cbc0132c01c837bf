"""One checkpoint for the whole job (issue 16): node rank 0 decides, the others follow.

Between attempts node 0 gets the checkpoint folder ready as on one machine (choose, set
aside, rewrite, convert: checkpointprep.prepare) and writes what it decided to
`<shared_dir>/<job>/attempt-N/checkpoint-0.json`, whole (record.shared: a reader sees all
of it or nothing). Every other node waits for that file, up to `nodes.timeout`, and
resumes exactly what it says, touching nothing in the checkpoint folder: two nodes setting
aside or converting the same files would race, and could pick different checkpoints.

The decision is one of four outcomes, the ways `prepare` can end:
    resume     the checkpoint and how to load it (universal, weights only)
    fresh      no checkpoint: the attempt starts from scratch
    refused    node 0 could not make one ready (ResumeError): no node starts
    at_target  the newest checkpoint is at the end of training (AtTarget): the run is over
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from guardrun.launcher.checkpoints import Checkpoint
from guardrun.launcher.command import Resume
from guardrun.launcher.resume import Target

from ..core.clock import Clock
from ..record.shared import SharedDir, SharedDirError
from .checkpointprep import AtTarget, ResumeError

#: The decision's stem in the shared folder: only node 0 writes one, checkpoint-0.json.
STEM = "checkpoint"
#: How often a waiting node looks for the decision (seconds): a stat on the shared filesystem.
POLL = 0.5
OUTCOMES = ("resume", "fresh", "refused", "at_target")


class DecisionTimeout(ResumeError):
    """Node 0's decision did not arrive within nodes.timeout: node 0 is lost."""


@dataclass(frozen=True)
class Decision:
    outcome: str
    resume: Resume = Resume()
    reason: str = ""                 # refused: node 0's ResumeError
    target: Target | None = None     # at_target: the checkpoint's recorded end

    def as_dict(self) -> dict[str, Any]:
        path = self.resume.path
        return {"outcome": self.outcome, "path": str(path) if path else None,
                "load_universal": self.resume.load_universal, "weights_only": self.resume.weights_only,
                "reason": self.reason,
                "target": [self.target.step, self.target.total] if self.target else None}

    def apply(self) -> Resume:
        """The Resume to launch with, or what node 0 met raised again on this node."""
        if self.outcome == "refused":
            raise ResumeError(f"node 0 could not make a checkpoint ready: {self.reason}")
        if self.outcome == "at_target":
            path = self.resume.path
            raise AtTarget(Checkpoint(path, self.target.step), self.target)
        return self.resume


def decided(prepare: Callable[[], Resume]) -> tuple[Decision, BaseException | None]:
    """Node 0: run `prepare` and turn how it ended into a Decision (and the error to raise again)."""
    try:
        resume = prepare()
    except AtTarget as done:
        return Decision("at_target", Resume(done.checkpoint.path), target=done.target), done
    except ResumeError as err:
        return Decision("refused", reason=str(err)), err
    return Decision("resume" if resume.path else "fresh", resume), None


def parse(data: dict[str, Any], shown: Path) -> Decision:
    """A decision file's object as a Decision; anything else a ResumeError naming the file."""
    try:
        outcome = data["outcome"]
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        path = Path(data["path"]) if data.get("path") else None
        if outcome in ("resume", "at_target") and path is None:
            raise ValueError(f"{outcome} without a path")
        target = data.get("target")
        if outcome == "at_target":
            target = Target(int(target[0]), int(target[1]))
        return Decision(outcome, Resume(path, load_universal=data.get("load_universal") is True,
                                        weights_only=data.get("weights_only") is True),
                        reason=str(data.get("reason") or ""), target=target if outcome == "at_target" else None)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ResumeError(f"node 0's checkpoint decision {shown} is damaged ({err}); the nodes cannot "
                          "agree on a checkpoint") from None


def publish(shared: SharedDir, attempt: int, decision: Decision) -> None:
    """Node 0: write the decision where the other nodes look; a shared_dir that cannot be
    written is a ResumeError (the others would wait for nothing)."""
    try:
        shared.put(attempt, STEM, decision.as_dict())
    except SharedDirError as err:
        raise ResumeError(f"cannot write the checkpoint decision for the other nodes: {err}") from None


def await_decision(shared: SharedDir, attempt: int, clock: Clock, timeout: float,
                   should_stop: Callable[[], bool] = lambda: False) -> Decision:
    """Another node: node 0's decision for `attempt`, once it is there.

    DecisionTimeout when it has not come within `timeout` seconds; a ResumeError when this
    node is asked to stop meanwhile (the loop then ends the run as interrupted)."""
    path = shared.attempt_dir(attempt) / f"{STEM}-0.json"
    started = clock.monotonic()
    while 0 not in shared.ranks(attempt, STEM):
        if should_stop():
            raise ResumeError(f"stopped while waiting for node 0's checkpoint decision ({path})")
        if clock.monotonic() - started >= timeout:
            raise DecisionTimeout(f"node 0 decided no checkpoint for attempt {attempt} within "
                                  f"{timeout:g}s (no {path}): node 0 is lost")
        clock.sleep(POLL)
    try:
        return parse(shared.read(attempt, STEM, 0), path)
    except SharedDirError as err:
        raise ResumeError(f"node 0's checkpoint decision is damaged ({err}); the nodes cannot agree "
                          "on a checkpoint") from None


def for_node(shared: SharedDir, attempt: int, prepare: Callable[[], Resume], clock: Clock,
             timeout: float, say: Callable[[str], None],
             should_stop: Callable[[], bool] = lambda: False) -> Resume:
    """The Resume of `attempt` on this node: node 0 prepares (`prepare`: checkpointprep's)
    and publishes; the others wait for that and follow it."""
    if shared.rank == 0:
        decision, error = decided(prepare)
        publish(shared, attempt, decision)
        if error is not None:
            raise error
        return decision.resume
    started = clock.monotonic()
    decision = await_decision(shared, attempt, clock, timeout, should_stop)
    return follow(decision, say, lambda: clock.monotonic() - started < timeout and not should_stop(),
                  lambda: clock.sleep(POLL))


def follow(decision: Decision, say: Callable[[str], None], may_wait: Callable[[], bool] = lambda: False,
           wait: Callable[[], None] = lambda: None) -> Resume:
    """Another node: the Resume node 0 decided, checked against what this node sees. A path
    not there yet is looked for again while `may_wait()` (NFS caches a folder's listing for
    seconds: node 0's new checkpoint may show here a little later)."""
    resume = decision.apply()
    while resume.path is not None and not resume.path.exists() and may_wait():
        wait()
    if resume.path is not None and not resume.path.exists():
        raise ResumeError(f"node 0 resumes {resume.path}, which this node does not see: checkpoints.dir "
                          "must be on a filesystem every node shares")
    say(f"resuming {resume.path.name}, as node 0 decided" if resume.path else
        "starting from scratch, as node 0 decided")
    return resume

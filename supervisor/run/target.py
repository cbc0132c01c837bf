"""Has this recipe's training already reached its end? Asked once, before a run launches anything.

Re-running a recipe whose last run finished used to "finish" at once from checkpoint-30
without a word (issue 13 §7), or, with HF Trainer after a rung change, train a step past
`max_steps`. The answer comes from the trainer's own record first (the newest valid
checkpoint's trainer_state.json: global_step against max_steps, supervisor.resume.at_target),
then from the journal: the last run finished under the same recipe and no checkpoint was
written since. Only a recipe with a `checkpoints:` section is judged: without one a rerun
trains from scratch, which finishes nothing at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from guardrun.launcher import checkpoints
from guardrun.launcher.resume import pick_checkpoint
from guardrun.launcher.spec import Recipe

from ..core import events
from ..record.journalread import Skipped, read_events
from .checkpointprep import at_target


@dataclass(frozen=True)
class LastRun:
    """The journal's last run before this one, as far as finishing goes."""

    number: int                    # 1 = the journal's first run
    finished: bool                 # it ended with run.finished
    digest: str | None = None      # the recipe it ran
    checkpoint: str | None = None  # the path of the last checkpoint it saw saved
    step: int | None = None        # the step of its last attempt, as the journal has it


def last_run(directory: Path) -> LastRun | None:
    """The journal's last run (call before this run's run.started), or None when there was none.
    A damaged journal (more than a torn last line) tells nothing: what was lost may be the
    run's end. Its lines are skipped in silence: `history`, read just before, has said so."""
    run, skipped = None, Skipped(directory / "events.jsonl")
    for event in read_events(directory, skipped):
        name = events.name_of(event)
        if name == events.RUN_STARTED:
            run = LastRun(number=(run.number if run else 0) + 1, finished=False, digest=event.get("digest"))
        elif run is None:
            continue
        elif name == events.CHECKPOINT_SAVED and isinstance(event.get("path"), str):
            run = LastRun(run.number, run.finished, run.digest, event["path"], run.step)
        elif name == events.ATTEMPT_ENDED:
            step = event.get("step")
            run = LastRun(run.number, run.finished, run.digest, run.checkpoint,
                          step if isinstance(step, int) and not isinstance(step, bool) else None)
        elif name == events.RUN_FINISHED:
            run = LastRun(run.number, True, run.digest, run.checkpoint, run.step)
    return None if skipped.damaged else run


def already_finished(recipe: Recipe, digest: str, last: LastRun | None) -> str:
    """Why nothing is left to train ('' when there is something), for the console."""
    spec = recipe.checkpoints
    if spec is None:
        return ""
    newest = pick_checkpoint(checkpoints.find(spec.dir, spec.pattern)).checkpoint
    if newest is None:
        return ""
    fresh = "use --fresh to start over"
    target = at_target(recipe, newest)
    if target is not None:
        if last is not None and last.finished:
            return f"already finished at step {target.step} (run {last.number}); {fresh}"
        return (f"already finished: {newest.path} is at {target} (its trainer_state.json); "
                f"nothing is left to train; {fresh}")
    if (last is not None and last.finished and last.digest == digest
            and last.checkpoint == str(newest.path)):
        step = last.step if last.step is not None else newest.step
        return f"already finished at step {step} (run {last.number}); {fresh}"
    return ""

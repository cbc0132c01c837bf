"""Get the checkpoint folder ready for the next attempt, as launcher.resume decides.

Between attempts, with the old tree gone: set aside the checkpoints the trainer must not
pick (renamed into `guardrun-quarantine/`, never deleted), rewrite a stale batch size in
trainer_state.json (the original kept beside it), and convert a ZeRO checkpoint for a
new world size with DeepSpeed's own tool, in the job's interpreter.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from guardrun.launcher import checkpoints
from guardrun.launcher.checkpoints import Checkpoint, QuarantineError, universal_dir
from guardrun.launcher.command import Resume
from guardrun.launcher.plan import Plan
from guardrun.launcher.resume import (
    CheckpointPick,
    SetAside,
    Target,
    adapt,
    declared_epochs,
    declared_max_steps,
    left_in_place,
    pick_checkpoint,
    reached,
)
from guardrun.launcher.spec import Recipe

from ..core import events
from ..core.context import Context
from ..watch.seams import ProcessOps

#: The name the untouched trainer_state.json is kept under when guardrun rewrites it.
STATE_BACKUP = "trainer_state.json.guardrun-orig"
#: The name the untouched scheduler.pt is kept under when guardrun rescales it.
SCHEDULER_BACKUP = "scheduler.pt.guardrun-orig"
#: Rescales a saved LR scheduler in the job's interpreter (guardrun itself needs no
#: torch). argv: scheduler.pt, the backup path, the new base learning rate. The
#: optimizer's param groups follow the scheduler at its next step, so one step runs
#: at the old rate; rewriting optimizer.pt (gigabytes for a full fine-tune) is not worth it.
RESCALE_LR = """
import os, shutil, sys, torch
path, backup, lr = sys.argv[1], sys.argv[2], float(sys.argv[3])
state = torch.load(path, map_location="cpu", weights_only=True)
bases = state.get("base_lrs") or []
if not bases or not bases[0]:
    sys.exit("no base_lrs in " + path)
factor = lr / bases[0]
if abs(factor - 1.0) < 1e-9:
    print("already at", lr); sys.exit(0)
if not os.path.exists(backup):
    shutil.copy2(path, backup)
state["base_lrs"] = [b * factor for b in bases]
if state.get("_last_lr"):
    state["_last_lr"] = [x * factor for x in state["_last_lr"]]
torch.save(state, path + ".guardrun-tmp")
os.replace(path + ".guardrun-tmp", path)
print("rescaled by", factor)
"""
#: How long a rescale may run: a torch import and a small file.
RESCALE_TIMEOUT = 300.0
#: How long DeepSpeed's universal conversion may run. Measured here: seconds for the
#: tiny test model; a 13B ZeRO-3 checkpoint takes minutes. Past it the attempt fails.
CONVERT_TIMEOUT = 3600.0
#: A helper cut short (a stop request, its timeout) has this long after SIGTERM.
TOOL_GRACE = 10.0
#: Seconds between two looks at a running helper.
TOOL_POLL = 0.2


class ResumeError(Exception):
    """The checkpoint cannot be made ready: the attempt must not start on it."""


class AtTarget(Exception):
    """The checkpoint to resume is at or past the end of training: the run is finished, and
    no attempt starts on it (resuming could only train past the target)."""

    def __init__(self, checkpoint: Checkpoint, target: Target):
        super().__init__(f"{checkpoint.name} is at the target ({target})")
        self.checkpoint, self.target = checkpoint, target


@dataclass(frozen=True)
class Tools:
    """How the helpers (the conversion, the rescale) run: their logs in the attempt's
    folder, their processes through the seam, a stop request cutting them short."""

    attempt_dir: Path
    processes: ProcessOps

    def run(self, argv: list[str], recipe: Recipe, log: Path, ctx: Context,
            timeout: float) -> tuple[int | None, float]:
        """Run a helper in the job's interpreter and cwd, output to `log`; stoppable. Its
        exit code (None: killed) and how long it took."""
        started = ctx.clock.monotonic()
        with open(log, "wb") as sink:
            launched = self.processes.spawn(argv, env=dict(os.environ), cwd=str(recipe.workdir), join=None,
                                            stdout=sink)
            tree = self.processes.tree()
            grace = 0.0  # done by itself: nothing of it may linger
            while launched.poll() is None:
                if ctx.requests.stop or ctx.clock.monotonic() - started > timeout:
                    grace = TOOL_GRACE
                    break
                ctx.clock.sleep(TOOL_POLL)
            self.processes.stop_tree(launched, tree, grace=grace, clock=ctx.clock, hurry=lambda: False,
                                     group=None, on_event=ctx.emit)
        return launched.returncode, round(ctx.clock.monotonic() - started, 3)


def prepare(recipe: Recipe, plan: Plan, ctx: Context, tools: Tools, before_step: int | None = None,
            fresh: bool = False) -> Resume:
    """Resume for the next attempt: the checkpoint and how to load it (none: from scratch).
    `ctx` is the attempt's: every event it journals names the attempt.

    AtTarget when the checkpoint it would resume is at the end of training, unless `fresh`
    (`guardrun run --fresh`): then every checkpoint of that finished run is set aside and
    the training starts over.
    """
    spec = recipe.checkpoints
    if spec is None:
        return Resume()
    found = checkpoints.find(spec.dir, spec.pattern)
    choice = pick_checkpoint(found, before_step)
    target = at_target(recipe, choice.checkpoint)
    if target is not None and fresh:
        why = f"of a run finished at {target}; --fresh starts over"
        choice = CheckpointPick(None, tuple(SetAside(each, "finished", why) for each in found))
    elif target is not None:
        raise AtTarget(choice.checkpoint, target)
    _set_aside(choice, spec.resume_arg, ctx)
    if choice.checkpoint is None:
        return Resume()
    return _adapt(choice.checkpoint, recipe, plan, ctx, tools)


def at_target(recipe: Recipe, checkpoint: Checkpoint | None) -> Target | None:
    """The Target when `checkpoint`'s trainer_state.json says its training is over, judged
    against the recipe's own `max_steps` or epochs when its args give them (launcher.resume.reached)."""
    if checkpoint is None:
        return None
    return reached(checkpoints.inspect(checkpoint.path), declared_max_steps(recipe.args, recipe.args_is_list),
                   declared_epochs(recipe.args, recipe.args_is_list))


def _set_aside(choice: CheckpointPick, resume_arg: str | None, ctx: Context) -> None:
    """Quarantine what the trainer must not pick. A quarantine folder that is not ours
    stops it before anything moves; a dir that cannot be written leaves them in place,
    which only an explicit resume path makes safe (launcher.resume.left_in_place)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    unmoved, problem = [], ""
    for aside in choice.set_aside:
        try:
            moved = checkpoints.quarantine(aside.checkpoint.path, aside.label, stamp)
        except QuarantineError as err:
            if err.refused:
                raise ResumeError(str(err)) from None
            ctx.emit(events.CHECKPOINT_NOT_QUARANTINED, path=str(aside.checkpoint.path),
                     step=aside.checkpoint.step, why=aside.why, error=str(err))
            unmoved.append(aside)
            problem = problem or str(err)
            continue
        ctx.emit(events.CHECKPOINT_QUARANTINED, path=str(aside.checkpoint.path), to=str(moved),
                 step=aside.checkpoint.step, why=aside.why)
        ctx.say(f"set aside {aside.checkpoint.name} ({aside.why}) as {moved}")
    warning, refusal = left_in_place(unmoved, choice.checkpoint, resume_arg, problem)
    if refusal:
        raise ResumeError(refusal)
    if warning:
        ctx.say(f"warning: {warning}")


def _adapt(chosen: Checkpoint, recipe: Recipe, plan: Plan, ctx: Context, tools: Tools) -> Resume:
    decided = adapt(checkpoints.inspect(chosen.path), plan, recipe.checkpoints.on_world_size_change,
                    base_lr=recipe.lr.value if recipe.lr else None, nodes=recipe.node.count)
    if decided.refuse:
        raise ResumeError(decided.refuse)
    for note in decided.notes:
        ctx.say(note)
    if decided.fix_batch is not None:
        _fix_batch(chosen.path, decided.fix_batch, ctx)
    if decided.set_lr is not None:
        rescale_lr(recipe, chosen.path, decided.set_lr, ctx, tools)
    if decided.convert is not None:
        convert(recipe, decided.convert, ctx, tools)
    return Resume(chosen.path, load_universal=decided.load_universal, weights_only=decided.weights_only)


def _fix_batch(path: Path, batch: int, ctx: Context) -> None:
    """fix_batch, journaled; a checkpoint that cannot be written (a read-only dir) is
    resumed as it is, with a warning: transformers since PR #43770 (Feb 2026) need no fix."""
    try:
        fix_batch(path, batch)
    except (OSError, ValueError) as err:
        state = path / "trainer_state.json"
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        ctx.emit(events.CHECKPOINT_BATCH_NOT_FIXED, path=str(path), train_batch_size=batch, error=reason)
        ctx.say(f"warning: could not rewrite train_batch_size in {state} ({reason}): a transformers "
                f"release before Feb 2026 restores the saved micro-batch on resume")
        return
    ctx.emit(events.CHECKPOINT_BATCH_FIXED, path=str(path), train_batch_size=batch)


def fix_batch(path: Path, batch: int) -> None:
    """Set trainer_state.json's train_batch_size, keeping the first original beside it."""
    state = path / "trainer_state.json"
    text = state.read_text()
    backup = path / STATE_BACKUP
    if not backup.exists():
        backup.write_text(text)
    data = json.loads(text)
    data["train_batch_size"] = batch
    temp = state.with_name(state.name + ".guardrun-tmp")
    temp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(temp, state)


def rescale_lr(recipe: Recipe, path: Path, lr: float, ctx: Context, tools: Tools) -> None:
    """Make the checkpoint's scheduler.pt start from `lr`, keeping the first original."""
    scheduler = path / checkpoints.SCHEDULER
    argv = [recipe.python, "-c", RESCALE_LR, str(scheduler), str(path / SCHEDULER_BACKUP), repr(lr)]
    log = tools.attempt_dir / "lr-rescale.log"
    code, took = tools.run(argv, recipe, log, ctx, RESCALE_TIMEOUT)
    ctx.emit(events.CHECKPOINT_LR_RESCALED, path=str(scheduler), lr=lr, exit_code=code, took=took)
    if code != 0:
        raise ResumeError(f"could not rescale the learning rate in {scheduler} (exit {code}); see {log}")


def convert(recipe: Recipe, tag: Path, ctx: Context, tools: Tools) -> Path:
    """Run DeepSpeed's ds_to_universal on `tag`; its output goes beside the tag, its log
    into the attempt's folder. A conversion cut off earlier is set aside first."""
    out = universal_dir(tag)
    if out.exists():
        try:
            checkpoints.quarantine(out, "incomplete", time.strftime("%Y%m%dT%H%M%S"))
        except QuarantineError as err:
            raise ResumeError(f"cannot set aside the cut-off conversion {out}: {err}") from None
    argv = [recipe.python, "-m", "deepspeed.checkpoint.ds_to_universal",
            "--input_folder", str(tag), "--output_folder", str(out)]
    log = tools.attempt_dir / "universal-conversion.log"
    ctx.say(f"converting {tag} to a universal checkpoint (log: {log})")
    code, took = tools.run(argv, recipe, log, ctx, CONVERT_TIMEOUT)
    ctx.emit(events.CHECKPOINT_CONVERTED, tag=str(tag), to=str(out), exit_code=code, took=took)
    if code != 0:
        raise ResumeError(f"the universal conversion of {tag} failed (exit {code}); see {log}")
    return out


"""Where to resume from, and what the checkpoint needs first: pure decisions.

The supervisor reads the checkpoint folder (launcher.checkpoints) and the facts of the
chosen checkpoint (`Saved`), asks these functions, and carries out the answer: set
checkpoints aside, rewrite a stale batch size, convert a ZeRO checkpoint for a new
world size. Nothing here touches the disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .checkpoints import Checkpoint, Saved
from .command import render_mapping
from .plan import Plan


@dataclass(frozen=True)
class SetAside:
    checkpoint: Checkpoint
    label: str  # "incomplete" or "nan": the suffix of the name it is set aside under
    why: str


@dataclass(frozen=True)
class CheckpointPick:
    checkpoint: Checkpoint | None     # resume from this; None: from scratch
    set_aside: tuple[SetAside, ...] = ()  # to quarantine first


@dataclass(frozen=True)
class Adaptation:
    """What to do to the chosen checkpoint before the launch."""

    fix_batch: int | None = None   # rewrite trainer_state.json's train_batch_size to this
    convert: Path | None = None    # run the universal conversion on this DeepSpeed tag
    load_universal: bool = False   # the derived DeepSpeed config loads a universal checkpoint
    weights_only: bool = False     # resume the weights only (optimizer state cannot follow)
    refuse: str = ""               # non-empty: this checkpoint cannot be resumed as configured
    set_lr: float | None = None    # rescale the saved scheduler so its base learning rate is this
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """A training run's end as its trainer recorded it: `step` of `total` optimizer steps."""

    step: int
    total: int

    def __str__(self) -> str:
        return f"step {self.step}/{self.total}"


def reached(saved: Saved, max_steps: int | None = None, epochs: float | None = None) -> Target | None:
    """The Target when the checkpoint is at or past the end of training, else None.

    The end is the recipe's own `max_steps` when it names one (a recipe that raised it
    trains on from a checkpoint of the old run), else the `max_steps` the trainer wrote
    into trainer_state.json (HF computes it from the epochs when only those were given),
    unless the recipe's `num_train_epochs` differs from the saved one: more epochs, more steps.
    Resuming such a checkpoint has nothing left to train, yet HF Trainer runs a step past
    it. Measured here (transformers 5.24, torch 2.13 CPU, 2 ranks, same world size): each
    resume of checkpoint-6 of `max_steps 6` trained one more step and saved checkpoint-7,
    then checkpoint-8 (tests/acceptance/test_past_target_hf.py, on the code before this).
    """
    if max_steps is None and epochs is not None and saved.num_train_epochs not in (None, epochs):
        return None
    total = max_steps if max_steps is not None else saved.max_steps
    if saved.global_step is None or total is None or total <= 0 or saved.global_step < total:
        return None
    return Target(saved.global_step, total)


def declared_max_steps(args: tuple, args_is_list: bool) -> int | None:
    """The `max_steps` a recipe's `args:` give the script (`--max_steps N`, `--max_steps=N`,
    `max_steps=N`), or None when they give none (or -1, HF's "from the epochs")."""
    number = _declared(args, args_is_list, "max_steps", int)
    return number if number is not None and number > 0 else None


def declared_epochs(args: tuple, args_is_list: bool) -> float | None:
    """The `num_train_epochs` a recipe's `args:` give the script, or None."""
    number = _declared(args, args_is_list, "num_train_epochs", float)
    return number if number is not None and number > 0 else None


def _declared(args: tuple, args_is_list: bool, key: str, kind: type) -> float | None:
    """The last value `args` give `key` (`--key V`, `--key=V`, `key=V`), None if none or not a `kind`."""
    tokens = [str(token) for token in args] if args_is_list else render_mapping(args)
    value = None
    for index, token in enumerate(tokens):
        name, equals, rest = token.lstrip("-").partition("=")
        if name.replace("-", "_") != key:
            continue
        value = rest if equals else (tokens[index + 1] if index + 1 < len(tokens) else None)
    try:
        return kind(str(value)) if value is not None else None
    except ValueError:
        return None


def pick_checkpoint(found: Sequence[Checkpoint], before_step: int | None = None) -> CheckpointPick:
    """The newest valid checkpoint (older than `before_step` when given: a NaN rollback),
    and every checkpoint newer than it that must be set aside so the trainer's own
    "last checkpoint" logic cannot pick it."""
    usable = [c for c in found if c.valid and (before_step is None or c.step < before_step)]
    pick = usable[-1] if usable else None
    floor = pick.step if pick else -1
    aside = []
    for each in found:
        if each is pick or each.step < floor or (each.step == floor and each.valid):
            continue
        if not each.valid:
            aside.append(SetAside(each, "incomplete", each.reason))
        elif before_step is not None and each.step >= before_step:
            aside.append(SetAside(each, "nan", f"saved at step {each.step}, at or after the "
                                               f"first NaN (step {before_step})"))
    return CheckpointPick(pick, tuple(aside))


def adapt(saved: Saved, plan: Plan, on_world_size_change: str = "universal",
          base_lr: float | None = None, nodes: int = 1) -> Adaptation:
    """How `plan` can resume a checkpoint saved as `saved` says. `base_lr` is the
    recipe's own learning rate: a plan with another one comes from an `lr` rung. `nodes`:
    the job's node count (recipe.node.count); a ZeRO checkpoint's saved world size is
    compared with every node's ranks together, `nodes` x `plan.ranks`."""
    notes: list[str] = []
    fix = None
    if plan.per_device is not None and saved.train_batch_size not in (None, plan.per_device):
        # transformers before PR #43770 (Feb 2026) takes train_batch_size from
        # trainer_state.json on resume, silently undoing a halved micro-batch.
        fix = plan.per_device
        notes.append(f"trainer_state.json says train_batch_size {saved.train_batch_size}: "
                     f"set to {plan.per_device} (original kept beside it)")
    set_lr = None
    if saved.scheduler is not None and plan.lr is not None and base_lr is not None and plan.lr != base_lr:
        # HF Trainer restores scheduler.pt, whose base_lrs are the learning rate the
        # checkpoint was trained with: without this, an `lr` rung changes nothing.
        set_lr = plan.lr
        notes.append(f"{saved.scheduler.name} keeps the learning rate it was saved with: "
                     f"rescaling it to {plan.lr:g} (original kept beside it)")
    if saved.model_only:
        notes.append("this checkpoint holds the model only (saved with save_only_model): "
                     "the optimizer state and the learning-rate schedule start over")
    same = {"fix_batch": fix, "set_lr": set_lr}
    world = plan.ranks * nodes
    if saved.ds_tag is None or saved.world_size in (None, world):
        return Adaptation(**same, notes=tuple(notes))
    per_node = f" ({plan.ranks} on each of {nodes} nodes)" if nodes > 1 else ""
    change = f"{saved.ds_tag.name} was saved by {saved.world_size} rank(s), this rung runs {world}{per_node}"
    if on_world_size_change == "fail":
        return Adaptation(refuse=f"{change}; checkpoints.on_world_size_change is 'fail'")
    if on_world_size_change == "weights_only":
        notes.append(f"{change}: resuming the weights only (on_world_size_change: weights_only)")
        return Adaptation(**same, weights_only=True, notes=tuple(notes))
    if saved.universal is not None:
        notes.append(f"{change}: loading the universal checkpoint {saved.universal.name}")
        return Adaptation(**same, load_universal=True, notes=tuple(notes))
    notes.append(f"{change}: converting it to a universal checkpoint first")
    return Adaptation(**same, convert=saved.ds_tag, load_universal=True, notes=tuple(notes))


def left_in_place(unmoved: Sequence[SetAside], chosen: Checkpoint | None, resume_arg: str | None,
                  problem: str) -> tuple[str, str]:
    """(warning, refusal) when checkpoints that should be set aside could not be moved
    (a read-only checkpoint dir): exactly one of the two is non-empty.

    With the resume path passed explicitly the trainer loads what it is given, so the
    broken ones left in place are a warning. A script that resumes by itself
    (`resume_arg: null`) picks the newest by its own rule, and every unmoved one is newer
    than the pick (`pick_checkpoint`): it could resume the broken one, so the attempt must not start.
    """
    names = ", ".join(f"{each.checkpoint.name} ({each.why})" for each in unmoved)
    if not unmoved:
        return "", ""
    if resume_arg is None:
        return "", (f"could not set aside {names}: {problem}; the script resumes by itself "
                    f"(checkpoints.resume_arg: null) and could pick it. Make the checkpoint dir "
                    f"writable, or move it aside by hand")
    start = f"resuming from {chosen.name}, passed with {resume_arg}" if chosen else "starting from scratch"
    return f"could not set aside {names}: {problem}; {start}", ""

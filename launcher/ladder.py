"""The degrade ladder: from a recipe and the history of failures to the next Plan.

Pure: the same recipe and history always give the same Plan (no clock, no /proc), so a
guardrun on every node of a multi-node job, reading one journal, picks the same rung.

How a history picks rungs: each failure of kind K takes the first rung not taken yet
whose `on` names K. Taken rungs accumulate, in the order they were taken; rungs that
answer other kinds stay available for later failures. A failure with no rung left is
either a reason to give up (kinds in DEGRADING: the same configuration fails the same
way) or a restart at the current configuration (transient, hang, unknown, ...).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from .failures import DEGRADING, Failure, Kind
from .launchdiff import Launch, fingerprint
from .plan import SWITCHES, Decision, Plan
from .spec import RUNG_CHANGES, Recipe, Rung
from .trainer import dataloader_workers, trainer

__all__ = ["apply_rung", "base_plan", "base_ranks", "decide", "default_ladder", "describe_rung",
           "effective_ladder", "walk"]


def effective_ladder(recipe: Recipe, ranks: int | None = None) -> tuple[Rung, ...]:
    """The recipe's own ladder, or the default one when the recipe gives none."""
    if recipe.ladder_given:
        return recipe.ladder
    return default_ladder(ranks if ranks is not None else base_ranks(recipe),
                          deepspeed=recipe.deepspeed is not None, hf=trainer(recipe).hf,
                          batch=recipe.batch is not None, lr=recipe.lr is not None)


def default_ladder(ranks: int, deepspeed: bool = True, hf: bool = True, batch: bool = True,
                   lr: bool = True) -> tuple[Rung, ...]:
    """The ladder used when a recipe has no `ladder:` key (the README lists it).

    host_oom: fewer ranks, each rank holds its own copy of what fills host memory
    (FIELD_NOTES situation 1: 8 -> 6 ranks was the fix users found), then no pinned
    offload memory and no loader workers. cuda_oom: halve the micro-batch, then
    gradient checkpointing, ZeRO-3, offload. save_failed: without
    the 16-bit gather (DeepSpeed only). nan_loss: halve the learning rate, twice.

    Only rungs that can change the job are kept: without `deepspeed:` there is no
    config to derive (no ZeRO, offload or gather rungs); without `batch:` or `lr:` no
    argument to change (no halving rungs); a plain script (not an HF TrainingArguments
    one, trainer.py) takes no --dataloader_num_workers or --gradient_checkpointing.
    """
    host_keys: dict = {"dataloader_workers": 0} if hf else {}
    if deepspeed:
        host_keys["offload_pin_memory"] = False
    host = [Rung(on=(Kind.HOST_OOM,), gpus=n) for n in _fewer_ranks(ranks)]
    host += [Rung(on=(Kind.HOST_OOM,), **host_keys)] if host_keys else []
    halve = [Rung(on=(Kind.CUDA_OOM,), batch="halve")] if batch else []
    cuda = halve + ([Rung(on=(Kind.CUDA_OOM,), gradient_checkpointing=True)] if hf else [])
    if deepspeed:
        cuda += [Rung(on=(Kind.CUDA_OOM,), zero_stage=3),
                 Rung(on=(Kind.CUDA_OOM, Kind.HOST_OOM), zero3_offload=True)]
    cuda += halve
    # Not save_only_model: transformers cannot resume training from a model-only
    # checkpoint (the optimizer and the lr schedule start over). A death during a plain
    # save retries the same rung from the checkpoint before it.
    save = [Rung(on=(Kind.SAVE_FAILED,), gather_16bit_on_save=False)] if deepspeed else []
    nan = [Rung(on=(Kind.NAN_LOSS,), lr=0.5), Rung(on=(Kind.NAN_LOSS,), lr=0.5)] if lr else []
    return tuple(host + cuda + save + nan)


def _fewer_ranks(ranks: int) -> list[int]:
    """3/4, 1/2, 1/4 of the ranks, then 1: distinct, descending, below `ranks`."""
    counts = [ranks * 3 // 4, ranks // 2, ranks // 4, 1]
    out: list[int] = []
    for n in counts:
        if 1 <= n < ranks and n not in out:
            out.append(n)
    return out


def base_ranks(recipe: Recipe, visible_gpus: Sequence[int] | None = None) -> int:
    """Ranks of the recipe as written. `gpus: all` means every visible GPU, else 1 rank."""
    if isinstance(recipe.gpus, tuple):
        return len(recipe.gpus)
    if recipe.gpus == "all":
        return max(1, len(visible_gpus or ()))
    return int(recipe.gpus)


def base_plan(recipe: Recipe, visible_gpus: Sequence[int] | None = None) -> Plan:
    """The recipe as written, before any rung."""
    ranks = base_ranks(recipe, visible_gpus)
    if isinstance(recipe.gpus, tuple):
        gpu_ids: tuple[int, ...] | None = recipe.gpus
    elif visible_gpus:
        gpu_ids = tuple(visible_gpus)[:ranks]
    else:
        gpu_ids = None
    batch = recipe.batch
    per_device = batch.per_device if batch else None
    accum = batch.grad_accum if batch else None
    target = per_device * accum * ranks if batch else None
    return Plan(rungs=(), ranks=ranks, gpu_ids=gpu_ids, per_device=per_device,
                grad_accum=accum, global_batch=target, target_global_batch=target,
                lr=recipe.lr.value if recipe.lr else None)


def decide(recipe: Recipe, history: Sequence[Failure],
           visible_gpus: Sequence[int] | None = None) -> Decision:
    """The plan for the next attempt after `history` (oldest first).

    A rung whose launch (argv, env, derived files: launchdiff.py) is one that already
    failed is passed over, noted on the plan, and used up: it would relaunch the same job
    to fail the same way (issue 13 §2). An attempt whose output showed more ranks than it
    was asked for (`Failure.ranks_seen`: a tool that starts its own torchrun and ignores
    the rank count) undoes the rank change, and later gpus rungs change ranks no more
    (issue 13 §6).
    """
    ladder = effective_ladder(recipe, base_ranks(recipe, visible_gpus))
    base = plan = base_plan(recipe, visible_gpus)
    taken: list[int] = []
    failed: dict[Launch, int] = {}  # launches that failed -> the rung they ran at
    ignored = ""  # why ranks are not the job's to change, once an attempt showed it
    before: tuple[int, int | None] = (plan.ranks, None)  # the last failure's (asked, seen) ranks
    for failure in history:
        failed.setdefault(fingerprint(recipe, plan), plan.rung)
        if not ignored:
            ignored = _ranks_ignored(failure, plan.ranks, before)
            plan = _keep_ranks(plan, base, ignored) if ignored else plan
        before = (plan.ranks, failure.ranks_seen)
        plan, changed, passed = _next_plan(recipe, ladder, taken, failure.kind, plan, failed, ignored)
        if not changed and failure.kind in DEGRADING and failure is history[-1]:
            return Decision(None, give_up=_nothing_left(failure.kind, passed, ignored))
    return Decision(plan)


def _ranks_ignored(failure: Failure, asked: int, before: tuple[int, int | None]) -> str:
    """Why the output says the job does not run the ranks it is asked for, or "".

    More ranks than asked, or as many as the attempt before when fewer were asked: LLaMA-
    Factory's "world size: 2" whatever NPROC_PER_NODE said."""
    seen = failure.ranks_seen
    if seen is None:
        return ""
    if seen > asked or (before[1] == seen and before[0] > asked):
        return (f"attempt {failure.attempt} ran {seen} rank(s) when asked for {asked}: the tool "
                "ignores the rank count")
    return ""


def _keep_ranks(plan: Plan, base: Plan, why: str) -> Plan:
    """`plan` at the recipe's own rank count again: fewer ranks were asked and not run."""
    kept, note = rebalance(dataclasses.replace(plan, ranks=base.ranks, gpu_ids=base.gpu_ids))
    notes = plan.notes + (f"{why}; back to {base.ranks} rank(s), gpus rungs change nothing",)
    return dataclasses.replace(kept, notes=notes + ((note,) if note else ()))


def _next_plan(recipe: Recipe, ladder: Sequence[Rung], taken: list[int], kind: Kind, plan: Plan,
               failed: dict[Launch, int], ignored: str = "") -> tuple[Plan, bool, list[str]]:
    """(plan, whether a rung changed it, why each rung passed over was): `taken` grows.
    With `ignored` (ranks are not the job's to change) a rung's `gpus` is left out."""
    passed: list[str] = []
    while (index := _next_rung(ladder, taken, kind)) is not None:
        taken.append(index)
        rung = dataclasses.replace(ladder[index], gpus=None) if ignored else ladder[index]
        candidate = apply_rung(plan, rung, index + 1)
        same = failed.get(fingerprint(recipe, candidate))
        if same is None:
            return candidate, True, passed
        if ignored and ladder[index].gpus is not None:  # said once, in the give-up or the note
            why = f"rung {index + 1} ({describe_rung(ladder[index])}) changes only the rank count"
        else:
            why = skip_reason(recipe, plan, ladder[index], index + 1, same)
        passed.append(why)
        plan = dataclasses.replace(plan, skipped=plan.skipped + (index + 1,),
                                   notes=plan.notes + (f"skipped: {why}",))
    return plan, False, passed


def _nothing_left(kind: Kind, passed: list[str], ignored: str = "") -> str:
    """The give-up line: every rung passed over and why, after the ranks evidence if any."""
    if not passed and not ignored:
        return f"no rung left in the ladder for {kind}"
    return f"no rung left that changes anything for {kind}: " + "; ".join(([ignored] if ignored else []) + passed)


def skip_reason(recipe: Recipe, plan: Plan, rung: Rung, number: int, same: int, failed: bool = True) -> str:
    """`rung 7 (batch halve) relaunches rung 4, which already failed (the micro-batch is already 1)`."""
    what = "the recipe as written" if same == 0 else f"rung {same}"
    hint = _hint(recipe, plan, rung)
    done = f"relaunches {what}, which already failed" if failed else f"launches what {what} launches"
    return (f"rung {number} ({describe_rung(rung)}) {done}"
            + (f" ({hint})" if hint else ""))


def added_flag_rejected(recipe: Recipe, plan: Plan, evidence: str) -> str:
    """What to add to a user error whose argparse message names a flag a rung added.

    A script misjudged as HF (trainer.py) rejects the rung's flag with `unrecognized
    arguments`: that is guardrun's doing, not the user's, so say which rung and the fix."""
    rejected = evidence.partition("unrecognized arguments:")[2].split()
    if not rejected or not plan.rungs:
        return ""
    written = set(fingerprint(recipe, base_plan(recipe)).argv)
    added = [flag.split("=")[0] for flag in rejected if flag.startswith("-") and flag.split("=")[0] not in written]
    if not added:
        return ""
    return (f" ({added[0]} was added by rung {plan.rung}, and the script does not take it: set "
            "`trainer: plain` in the recipe, or give the script's own flag in a `ladder:` rung's `args:`)")


def describe_rung(rung: Rung) -> str:
    """`batch halve, gradient_checkpointing True`: what a rung sets, in the recipe's words."""
    parts = []
    for name in RUNG_CHANGES:
        value = getattr(rung, name)
        if value is None or value == ():
            continue
        if name in ("args", "env"):
            value = ", ".join(f"{key}={item}" for key, item in value)
        elif name == "lr":
            value = f"×{value:g}"
        parts.append(f"{name} {value}")
    return ", ".join(parts)


def _hint(recipe: Recipe, plan: Plan, rung: Rung) -> str:
    """Why the rung changes nothing, where it can be told."""
    if rung.batch == "halve" and plan.per_device == 1:
        return "the micro-batch is already 1"
    if rung.dataloader_workers is not None:
        workers, source = dataloader_workers(recipe)
        if workers == rung.dataloader_workers:
            return f"dataloader_num_workers is already {workers}: {source}"
    if rung.gpus is not None and recipe.launcher == "command" and not recipe.ranks_env:
        return "`launcher: command` without `ranks_env` tells the tool no rank count"
    if rung.gpus is not None and plan.ranks <= rung.gpus:
        return f"already {plan.ranks} rank(s)"
    return ""


def _next_rung(ladder: Sequence[Rung], taken: Iterable[int], kind: Kind) -> int | None:
    """The first rung not taken yet that answers `kind`."""
    used = set(taken)
    for index, rung in enumerate(ladder):
        if index not in used and kind in rung.on:
            return index
    return None


def walk(recipe: Recipe, visible_gpus: Sequence[int] | None = None) -> list[Plan]:
    """The base plan, then each rung of the ladder applied on top of all before it.

    This is what `guardrun plan` shows: every rung, in order, as if each were taken. A
    rung that would launch what an earlier one launches is passed over as `decide` passes
    it over: its plan is the one before, with the rung in `skipped` and a note saying why.
    """
    plans = [base_plan(recipe, visible_gpus)]
    seen = {fingerprint(recipe, plans[0]): 0}
    for number, rung in enumerate(effective_ladder(recipe, plans[0].ranks), start=1):
        previous = plans[-1]
        candidate = apply_rung(previous, rung, number)
        launch = fingerprint(recipe, candidate)
        if launch in seen:
            why = skip_reason(recipe, previous, rung, number, seen[launch], failed=False)
            candidate = dataclasses.replace(previous, skipped=previous.skipped + (number,),
                                            notes=previous.notes + (f"skipped: {why}",))
        seen.setdefault(launch, number)
        plans.append(candidate)
    return plans


def apply_rung(plan: Plan, rung: Rung, number: int) -> Plan:
    """`plan` with one rung applied; the global batch is kept through grad_accum."""
    changes: dict[str, object] = {"rungs": plan.rungs + (number,)}
    notes = list(plan.notes)
    if rung.gpus is not None:
        ranks = min(rung.gpus, plan.ranks)
        changes["ranks"] = ranks
        if plan.gpu_ids is not None:
            changes["gpu_ids"] = plan.gpu_ids[:ranks]
    if rung.batch is not None and plan.per_device is not None:
        changes["per_device"] = (max(1, plan.per_device // 2) if rung.batch == "halve"
                                 else int(rung.batch))
    if rung.lr is not None and plan.lr is not None:
        changes["lr"] = plan.lr * rung.lr
    for field in SWITCHES:
        value = getattr(rung, field)
        if value is not None:
            changes[field] = value
    if rung.args:
        changes["args"] = _merge(plan.args, rung.args)
    if rung.env:
        changes["env"] = _merge(plan.env, rung.env)
    new = dataclasses.replace(plan, **changes)
    new, note = rebalance(new)
    if note:
        notes.append(f"rung {number}: {note}")
    return dataclasses.replace(new, notes=tuple(notes))


def _merge(old: tuple[tuple[str, object], ...], new: tuple[tuple[str, object], ...]):
    merged = dict(old)
    merged.update(new)
    return tuple(merged.items())


def rebalance(plan: Plan) -> tuple[Plan, str]:
    """Pick grad_accum so per_device × grad_accum × ranks equals the target global batch.

    Where no integer accumulation gives it exactly, take the nearest (at least 1) and
    return a note saying so; the note goes into `guardrun plan` and the journal.
    """
    if plan.per_device is None or plan.target_global_batch is None:
        return plan, ""
    per_step = plan.per_device * plan.ranks
    target = plan.target_global_batch
    accum = max(1, round(target / per_step))
    actual = per_step * accum
    plan = dataclasses.replace(plan, grad_accum=accum, global_batch=actual)
    if actual == target:
        return plan, ""
    return plan, (f"global batch {target} cannot be kept with {plan.ranks} ranks × micro-batch "
                  f"{plan.per_device}: using accumulation {accum}, global batch {actual}")

"""Before a launch: does the rung fit the GPUs' free memory and the host's? If not, skip it.

A rung predicted not to fit is treated as if it had already failed that way: the
check adds a predicted failure (cuda_oom when the GPUs are short, host_oom when the
host is) and asks the ladder again, so skipping follows exactly the rules a real
failure would (ladder.decide), and the choice stays a pure function of the history,
the estimate and the measured free memory. `guardrun plan` shows the same verdicts.

An estimate is rough (estimate.py says how rough), and a skipped rung is never tried
again: so a rung is skipped only when its prediction exceeds what is free by more
than the margin, and when nothing can be estimated (no `model:`, no GPU readings)
nothing is skipped. When no rung is predicted to fit, the lightest one reached runs
anyway: a wrong estimate must not stop a job that would have run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from . import dsconfig
from .estimate import Estimate, Workload, estimate
from .failures import Failure, Kind
from .ladder import decide
from .modelinfo import ModelInfo, resolve
from .params import lora_params
from .plan import Decision, Plan
from .spec import Recipe
from .units import format_bytes

#: Share of the free memory kept out of reach: the allocator's fragmentation, the
#: estimate's error, other users' growth.
MARGIN = 0.10


@dataclass(frozen=True)
class Known:
    """What the estimate knows about a recipe, read once (modelinfo, the DeepSpeed file)."""

    info: ModelInfo
    ds_config: Mapping[str, Any] | None = None  # the user's DeepSpeed config, when readable here
    ds_note: str = ""


@dataclass(frozen=True)
class Resources:
    """Free memory right now. None: not known (no NVIDIA driver, no /proc)."""

    gpu_free: Mapping[int, int] | None = None  # GPU index -> free bytes
    host_available: int | None = None          # MemAvailable
    host_limit: int | None = None              # the recipe's limits.host_memory, resolved


@dataclass(frozen=True)
class Fit:
    fits: bool
    reason: str                      # why not, or what was (not) checked
    kind: Kind | None = None         # CUDA_OOM or HOST_OOM when it does not fit
    estimate: Estimate | None = None


@dataclass(frozen=True)
class FittedDecision:
    """The ladder's decision once the rungs predicted not to fit were passed over."""

    decision: Decision
    skipped: tuple[tuple[Plan, Fit], ...] = ()  # rungs passed over, in order
    none_fits: bool = False                     # the plan chosen is predicted not to fit either
    fit: Fit | None = None                      # the verdict on the plan chosen


def gather(recipe: Recipe) -> Known:
    """Read what the estimate needs: the model's config.json and the DeepSpeed config."""
    info = resolve(recipe.model, recipe.workdir)
    if recipe.deepspeed is None:
        return Known(info)
    try:
        return Known(info, dsconfig.load(recipe.deepspeed.config))
    except dsconfig.DeepSpeedConfigError as err:
        return Known(info, None, f"{err}; using model.zero_stage / model.offload")


def workload(recipe: Recipe, plan: Plan, known: Known) -> Workload | None:
    """What `plan` runs, for estimate.py; None when the model is unknown."""
    shape, model = known.info.shape, recipe.model
    if shape is None or model is None:
        return None
    stage, offload_opt, offload_params = zero_settings(recipe, plan, known)
    trainable = shape.projector + (0 if model.vision_tower_frozen else shape.vision)
    trainable += shape.llm if model.trainable == "full" else lora_params(shape, model.lora_rank,
                                                                         model.lora_targets)
    return Workload(shape=shape, trainable=trainable, ranks=plan.ranks,
                    micro_batch=plan.per_device or 1, seq_len=model.seq_len,
                    precision=model.precision, load_precision=model.load_precision,
                    gradient_checkpointing=_checkpointing(recipe, plan), zero_stage=stage,
                    offload_optimizer=offload_opt, offload_params=offload_params,
                    shard_bytes=known.info.shard_bytes)


def zero_settings(recipe: Recipe, plan: Plan, known: Known) -> tuple[int, bool, bool]:
    """(stage, optimizer offloaded, parameters offloaded) of the DeepSpeed config `plan` runs with."""
    config = known.ds_config
    if config is None:  # not readable here, or a tool that names its config (xtuner deepspeed_zero2)
        model = recipe.model
        zero: dict[str, Any] = {"stage": (model.zero_stage if model else None) or 0}
        offload = (model.offload if model else None) or "none"
        if offload in ("optimizer", "all"):
            zero["offload_optimizer"] = {"device": "cpu"}
        if offload == "all":
            zero["offload_param"] = {"device": "cpu"}
        config = {"zero_optimization": zero}
    derived = dsconfig.derive(dict(config), plan).get("zero_optimization") or {}
    stage = int(derived.get("stage", 0) or 0)

    def offloaded(section: str) -> bool:
        return str((derived.get(section) or {}).get("device", "none")) in ("cpu", "nvme")
    return stage, offloaded("offload_optimizer"), offloaded("offload_param")


def _checkpointing(recipe: Recipe, plan: Plan) -> bool:
    if plan.gradient_checkpointing is not None:
        return plan.gradient_checkpointing
    if recipe.model and recipe.model.gradient_checkpointing is not None:
        return recipe.model.gradient_checkpointing
    if recipe.args_is_list:  # [..., --gradient_checkpointing, True, ...] or --gradient_checkpointing=True
        tokens = list(recipe.args) + ["--"]
        for index, token in enumerate(tokens[:-1]):
            name, _, inline = token.partition("=")
            if name == "--gradient_checkpointing":
                value = inline or (tokens[index + 1] if not tokens[index + 1].startswith("-") else "true")
                return value.lower() in ("true", "1")
        return False
    value = dict((k.lstrip("-"), v) for k, v in recipe.args).get("gradient_checkpointing", False)
    return value is None or str(value).lower() in ("true", "1")


def check(plan: Plan, predicted: Estimate | None, resources: Resources, margin: float = MARGIN) -> Fit:
    """Does `plan` fit what is free now? Unknowns never make a rung not fit."""
    if predicted is None:
        return Fit(True, "memory not estimated")
    gpu = _gpu_verdict(plan, predicted, resources, margin)
    if gpu is not None and not gpu.fits:
        return gpu
    host = _host_verdict(predicted, resources, margin)
    if not host.fits:
        return host
    checked = [v.reason for v in (gpu, host) if v is not None and v.reason]
    return Fit(True, "; ".join(checked), estimate=predicted)


def _gpu_verdict(plan: Plan, predicted: Estimate, resources: Resources, margin: float) -> Fit | None:
    free = resources.gpu_free
    if not free:
        return None
    ids = list(plan.gpu_ids) if plan.gpu_ids is not None else sorted(free)[:plan.ranks]
    known = [(free[i], i) for i in ids if i in free]
    if not known:
        return None
    least, index = min(known)
    usable = int(least * (1 - margin))
    if predicted.gpu > usable:
        return Fit(False, f"predicted {format_bytes(predicted.gpu)} per GPU > {format_bytes(usable)} "
                          f"usable of {format_bytes(least)} free on GPU {index}", Kind.CUDA_OOM, predicted)
    return Fit(True, f"{format_bytes(predicted.gpu)} per GPU <= {format_bytes(usable)} usable", estimate=predicted)


def _host_verdict(predicted: Estimate, resources: Resources, margin: float) -> Fit:
    budgets = [(resources.host_available, "available"), (resources.host_limit, "allowed by limits.host_memory")]
    budgets = [(int(b * (1 - margin)) if what == "available" else b, b, what)
               for b, what in budgets if b is not None]
    if not budgets:
        return Fit(True, "", estimate=predicted)
    usable, whole, what = min(budgets)
    if predicted.host > usable:
        return Fit(False, f"predicted {format_bytes(predicted.host)} of host memory > "
                          f"{format_bytes(usable)} usable of {format_bytes(whole)} {what}",
                   Kind.HOST_OOM, predicted)
    return Fit(True, f"{format_bytes(predicted.host)} host <= {format_bytes(usable)} usable", estimate=predicted)


def predict(recipe: Recipe, plan: Plan, known: Known) -> Estimate | None:
    work = workload(recipe, plan, known)
    return estimate(work) if work is not None else None


def fits(recipe: Recipe, plans: Sequence[Plan], known: Known, resources: Resources) -> list[Fit]:
    """The verdict on each plan (`guardrun plan`'s table)."""
    return [check(plan, predict(recipe, plan, known), resources) for plan in plans]


def first_fitting(verdicts: Sequence[Fit]) -> int | None:
    """Index of the first plan predicted to fit, or None."""
    return next((index for index, verdict in enumerate(verdicts) if verdict.fits), None)


def decide_fitting(recipe: Recipe, failures: Sequence[Failure], known: Known, resources: Resources,
                   visible_gpus: Sequence[int] | None = None) -> FittedDecision:
    """ladder.decide, then past every rung predicted not to fit (unless `preflight: off`)."""
    decision = decide(recipe, failures, visible_gpus)
    if decision.plan is None or not recipe.preflight:
        return FittedDecision(decision)
    history, skipped = list(failures), []
    while True:
        verdict = check(decision.plan, predict(recipe, decision.plan, known), resources)
        if verdict.fits:
            return FittedDecision(decision, tuple(skipped), fit=verdict)
        history.append(Failure(verdict.kind, evidence=f"preflight: {verdict.reason}"))
        following = decide(recipe, history, visible_gpus)
        if following.plan is None:
            return FittedDecision(decision, tuple(skipped), none_fits=True, fit=verdict)
        skipped.append((decision.plan, verdict))
        decision = following


def describe_skip(plan: Plan, verdict: Fit) -> str:
    """The console line for a skipped rung."""
    return f"skipping rung {plan.rung}: {verdict.reason}"


"""The memory preflight where it meets the machine: measure what is free, say what is skipped.

launcher/preflight.py decides (pure); this module reads NVML and /proc/meminfo for it
and tells the user and the journal. The loop calls `preflight_plan` just before each
launch, after the previous attempt's GPU memory was released, so that the free memory
it measures is the next attempt's, not the dead one's.
"""
from __future__ import annotations

from typing import Sequence

from guardrun.launcher.failures import Failure
from guardrun.launcher.plan import Plan
from guardrun.launcher.preflight import (
    Known,
    Resources,
    decide_fitting,
    describe_skip,
    gather,
)
from guardrun.launcher.spec import Recipe
from guardrun.launcher.units import format_bytes

from ..core import events
from ..core.context import Context
from .gpu import GpuError, GpuSource
from .memory import ProcfsMemory


def measure(recipe: Recipe, gpus: GpuSource | None, memory: ProcfsMemory | None) -> Resources:
    """Free memory now: per GPU from NVML, MemAvailable, and the recipe's tree limit."""
    gpu_free = None
    if gpus is not None:
        try:
            gpu_free = {r.index: r.free for r in gpus.devices()}
        except GpuError:
            gpu_free = None
    available = limit = None
    if memory is not None:
        try:
            host = memory.host()
        except (OSError, KeyError, ValueError):
            host = None
        if host is not None:
            available = host.available
            if recipe.limits.host_memory is not None:
                limit = recipe.limits.host_memory.resolve(host.total)
    return Resources(gpu_free=gpu_free, host_available=available, host_limit=limit)


def preflight_plan(recipe: Recipe, failures: Sequence[Failure], visible: Sequence[int] | None,
                   plan: Plan, gpus: GpuSource | None, memory: ProcfsMemory | None, ctx: Context,
                   known: Known | None = None, nodes: Sequence[Resources] | None = None) -> Plan:
    """The plan to launch: `plan`, or a later rung when `plan` is predicted not to fit.

    Each skipped rung is one console line ("skipping rung 2: predicted 41.3 GiB per GPU
    > 35.6 GiB usable of 39.6 GiB free on GPU 0") and one `preflight.skipped` event.
    `nodes`: a multi-node job's readings, every node's from its facts of the job's last
    attempt (None: one machine, measured here now). The tightest node decides, and every node
    decides alike, from the same files; before the first attempt there are none and nothing is
    skipped: a node's own reading alone could pick another rung than the others' do.
    """
    if not recipe.preflight or recipe.model is None or (nodes is not None and not nodes):
        return plan  # nothing to estimate (or nothing every node knows alike): nothing to skip
    known = known or gather(recipe)
    resources = measure(recipe, gpus, memory) if nodes is None else tightest(nodes[0], nodes[1:])
    choice = decide_fitting(recipe, failures, known, resources, visible)
    chosen = choice.decision.plan
    if chosen is None or chosen.rungs[:len(plan.rungs)] != plan.rungs:
        return plan  # the ladder disagrees with the caller's plan: launch what it asked for
    say, emit = ctx.say, ctx.emit
    for skipped, verdict in choice.skipped:
        say(describe_skip(skipped, verdict))
        emit(events.PREFLIGHT_SKIPPED, rung=skipped.rung, rungs=list(skipped.rungs), kind=str(verdict.kind),
             reason=verdict.reason, gpu=verdict.estimate.gpu if verdict.estimate else None,
             host=verdict.estimate.host if verdict.estimate else None)
    if choice.none_fits and choice.fit is not None:
        say(f"no rung is predicted to fit ({choice.fit.reason}); starting at rung {chosen.rung} anyway")
        emit(events.PREFLIGHT_NONE_FITS, rung=chosen.rung, reason=choice.fit.reason)
    elif choice.fit is not None and choice.fit.estimate is not None:
        emit(events.PREFLIGHT_FITS, rung=chosen.rung, gpu=choice.fit.estimate.gpu,
             host=choice.fit.estimate.host, detail=choice.fit.reason)
    return chosen


def describe_resources(resources: Resources, gpu_note: str = "") -> str:
    """One line for `guardrun plan`: what the verdicts were measured against."""
    if resources.gpu_free:
        frees = sorted(set(resources.gpu_free.values()))
        each = format_bytes(frees[0]) if len(frees) == 1 else \
            f"{format_bytes(frees[0])} to {format_bytes(frees[-1])}"
        gpu = f"{len(resources.gpu_free)} GPU(s), {each} free"
    else:
        gpu = gpu_note or "no GPU readings: GPU memory not checked"
    host = (f"host {format_bytes(resources.host_available)} available"
            if resources.host_available is not None else "host memory unknown")
    if resources.host_limit is not None:
        host += f", limits.host_memory {format_bytes(resources.host_limit)}"
    return f"{gpu}; {host}"


def tightest(mine: Resources, others: Sequence[Resources]) -> Resources:
    """The job's resources when several nodes run it (issue 16): each figure the smallest any
    node measured, so the rung chosen fits on the tightest node too; what no node knows stays
    unknown. GPU indices are each node's own (`gpus: 8` is 8 on every node), compared alike."""
    every = (mine, *others)
    per_gpu: dict[int, int] = {}
    for each in every:
        for index, free in (each.gpu_free or {}).items():
            per_gpu[index] = min(free, per_gpu.get(index, free))
    return Resources(gpu_free=per_gpu or None,
                     host_available=_least(each.host_available for each in every),
                     host_limit=_least(each.host_limit for each in every))


def _least(values) -> int | None:
    known = [value for value in values if value is not None]
    return min(known) if known else None

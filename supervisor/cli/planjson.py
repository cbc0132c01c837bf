"""`guardrun plan --json`: the same view as the table (planview.plan_view), as one JSON object.

    {"job": "demo-cpu", "recipe": "/abs/demo_cpu.yaml", "overrides": ["gpus=1"],
     "warnings": [], "ladder": "recipe" | "default", "resume_from": "/abs/checkpoint-10" | null,
     "first_fitting": 0 | null,
     "resources": {"host_available": bytes | null, "host_limit": bytes | null,
                   "gpu_free": {"0": bytes} | null},
     "rungs": [{"rung": 0, "on": [], "ranks": 2, "gpus": [0, 1] | null, "per_device": 4,
                "grad_accum": 1, "global_batch": 8, "lr": 0.01, "zero_stage": null,
                "zero3_offload": null, "skipped": false, "fits": true | false | null,
                "why": "...", "predicted": {"gpu_bytes": ..., "host_bytes": ...} | null}]}

`fits` is null where nothing could be predicted (no model shape); `why` says what was and
was not checked, as the table's "does not fit" lines do.
"""
from __future__ import annotations

from typing import Any

from guardrun.launcher.ladder import effective_ladder
from guardrun.launcher.preflight import first_fitting

from .planview import View


def plan_json(view: View) -> dict[str, Any]:
    recipe, resources = view.recipe, view.resources
    ladder = effective_ladder(recipe, view.plans[0].ranks)
    rungs = []
    for index, (plan, verdict) in enumerate(zip(view.plans, view.verdicts)):
        estimate = verdict.estimate
        rungs.append({
            "rung": index, "on": [] if index == 0 else [str(kind) for kind in ladder[index - 1].on],
            "ranks": plan.ranks, "gpus": list(plan.gpu_ids) if plan.gpu_ids is not None else None,
            "per_device": plan.per_device, "grad_accum": plan.grad_accum,
            "global_batch": plan.global_batch, "lr": plan.lr, "zero_stage": plan.zero_stage,
            "zero3_offload": plan.zero3_offload, "skipped": index in plan.skipped,
            "fits": verdict.fits if estimate is not None else None, "why": verdict.reason,
            "predicted": {"gpu_bytes": estimate.gpu, "host_bytes": estimate.host} if estimate else None,
        })
    gpu_free = resources.gpu_free
    return {
        "job": recipe.name, "recipe": str(recipe.path), "overrides": list(recipe.overrides),
        "warnings": list(recipe.warnings), "ladder": "recipe" if recipe.ladder_given else "default",
        "resume_from": str(view.resume) if view.resume else None,
        "first_fitting": first_fitting(view.verdicts),
        "resources": {"host_available": resources.host_available, "host_limit": resources.host_limit,
                      "gpu_free": {str(i): free for i, free in gpu_free.items()} if gpu_free is not None else None},
        "rungs": rungs,
    }

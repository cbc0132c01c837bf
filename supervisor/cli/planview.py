"""What `guardrun plan RECIPE` prints: every rung in one table, then one rung in full.

The table: ranks, micro-batch, accumulation, global batch, learning rate, ZeRO stage,
offload, predicted GPU and host memory, and whether the rung fits what is free now
(launcher/preflight.py's verdict, the same the loop acts on). Then the exact command
line, working directory, environment and DeepSpeed config of the first rung that fits
(or `--rung N`; `--all`: every rung). Nothing runs; the text is built by pure
functions from the recipe, the plans and the measured resources.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from guardrun.launcher import checkpoints as ckpts
from guardrun.launcher import dsconfig, kvargs
from guardrun.launcher.command import DERIVED_DS_CONFIG, Resume, build, set_arg
from guardrun.launcher.ladder import effective_ladder, walk
from guardrun.launcher.launchdiff import changes, fingerprint
from guardrun.launcher.nodes import describe as describe_nodes
from guardrun.launcher.plan import SWITCHES, Plan, batch_words, job_global_batch
from guardrun.launcher.preflight import (
    Fit,
    Known,
    Resources,
    first_fitting,
    fits,
    gather,
    workload,
    zero_settings,
)
from guardrun.launcher.recipe import load_recipe
from guardrun.launcher.spec import Recipe
from guardrun.launcher.trainer import trainer
from guardrun.launcher.units import format_bytes

from ..watch.fitcheck import describe_resources, measure
from ..watch.gpu import GpuSource, open_gpu_source
from ..watch.memory import ProcfsMemory


@dataclass(frozen=True)
class View:
    """Everything `guardrun plan` shows, measured and decided before rendering."""

    recipe: Recipe
    plans: tuple[Plan, ...]
    verdicts: tuple[Fit, ...]
    known: Known
    resources: Resources
    resume: Path | None = None
    gpu_note: str = ""


def make_view(recipe: Recipe, plans: Sequence[Plan], known: Known, resources: Resources,
              resume: Path | None = None, gpu_note: str = "") -> View:
    return View(recipe, tuple(plans), tuple(fits(recipe, plans, known, resources)), known,
                resources, resume, gpu_note)


def render(view: View, rung: int | None = None, show_all: bool = False) -> list[str]:
    """The lines of `guardrun plan`. `rung`: the rung to show in full (default: first that fits)."""
    recipe = view.recipe
    source = "the recipe's ladder" if recipe.ladder_given else "the default ladder (no `ladder:` in the recipe)"
    lines = [f"job {recipe.name}: {len(view.plans) - 1} rung(s) from {source}"]
    lines += [f"warning: {w} (plan runs nothing; `guardrun run` needs it)" for w in recipe.warnings]
    lines += _trainer_lines(recipe)
    lines += [describe_nodes(recipe.node)] if recipe.node.multi else []
    lines += _model_lines(view)
    if recipe.checkpoints:
        lines.append(f"resume: {view.resume or 'no valid checkpoint yet: starts from scratch'}")
    lines.append("")
    lines += table(view)
    first = first_fitting(view.verdicts)
    if first is None:
        lines.append("no rung is predicted to fit what is free now: `guardrun run` would start on the "
                     "lightest rung it reaches, and say so")
    chosen = range(len(view.plans)) if show_all else [rung if rung is not None else (first or 0)]
    for index in chosen:
        lines.append("")
        lines += details(view, index, first)
    return lines


def _trainer_lines(recipe: Recipe) -> list[str]:
    """Whether rungs may pass HF TrainingArguments flags, and why (launcher/trainer.py)."""
    found = trainer(recipe)
    lines = [("trainer: HF TrainingArguments script" if found.hf else
              "trainer: plain script: rungs pass no HF TrainingArguments flag") + f" ({found.why})"]
    ladder = effective_ladder(recipe)
    if recipe.launcher == "command" and not recipe.ranks_env and any(r.gpus for r in ladder):
        lines.append("note: `launcher: command` without `ranks_env`: a gpus rung tells the tool no rank "
                     "count, it only narrows CUDA_VISIBLE_DEVICES where there are GPUs")
    return lines


def _model_lines(view: View) -> list[str]:
    info, recipe = view.known.info, view.recipe
    if info.shape is None:
        return [f"memory: {info.note}"]
    shape, model = info.shape, recipe.model
    work = workload(recipe, view.plans[0], view.known)
    parts = [f"model: {shape.total / 1e9:.2f}B parameters"]
    if shape.vision:
        parts.append(f"{shape.llm / 1e9:.2f}B language, {shape.vision / 1e9:.2f}B vision")
    trained = f"lora r{model.lora_rank} {model.lora_targets}" if model.trainable == "lora" else "full"
    parts.append(f"trains {work.trainable / 1e9:.3g}B ({trained}"
                 + (", vision tower frozen)" if shape.vision and model.vision_tower_frozen else ")"))
    parts.append(f"{model.precision}, {model.seq_len} tokens per sample")
    lines = [", ".join(parts), f"  shape from {info.note or shape.source}"]
    if view.known.ds_note:
        lines.append(f"  DeepSpeed: {view.known.ds_note}")
    lines.append("memory checked against: " + describe_resources(view.resources, view.gpu_note))
    return lines


def table(view: View) -> list[str]:
    """One row per rung."""
    header = ("rung", "on", "ranks", "micro", "accum", "global", "lr", "zero", "offload",
              "GPU/rank", "host", "fits", "changes (against the rung before)")
    ladder = effective_ladder(view.recipe, view.plans[0].ranks)
    changed = rung_changes(view.recipe, view.plans)
    rows = [header]
    for index, (plan, verdict) in enumerate(zip(view.plans, view.verdicts)):
        stage, opt, params = zero_settings(view.recipe, plan, view.known)
        on = "-" if index == 0 else ",".join(map(str, ladder[index - 1].on))
        job_batch = job_global_batch(plan, view.recipe.node.count)
        global_batch = "-" if job_batch is None else str(job_batch) + (
            "*" if plan.global_batch != plan.target_global_batch else "")
        estimate = verdict.estimate
        deepspeed = _uses_deepspeed(view.recipe, plan)
        rows.append((str(index), on, str(plan.ranks), _opt(plan.per_device), _opt(plan.grad_accum),
                     global_batch, f"{plan.lr:g}" if plan.lr is not None else "-",
                     str(stage) if deepspeed else "-",
                     ("all" if params else "optimizer" if opt else "none") if deepspeed else "-",
                     format_bytes(estimate.gpu) if estimate else "?",
                     format_bytes(estimate.host) if estimate else "?", _fits(verdict), changed[index]))
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if any(p.global_batch != p.target_global_batch for p in view.plans):
        lines.append("* the global batch cannot be kept exactly: see the rung's note")
    for index, verdict in enumerate(view.verdicts):
        if not verdict.fits:
            lines.append(f"rung {index} does not fit: {verdict.reason}")
    final = view.plans[-1].notes
    lines += [note.replace("skipped: rung", "rung", 1) + "; `guardrun run` skips it"
              for note in final if note.startswith("skipped: ")]
    return lines


def rung_changes(recipe: Recipe, plans: Sequence[Plan]) -> list[str]:
    """Per rung, what its launch changes against the rung before: argv, env, DeepSpeed config.

    Rung 0 is the recipe as written; a rung that changes nothing says so (`guardrun run`
    skips it: launcher/ladder.py)."""
    launches = [fingerprint(recipe, plan) for plan in plans]
    out = ["-"]
    for index in range(1, len(plans)):
        if index in plans[index].skipped:
            out.append("none: skipped")
            continue
        out.append(", ".join(changes(launches[index - 1], launches[index])) or "none")
    return out


def _uses_deepspeed(recipe: Recipe, plan: Plan) -> bool:
    hinted = recipe.model is not None and (recipe.model.zero_stage is not None or recipe.model.offload)
    return bool(recipe.deepspeed or hinted or plan.zero_stage is not None or plan.zero3_offload)


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _fits(verdict: Fit) -> str:
    if verdict.estimate is None:
        return "?"
    if verdict.fits:
        return "yes"
    return "NO (GPU)" if str(verdict.kind) == "cuda_oom" else "NO (host)"


def details(view: View, index: int, first: int | None) -> list[str]:
    """One rung in full: what it changes, the command, cwd, env, DeepSpeed config."""
    recipe, plan = view.recipe, view.plans[index]
    ladder = effective_ladder(recipe, view.plans[0].ranks)
    what = "the recipe as written" if index == 0 else "on " + ", ".join(map(str, ladder[index - 1].on))
    fitted = view.verdicts[index].estimate is not None
    tag = " (the first that fits)" if index == first and fitted else ""
    lines = [f"== rung {index}{tag}: {what}", "   " + summary(plan, recipe.node.count)]
    lines += [f"   note: {note}" for note in plan.notes
              if note.startswith((f"rung {index}:", f"skipped: rung {index} "))]
    argv, env, cwd, ds_lines = _launch(recipe, plan, view.resume)
    lines += ["   command: " + shlex.join(argv), "   cwd: " + str(cwd),
              "   env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env)]
    return lines + ds_lines


def _launch(recipe: Recipe, plan: Plan, resume: Path | None):
    """(argv, env, cwd, DeepSpeed lines). A DeepSpeed config missing here (a recipe for
    another machine, loaded by `plan` with missing_ok) is shown as given, with the
    changes the rung makes to it."""
    ds = recipe.deepspeed
    if ds is None or ds.config.is_file():
        spec = build(recipe, plan, resume=Resume(resume))
        ds_lines = []
        for path, text in spec.files:
            ds_lines += [f"   file {path}:"] + ["     " + line for line in text.rstrip().splitlines()]
        if ds is not None and not spec.files:
            ds_lines.append(f"   DeepSpeed config: {ds.config} (unchanged by this rung)")
        return spec.argv, spec.env, spec.cwd, ds_lines
    spec = build(dataclasses.replace(recipe, deepspeed=None), plan, resume=Resume(resume))
    argv = list(spec.argv)
    start = _args_start(recipe, argv)
    changes = dsconfig.derive({}, plan)
    path = Path("<attempt dir>") / DERIVED_DS_CONFIG if changes else ds.config
    job_args = argv[start:]
    if recipe.args_style != kvargs.KV or kvargs.is_flag_key(ds.arg):
        job_args = set_arg(job_args, ds.arg if ds.arg.startswith("-") else f"--{ds.arg}", str(path))
    elif changes:  # key=value tools name their config themselves: passed only when derived
        job_args = kvargs.set_kv(job_args, ds.arg, str(path), recipe.args_group)
    ds_lines = [f"   DeepSpeed config: {ds.config} (not on this machine: shown as given"
                + ("; this rung runs with a copy in the attempt's folder changed as below)" if changes else ")")]
    if changes:
        ds_lines += ["     " + line for line in json.dumps(changes, indent=2).splitlines()]
    return tuple(argv[:start] + job_args), spec.env, spec.cwd, ds_lines


def _args_start(recipe: Recipe, argv: list[str]) -> int:
    """Where the job's own arguments start in `argv`: after the script, module or command."""
    if recipe.launcher == "command":
        return len(recipe.command)
    if recipe.module:
        at = next(i for i in range(len(argv) - 1) if argv[i:i + 2] == ["-m", recipe.module])
        return at + 2
    return argv.index(str(recipe.script)) + 1


def summary(plan: Plan, nodes: int = 1) -> str:
    """The rung's configuration in words (what `guardrun plan` always printed)."""
    parts = [f"ranks {plan.ranks}"]
    if plan.gpu_ids is not None:
        parts.append("gpus " + ",".join(map(str, plan.gpu_ids)))
    if plan.per_device is not None:
        parts.append(batch_words(plan, nodes))
    if plan.lr is not None:
        parts.append(f"lr {plan.lr:g}")
    for field in SWITCHES:
        value = getattr(plan, field)
        if value is not None:
            parts.append(f"{field} {value}")
    return ", ".join(parts)


def plan_command(path: str, rung: int | None = None, show_all: bool = False,
                 gpu_free: int | None = None, host_available: int | None = None,
                 gpus: GpuSource | None | str = "detect", memory: ProcfsMemory | None = None,
                 overrides: Sequence[str] = ()) -> list[str]:
    """Everything `guardrun plan` does: plan_view, then render. Raises RecipeError, or
    ValueError for a bad `rung`."""
    view = plan_view(path, gpu_free, host_available, gpus, memory, overrides)
    if rung is not None and not 0 <= rung < len(view.plans):
        raise ValueError(f"--rung {rung}: the recipe has rungs 0 to {len(view.plans) - 1}")
    return render(view, rung, show_all)


def plan_view(path: str, gpu_free: int | None = None, host_available: int | None = None,
              gpus: GpuSource | None | str = "detect", memory: ProcfsMemory | None = None,
              overrides: Sequence[str] = ()) -> View:
    """Load (missing paths become warnings; `overrides`: KEY=VALUE from the command line),
    walk the ladder, measure (`plan --json` renders this too). Raises RecipeError."""
    recipe = load_recipe(path, missing_ok=True, overrides=overrides)
    plans = walk(recipe)
    resume = None
    if recipe.checkpoints:
        newest = ckpts.newest_valid(recipe.checkpoints.dir, recipe.checkpoints.pattern)
        resume = newest.path if newest else None
    note = ""
    if gpus == "detect":
        gpus, note = open_gpu_source()
    resources = measure(recipe, gpus, memory if memory is not None else ProcfsMemory())
    if gpu_free is not None:  # planning for another machine: every GPU has this much free
        count = max(len(resources.gpu_free or {}), max(p.ranks for p in plans))
        resources = dataclasses.replace(resources, gpu_free={i: gpu_free for i in range(count)})
        note = ""
    if host_available is not None:  # another machine: a percent limit is taken of this figure
        limit = recipe.limits.host_memory.resolve(host_available) if recipe.limits.host_memory else None
        resources = dataclasses.replace(resources, host_available=host_available, host_limit=limit)
    return make_view(recipe, plans, gather(recipe), resources, resume, note)

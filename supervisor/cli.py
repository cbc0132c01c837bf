"""The `guardrun` command.

Exit codes: 0 the job finished; 1 gave up (restarts used up, ladder exhausted, or a
user error); 2 bad recipe or usage; 130 interrupted.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from guardrun.launcher import checkpoints as ckpts
from guardrun.launcher.command import build
from guardrun.launcher.ladder import effective_ladder, walk
from guardrun.launcher.recipe import Recipe, RecipeError, load_recipe

from .clock import MonotonicClock
from .console import Console
from .journal import Journal, StateDirError, job_dir, read_state, state_root
from .loop import EXIT_USAGE, Options, Supervisor


class DefaultRunGroup(click.Group):
    """`guardrun RECIPE ...` means `guardrun run RECIPE ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultRunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="guardrun")
def main() -> None:
    """Run a training job under a supervisor that degrades and resumes instead of dying.

    guardrun RECIPE is the same as guardrun run RECIPE.
    """


def _load(path: str) -> Recipe:
    try:
        return load_recipe(path)
    except RecipeError as err:
        click.echo(f"guardrun: error: {err}", err=True)
        sys.exit(EXIT_USAGE)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Show only guardrun's lines; the job's output goes to the log.")
@click.option("--fresh", is_flag=True, help="Start at rung 0, ignoring failures of earlier runs.")
def run(recipe: str, quiet: bool, fresh: bool) -> None:
    """Run RECIPE in the foreground until it finishes or guardrun gives up."""
    loaded = _load(recipe)
    try:
        journal = Journal(loaded.name)
    except (StateDirError, OSError) as err:
        click.echo(f"guardrun: error: state directory: {err}", err=True)
        sys.exit(EXIT_USAGE)
    console = Console(quiet=quiet)
    console.say(f"job {loaded.name}: journal in {journal.dir}")
    try:
        code = Supervisor(loaded, journal, console, MonotonicClock(), options=Options(fresh=fresh)).run()
    finally:
        journal.close()
    sys.exit(code)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
def plan(recipe: str) -> None:
    """Print every rung's configuration and exact command; run nothing."""
    loaded = _load(recipe)
    plans = walk(loaded)
    ladder = effective_ladder(loaded, plans[0].ranks)
    source = "the recipe's ladder" if loaded.ladder_given else "the default ladder (no `ladder:` in the recipe)"
    click.echo(f"job {loaded.name}: {len(plans) - 1} rung(s) from {source}")
    resume = None
    if loaded.checkpoints:
        newest = ckpts.newest_valid(loaded.checkpoints.dir, loaded.checkpoints.pattern)
        resume = newest.path if newest else None
        click.echo(f"resume: {resume if resume else 'no valid checkpoint yet: starts from scratch'}")
    for index, each in enumerate(plans):
        on = "" if index == 0 else " (on " + ", ".join(map(str, ladder[index - 1].on)) + ")"
        click.echo(f"\n== rung {index}{on}" + (": the recipe as written" if index == 0 else ""))
        click.echo("   " + _summary(each))
        for note in each.notes[-1:] if index else ():
            click.echo(f"   note: {note}")
        spec = build(loaded, each, resume_from=resume)
        click.echo("   command: " + shlex.join(spec.argv))
        click.echo("   cwd: " + str(spec.cwd))
        click.echo("   env: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in spec.env))
        for path, _text in spec.files:
            click.echo(f"   file: {path}")


def _summary(plan) -> str:
    parts = [f"ranks {plan.ranks}"]
    if plan.gpu_ids is not None:
        parts.append("gpus " + ",".join(map(str, plan.gpu_ids)))
    if plan.per_device is not None:
        parts.append(f"micro-batch {plan.per_device} × accumulation {plan.grad_accum} × ranks "
                     f"{plan.ranks} = global {plan.global_batch}")
    if plan.lr is not None:
        parts.append(f"lr {plan.lr:g}")
    for field in ("gradient_checkpointing", "zero_stage", "zero3_offload", "offload_pin_memory",
                  "gather_16bit_on_save", "save_only_model", "dataloader_workers"):
        value = getattr(plan, field)
        if value is not None:
            parts.append(f"{field} {value}")
    return ", ".join(parts)


@main.command()
@click.argument("job", required=False)
def status(job: str | None) -> None:
    """Show the state of JOB, or of every job guardrun knows."""
    root = state_root()
    names = [job] if job else sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not names:
        click.echo(f"no jobs in {root}")
        return
    for name in names:
        state = read_state(job_dir(name, root))
        if state is None:
            click.echo(f"{name}: no state recorded in {job_dir(name, root)}")
            if job:
                sys.exit(EXIT_USAGE)
            continue
        click.echo(_describe_state(name, state))


def _describe_state(name: str, state: dict) -> str:
    current = state.get("state", "?")
    pid = state.get("pid")
    if current in ("starting", "running", "stopping", "backoff") and pid and not _alive(pid):
        current = f"dead (its supervisor, pid {pid}, is gone; it was {current})"
    lines = [f"{name}: {current}"]
    keys = ("attempt", "rung", "ranks", "per_device", "grad_accum", "global_batch", "step",
            "loss", "memory", "resume_from", "last_kind", "last_evidence", "gave_up", "started", "updated")
    lines += [f"  {key}: {state[key]}" for key in keys if state.get(key) not in (None, "")]
    return "\n".join(lines)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@main.command(name="checkpoints")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--pattern", default=None, help="Regex whose first group is the step (default: HF and DeepSpeed names).")
def checkpoints_cmd(directory: str, pattern: str | None) -> None:
    """List the checkpoints in DIRECTORY, complete or not, and why."""
    found = ckpts.find(Path(directory), pattern)
    if not found:
        click.echo(f"no checkpoints in {directory}")
        return
    for each in found:
        verdict = "valid" if each.valid else f"INVALID: {each.reason}"
        click.echo(f"{each.name:<28} step {each.step:>8}  {verdict}")

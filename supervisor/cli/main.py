"""The `guardrun` command.

Exit codes (supervisor/core/exits.py, the README's table): 0 the job finished; 1 gave up
(restarts used up, ladder exhausted, or a user error); 2 bad recipe or usage; 3 and 4
`status JOB`: not running, no such job; 130 interrupted.
"""
from __future__ import annotations

import os
import sys

from ..core import signals

if os.path.basename(sys.argv[0]) == "guardrun":
    # The console script imports this module first: catch SIGTERM/^C before the ~200 ms of
    # imports below (issue 12 §6). Commands other than `run` give the handlers back (main).
    signals.install_early()

import dataclasses  # noqa: E402 - after the handlers, on purpose
import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
from guardrun.launcher import checkpoints as ckpts
from guardrun.launcher.recipe import RecipeError
from guardrun.launcher.spec import Metrics
from guardrun.launcher.units import parse_size

from ..core.exits import USAGE, fail
from ..diagnose.rootcause import root_cause_lines
from ..record.journal import Journal, StateDirError
from ..report import build as reporting
from ..run.loop import Options, Supervisor
from ..unattended.jobrun import JobRun
from . import doctor as doctor_checks
from . import example as examples
from . import jobs as unattended
from . import jobview, nodeview, planjson, planview, recipeargs


class DefaultRunGroup(click.Group):
    """`guardrun RECIPE ...` means `guardrun run RECIPE ...` when RECIPE is a file (or is named
    like one); any other unknown word is click's "No such command ... Did you mean ...?"."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and _names_a_recipe(args[0]):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _names_a_recipe(word: str) -> bool:
    return not word.startswith("-") and (os.path.isfile(word) or word.endswith((".yaml", ".yml")))


@click.group(cls=DefaultRunGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="guardrun")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Run a training job under a supervisor that degrades and resumes instead of dying.

    guardrun RECIPE is the same as guardrun run RECIPE. After the recipe, KEY=VALUE words
    set its keys (batch.per_device=8 limits.host_memory=80% gpus=4) for run, plan, start
    and tmux.
    """
    if ctx.invoked_subcommand != "run":
        signals.release_early()  # `status`, `logs -f`, `stop`: ^C and SIGTERM end them as before


@main.command()
@recipeargs.words_argument
@click.option("-q", "--quiet", is_flag=True, help="Show only guardrun's lines; the job's output goes to the log.")
@click.option("--fresh", is_flag=True, help="Start at rung 0, ignoring failures of earlier runs.")
@unattended.node_rank_option
@unattended.metrics_dir_option
def run(words: tuple[str, ...], quiet: bool, fresh: bool, metrics_dir: str | None) -> None:
    """Run RECIPE in the foreground until it finishes or guardrun gives up."""
    # A stop asked for from here on (the handlers are in before the recipe, the lock and a
    # dead run's leftovers) ends the run with 130, recorded as interrupted.
    early = signals.take_early()
    requests = early if early is not None else signals.Requests()
    restore = None if early is not None else signals.install(requests)
    try:
        _run(words, quiet, fresh, requests, metrics_dir)
    finally:
        if restore is not None:
            restore()


def _run(words: tuple[str, ...], quiet: bool, fresh: bool, requests: signals.Requests,
         metrics_dir: str | None) -> None:
    loaded = recipeargs.load(words)
    if metrics_dir is not None:  # the flag wins over the recipe's `metrics:`
        loaded = dataclasses.replace(loaded, metrics=Metrics(Path(metrics_dir)))
    try:
        journal = Journal(loaded.name)
    except (StateDirError, OSError) as err:
        raise fail(f"state directory: {err}", USAGE) from None
    try:
        # JobRun: the job's lock, a dead predecessor's leftovers, control socket, sd_notify.
        with JobRun(loaded, journal, requests, quiet=quiet) as job:
            job.console.say(f"job {loaded.name}: journal in {journal.dir}")
            if loaded.overrides:
                job.console.say("overrides: " + " ".join(loaded.overrides))
            code = job.run(Supervisor(loaded, journal, job.console, job.clock,
                                      options=Options(fresh=fresh), requests=requests))
    finally:
        journal.close()
    sys.exit(code)


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_size(value, allow_percent=False).bytes
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@main.command()
@recipeargs.words_argument
@click.option("--rung", type=int, default=None, help="Show rung N in full (default: the first that fits).")
@click.option("--all", "show_all", is_flag=True, help="Show every rung in full.")
@click.option("--gpu-free", callback=_size, help="Plan as if every GPU had SIZE free (e.g. 24GiB).")
@click.option("--host-available", callback=_size, help="Plan as if the host had SIZE available.")
@click.option("--json", "as_json", is_flag=True, help="JSON: the recipe and every rung with its verdict.")
def plan(words: tuple[str, ...], rung: int | None, show_all: bool, gpu_free: int | None,
         host_available: int | None, as_json: bool) -> None:
    """Every rung: configuration, predicted memory, fits or not; then the exact command. Runs nothing."""
    path, overrides = recipeargs.split(words)
    try:
        if as_json:
            view = planview.plan_view(path, gpu_free, host_available, overrides=overrides)
            click.echo(json.dumps(planjson.plan_json(view), indent=2))
            return
        lines = planview.plan_command(path, rung, show_all, gpu_free, host_available, overrides=overrides)
    except RecipeError as err:
        raise fail(recipeargs.error_text(err), USAGE) from None
    except ValueError as err:
        raise fail(str(err), USAGE) from None
    click.echo("\n".join(lines))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON: a list of {status, name, detail, fix}.")
def doctor(as_json: bool) -> None:
    """Check this machine: GPUs, memory, cgroups, systemd, tmux, py-spy, ptrace. Exit 1 on a FAIL."""
    checks = doctor_checks.run()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(check) for check in checks], indent=2))
    else:
        click.echo("\n".join(check.line() for check in checks))
    sys.exit(doctor_checks.exit_code(checks))


@main.command()
@click.argument("name", required=False, shell_complete=examples.complete)
def example(name: str | None) -> None:
    """List the ready recipes, or print recipe NAME to edit.

    guardrun example llava_lora > my.yaml writes a copy whose paths work where it is written."""
    if name is None:
        click.echo("\n".join(examples.listing()))
        return
    try:
        click.echo(examples.copy_text(examples.find(name)), nl=False)
    except examples.ExampleError as err:
        raise fail(str(err), USAGE) from None


@main.command()
@unattended.job_argument(required=False)
@click.option("--json", "as_json", is_flag=True, help="JSON: one object for JOB, else a list.")
def status(job: str | None, as_json: bool) -> None:
    """Show the state of JOB, or of every job guardrun knows.

    With JOB it exits 0 when the job runs, 3 when it does not, 4 when guardrun knows no such job."""
    # Liveness from the job's lock, uptime, memory source, live figures: supervisor.unattended.
    sys.exit(unattended.show_status(job, as_json, describe=_describe_state))


def _describe_state(name: str, state: dict) -> str:
    current = state.get("state", "?")
    pid = state.get("pid")
    if current in jobview.LIVE_STATES and pid and not _alive(pid):
        current = f"dead (its supervisor, pid {pid}, is gone; it was {current})"
    lines = [f"{name}: {current}"]
    keys = ("attempt", "rung", "ranks", "per_device", "grad_accum", "global_batch", "step",
            "loss", "memory", "vram", "logging", "resume_from", "last_kind", "last_evidence", "gave_up", "started", "updated")
    lines += [f"  {key}: {state[key]}" for key in keys if state.get(key) not in (None, "")]
    if isinstance(state.get("root_cause"), dict):
        lines += ["  " + line for line in root_cause_lines(state["root_cause"])]
    lines += nodeview.status_lines(name)  # a multi-node job: every node's part
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
@click.argument("where", metavar="DIR|RECIPE", type=click.Path())
@click.option("--pattern", default=None, help="Regex whose first group is the step (default: HF and "
              "DeepSpeed names; with a RECIPE, its checkpoints.pattern).")
@click.option("--json", "as_json", is_flag=True, help="JSON: a list of {name, path, step, valid, reason}.")
def checkpoints_cmd(where: str, pattern: str | None, as_json: bool) -> None:
    """List the checkpoints in DIR, or in RECIPE's checkpoints.dir, complete or not, and why."""
    directory, pattern = _checkpoint_place(where, pattern)
    try:
        found = ckpts.find(directory, pattern)
    except re.error as err:
        raise fail(f"--pattern {pattern!r}: not a valid regular expression: {err}", USAGE) from None
    if as_json:
        click.echo(json.dumps([{"name": each.name, "path": str(each.path), "step": each.step,
                                "valid": each.valid, "reason": each.reason} for each in found], indent=2))
        return
    if not found:
        click.echo(f"no checkpoints in {directory}")
    for each in found:
        verdict = "valid" if each.valid else f"INVALID: {each.reason}"
        click.echo(f"{each.name:<28} step {each.step:>8}  {verdict}")


def _checkpoint_place(where: str, pattern: str | None) -> tuple[Path, str | None]:
    """(folder, pattern) for `checkpoints DIR|RECIPE`; a folder that is not there exits 2."""
    if os.path.isfile(where):
        recipe = recipeargs.load([where], missing_ok=True)
        if recipe.checkpoints is None:
            raise fail(f"{where}: the recipe has no `checkpoints:` section (give the folder instead)", USAGE)
        directory, pattern = recipe.checkpoints.dir, pattern or recipe.checkpoints.pattern
    else:
        directory = Path(where)
    if not directory.is_dir():
        whose = f" (the checkpoints.dir of {where})" if directory != Path(where) else ""
        raise fail(f"{directory}: {'not a folder' if directory.exists() else 'no such folder'}{whose}", USAGE)
    return directory, pattern


@main.command()
@unattended.job_argument()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for JOB-memory.png and JOB-report.html (default: the job's state folder).")
def report(job: str, out: str | None) -> None:
    """Plot JOB's memory over time against its limits (PNG) and write an HTML report with the
    attempts and root causes, from its journal. Needs matplotlib (in a clone: pip install '.[plot]')."""
    try:
        written = reporting.make(job, Path(out) if out else None)
    except (reporting.ReportError, StateDirError, OSError) as err:
        raise fail(str(err), USAGE) from None
    click.echo(f"{job}: {written.attempts} attempt(s), {written.samples} memory samples")
    click.echo(f"plot:   {written.png}")
    click.echo(f"report: {written.html}")


for _command in unattended.COMMANDS:  # start, list, logs, stop, tmux
    main.add_command(_command)

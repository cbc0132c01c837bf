"""The commands for jobs that run unattended: start, list, logs, stop, tmux, and status's logic.

Registered on the `guardrun` group by cli.py, whose `status` calls show_status. Exit
codes follow the README's table (core/exits.py): 0 done, 1 the action failed (a daemon that
died at start, a stop that timed out, a log that cannot be read), 2 usage (no such job, bad
recipe, the job already supervised: the message names the pid); `status JOB` 0 running,
3 not running, 4 no such job.

A damaged state dir never ends a command in a traceback: what cannot be read (a state.json
that is not a JSON object, an attempts/ entry that is not a number) is skipped and said in
one `guardrun: warning:` line on stderr, and the command answers with the rest (exit 0).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import click
from click.shell_completion import CompletionItem
from guardrun.launcher.executable import launch_problem
from guardrun.launcher.hostfit import limits_problem
from guardrun.launcher.nodes import RANK_ENV
from guardrun.launcher.units import parse_duration

from ..core.clock import MonotonicClock
from ..core.exits import FAILED, NOT_RUNNING, UNKNOWN_JOB, USAGE, fail
from ..record.journal import (
    StateDirError,
    ensure_private_dir,
    job_dir,
    read_state,
    state_root,
)
from ..record.statedir import warn
from ..unattended import control, daemon, lock, tmux
from ..watch.memory import ProcfsMemory
from . import jobview, logview, recipeargs

#: How often `stop` looks whether the supervisor has let go of the job's lock.
STOP_POLL = 0.02


def _job_dir(job: str) -> Path:
    """The state dir of an existing job, or exit 2 saying where guardrun looked."""
    if not job or "/" in job or job in (".", ".."):
        raise fail(f"{job!r} is not a job name", USAGE)
    directory = job_dir(job)
    if not directory.is_dir():
        raise fail(f"no state recorded for job {job} in {directory} (guardrun list shows the jobs)",
               USAGE)
    return directory


def _private_dir(name: str) -> Path:
    try:
        return ensure_private_dir(job_dir(name))
    except (StateDirError, OSError) as err:
        raise fail(f"state directory: {err}", USAGE)


def _refuse_if_supervised(name: str, directory: Path) -> None:
    holder = lock.holder(directory)
    if holder is not None:
        raise fail(f"job {name} is already supervised by pid {holder}; "
               f"`guardrun stop {name}` stops it", USAGE)


def _complete_jobs(ctx, param, incomplete: str) -> list[CompletionItem]:
    """The job names the state root holds, for the shell's completion of JOB."""
    return [CompletionItem(name) for name in _job_names()
            if name.startswith(incomplete)]


def job_argument(required: bool = True):
    """A command's JOB argument, which the shell completes with the jobs guardrun knows."""
    return click.argument("job", required=required, shell_complete=_complete_jobs)


def _node_rank(ctx, param, value: int | None) -> None:
    # Into the environment, where the recipe's node view reads it (launcher/nodes.py) and
    # where the run that `start` detaches or `tmux` creates inherits it.
    if value is not None:
        os.environ[RANK_ENV] = str(value)


#: --node-rank N for run, start and tmux: which node of a `nodes:` job this machine is.
node_rank_option = click.option(
    "--node-rank", type=click.IntRange(min=0), callback=_node_rank, expose_value=False,
    help=f"This machine's node rank in a multi-node job (default: ${RANK_ENV}, else $SLURM_NODEID).")


#: --metrics-dir DIR for run, start and tmux: the recipe's `metrics: {textfile: DIR}`, replaced.
metrics_dir_option = click.option(
    "--metrics-dir", type=click.Path(file_okay=False, resolve_path=True), default=None, metavar="DIR",
    help="Write the job's Prometheus metrics to DIR/guardrun_<job>.prom (node_exporter's textfile "
         "directory); replaces the recipe's metrics.textfile.")


def metrics_argv(metrics_dir: str | None) -> list[str]:
    """The flag again, for the `guardrun run` that start detaches or tmux creates."""
    return ["--metrics-dir", metrics_dir] if metrics_dir else []


@click.command()
@recipeargs.words_argument
@click.option("--fresh", is_flag=True, help="Start at rung 0, ignoring failures of earlier runs.")
@node_rank_option
@metrics_dir_option
def start(words: tuple[str, ...], fresh: bool, metrics_dir: str | None) -> None:
    """Run RECIPE detached from the terminal; print how to follow it."""
    loaded = recipeargs.load(words)
    unlaunchable = launch_problem(loaded, os.environ) or limits_problem(loaded, ProcfsMemory().host().total)
    if unlaunchable:  # said here, before detaching, as `run` would say it (exit 2)
        raise fail(unlaunchable, USAGE)
    directory = _private_dir(loaded.name)
    _refuse_if_supervised(loaded.name, directory)
    log = directory / daemon.SUPERVISOR_LOG
    token, offset = daemon.new_token(), daemon.log_size(log)
    argv = daemon.run_argv(loaded.path.resolve(), ["--quiet", *(["--fresh"] if fresh else []),
                                                    *metrics_argv(metrics_dir), *loaded.overrides])
    try:
        pid = daemon.detach(argv, log, daemon.daemon_env(os.environ, token))
    except (daemon.DetachError, OSError) as err:
        raise fail(f"cannot start the supervisor: {err}", FAILED)
    started = daemon.wait_started(directory, pid, token, offset, MonotonicClock())
    if not started.ok:
        why = "is still starting" if started.pid else "exited before it took the job"
        raise fail(f"the supervisor (pid {pid}) {why}; its log {log}:\n{started.log_tail}", FAILED)
    settled = daemon.wait_settled(directory, started.pid, offset, MonotonicClock())
    ended = settled.state.get("state")
    if not settled.running and ended != "finished":
        why = settled.state.get("gave_up") or (f"state {ended}" if ended else "no state written")
        raise fail(f"the supervisor (pid {started.pid}) exited at once ({why}); its log {log}:\n"
               f"{settled.log_tail}", FAILED)
    name = loaded.name
    click.echo(f"guardrun: started job {name}: supervisor pid {started.pid}, its own log {log}\n"
               f"  follow it:  guardrun logs {name} -f\n"
               f"  status:     guardrun status {name}\n"
               f"  stop it:    guardrun stop {name}")


def _view(name: str, directory: Path, live: bool) -> dict:
    """One job's status; with `live`, the running supervisor's own snapshot over state.json.
    Fields of state.json of the wrong type are dropped and said (a damaged file)."""
    state, holder = read_state(directory), lock.holder(directory)
    state, dropped = jobview.well_typed(state)
    if dropped:
        warn(f"{directory / 'state.json'}: ignored {len(dropped)} field(s) of the wrong type: "
             + ", ".join(dropped))
    if live and holder is not None:
        try:
            reply = control.request(directory, "status", timeout=2.0)["state"]
            state = {**state, **jobview.well_typed(reply)[0]}
        except (control.ControlError, StateDirError, KeyError, TypeError):
            pass  # state.json is at most a few seconds old
    return jobview.view(name, state, holder, time.time())


def _job_names() -> list[str]:
    """The folders of the state root (a symlink or a file there is no job)."""
    root = state_root()
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        warn(f"{root}: {err.strerror}: no jobs read")
        return []
    return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]


def _recorded(directory: Path) -> bool:
    """Whether the job dir holds a state.json (readable or not) or a live supervisor."""
    return directory.is_dir() and (os.path.lexists(directory / "state.json")
                                   or lock.holder(directory) is not None)


def show_status(job: str | None, as_json: bool, describe: Callable[[str, dict], str]) -> int:
    """`guardrun status [JOB] [--json]`; `describe(name, view)` renders a job's fields (cli.py).
    The exit code: with JOB, 0 when it runs, 3 when not, 4 (said) when there is no such job."""
    names = [job] if job else _job_names()
    views = []
    for name in names:
        directory = job_dir(name)
        if job and ("/" in job or job in (".", "..") or not _recorded(directory)):
            raise fail(f"{name}: no state recorded in {directory} (guardrun list shows the jobs)",
                       UNKNOWN_JOB)
        views.append(_view(name, directory, live=True))
    if as_json:
        click.echo(json.dumps(views[0] if job else views, indent=2, default=str))
    elif not views:
        click.echo(f"no jobs in {state_root()}")
    else:
        click.echo("\n".join("\n".join([describe(v["job"], v), *jobview.extra_lines(v)])
                             for v in views))
    return NOT_RUNNING if job and not views[0]["alive"] else 0


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per job.")
def list_jobs(as_json: bool) -> None:
    """List the jobs guardrun knows, running or not."""
    views = [_view(name, job_dir(name), live=False) for name in _job_names()]
    if as_json:
        click.echo(json.dumps(views, indent=2, default=str))
    elif not views:
        click.echo(f"no jobs in {state_root()}")
    else:
        click.echo("\n".join(jobview.list_lines(views)))


def _duration(ctx, param, value):
    """(seconds, the text as given) of a duration option."""
    if value is None:
        return None
    try:
        return parse_duration(value), value
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.command()
@job_argument()
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the job writes, across attempts.")
@click.option("-n", "--lines", "last", type=click.IntRange(min=0),
              help="Only the last N lines (of each attempt shown); with -f, then follow.")
@click.option("--since", callback=_duration, metavar="DURATION",
              help="The attempts that wrote output in the last DURATION (10m, 2h), each whole.")
@click.option("--attempt", type=click.IntRange(min=1), help="This attempt (default: the latest).")
@click.option("--rank", type=click.IntRange(min=0), help="Only this rank's lines.")
def logs(job: str, follow: bool, last: int | None, since: tuple[float, str] | None, attempt: int | None,
         rank: int | None) -> None:
    """Print JOB's output: the latest attempt's, --attempt N's, or those of the last --since."""
    if since is not None and attempt is not None:
        raise click.UsageError("give --since or --attempt, not both")
    directory = _job_dir(job)
    numbers = logview.attempts(directory, say=warn)
    if attempt is not None and attempt not in numbers:
        have = f"{numbers[0]}-{numbers[-1]}" if numbers else "none yet"
        raise fail(f"job {job} has no attempt {attempt} (attempts: {have})", USAGE)
    say = lambda text: click.echo(f"guardrun: {text}", err=True)  # noqa: E731
    shown = [attempt] if attempt else numbers[-1:]
    if since is not None:
        shown = logview.written_since(directory, numbers, time.time() - since[0])
        if not shown:
            say(f"no attempt of job {job} wrote output in the last {since[1]}")
            if not follow:
                return
            shown, last = numbers[-1:], 0  # -f: only what the job writes from now on
    if not follow:
        if not shown:
            raise fail(f"job {job} has no attempt yet", FAILED)
        for number in shown:
            _print_attempt(directory, number, rank, last, say, header=len(shown) > 1)
        return
    for number in shown[:-1]:  # --since -f: the earlier attempts whole, then follow the last
        _print_attempt(directory, number, rank, last, say, header=True)
    # Attempt 0 never exists: following it waits for the first attempt, then switches.
    choice = logview.pick_log(directory, shown[-1] if shown else 0, rank)
    if choice.note and shown:
        say(choice.note)
    try:
        logview.Follower(directory, choice, pinned=attempt is not None, rank=rank,
                         alive=lambda: lock.holder(directory) is not None, sleep=time.sleep,
                         out=sys.stdout, say=say, last=last).run()
    except logview.LogUnreadable as err:
        raise fail(str(err), FAILED) from None


def _print_attempt(directory: Path, number: int, rank: int | None, last: int | None,
                   say: Callable[[str], None], header: bool) -> None:
    """One attempt's lines (or the last N), and why there are none when there are none."""
    if header:
        say(f"attempt {number}:")
    choice = logview.pick_log(directory, number, rank)
    if choice.note:
        say(choice.note)
    try:
        copied = logview.copy(choice, sys.stdout, last)
    except logview.LogUnreadable as err:
        raise fail(str(err), FAILED) from None
    if copied == 0 and last != 0:
        why = logview.explain_empty(directory, number, rank)
        if why or rank is not None:
            say(why or f"no lines for rank {rank} in attempt {number}")


@click.command()
@job_argument()
@click.option("--now", is_flag=True, help="Kill the job at once, without the grace period.")
@click.option("--timeout", type=click.FloatRange(min=0), default=600.0, show_default=True,
              help="Seconds to wait for the supervisor to finish stopping.")
def stop(job: str, now: bool, timeout: float) -> None:
    """Stop JOB's supervisor and its whole process tree; wait until both are gone."""
    directory = _job_dir(job)
    pid = lock.holder(directory)
    if pid is None:
        state = (read_state(directory) or {}).get("state", "unknown")
        click.echo(f"guardrun: job {job} is not running (last state: {state})")
        return
    began = time.monotonic()
    try:
        reply = control.request(directory, "stop-now" if now else "stop")
        click.echo(f"guardrun: job {job} (supervisor pid {pid}): {reply['message']}")
    except (control.ControlError, StateDirError) as err:
        if now:
            raise fail(f"cannot reach the supervisor: {err}", FAILED)
        click.echo(f"guardrun: {err}; sending SIGTERM to pid {pid}")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it exited meanwhile: the lock says so below
    while lock.holder(directory) is not None:
        if time.monotonic() - began > timeout:
            raise fail(f"job {job} is still stopping after {timeout:g}s (pid {pid})", FAILED)
        time.sleep(STOP_POLL)
    state = (read_state(directory, say=None) or {}).get("state", "unknown")
    click.echo(f"guardrun: job {job} stopped after {time.monotonic() - began:.1f}s (state: {state})")


@click.command(name="tmux")
@recipeargs.words_argument
@click.option("--no-attach", is_flag=True, help="Create the session, do not attach to it.")
@click.option("-L", "--socket-name", help="The tmux server's socket name (tmux -L).")
@click.option("--fresh", is_flag=True, help="Start at rung 0, ignoring failures of earlier runs.")
@node_rank_option
@metrics_dir_option
def tmux_cmd(words: tuple[str, ...], no_attach: bool, socket_name: str | None, fresh: bool,
             metrics_dir: str | None) -> None:
    """Run RECIPE in a tmux session named after the job, or re-attach to it."""
    loaded = recipeargs.load(words)
    session, base = tmux.session_name(loaded.name), tmux.base_argv(socket_name)
    try:
        if tmux.has_session(base, session):
            pane = tmux.pane(base, session)
            ended = ""
            if pane and pane.dead:  # the status shows once tmux has reaped the run
                ended = " (the run in it has exited" + (
                    f", status {pane.status})" if pane.status is not None else ")")
            click.echo(f"guardrun: tmux session {session} exists{ended}")
        else:
            _refuse_if_supervised(loaded.name, _private_dir(loaded.name))
            run = daemon.run_argv(loaded.path.resolve(), [*(["--fresh"] if fresh else []),
                                                          *metrics_argv(metrics_dir), *loaded.overrides])
            tmux.create(base, session, run, os.environ, os.getcwd())
            click.echo(f"guardrun: started job {loaded.name} in tmux session {session}")
    except tmux.TmuxError as err:
        raise fail(str(err), USAGE if "not installed" in str(err) else FAILED)
    attach = tmux.attach_argv(base, session, inside_tmux=bool(os.environ.get("TMUX")))
    if no_attach or not (sys.stdin.isatty() and sys.stdout.isatty()):
        click.echo("  attach:  " + shlex.join(attach) + "\n  detach again with Ctrl-b d")
        return
    os.execvp(attach[0], attach)


COMMANDS = (start, list_jobs, logs, stop, tmux_cmd)

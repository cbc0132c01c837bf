"""`guardrun tmux RECIPE`: the job's foreground run inside a tmux session named after it.

tmux keeps the terminal alive when SSH drops, so the live status line is still there
on re-attach. The session is `guardrun-<job>`; targets use `=name` (an exact match: a
bare name is a prefix match in tmux, and `guardrun-a` would find `guardrun-ab`).

The run command gets the caller's environment explicitly (`new-session -e`): a tmux
server started long ago would otherwise give the session *its* environment (an old
PATH, another conda env, no GUARDRUN_STATE_DIR). `remain-on-exit` keeps the pane, and
guardrun's last lines, after the run ends; it is set in the same tmux invocation as
`new-session` (commands separated by `;`), so the server applies it before it can see
even an instant exit.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping, Sequence

#: Variables that describe the calling terminal or tmux client, not the job: tmux sets
#: its own (TERM, TMUX, TMUX_PANE), and a copied TMUX would make the run think it is
#: nested in the caller's session.
_NOT_PASSED = frozenset({"TMUX", "TMUX_PANE", "TERM", "TERM_PROGRAM", "TERM_PROGRAM_VERSION",
                         "COLUMNS", "LINES", "SHLVL", "_", "PWD", "OLDPWD"})
#: The detached session's size: wide enough for the status line without wrapping.
WIDTH, HEIGHT = 200, 50


class TmuxError(Exception):
    """tmux is missing or refused a command."""


@dataclass(frozen=True)
class Pane:
    dead: bool
    status: int | None  # exit status of the run once dead; None if tmux did not record it


def session_name(job: str) -> str:
    """tmux refuses `.` and `:` in session names (they separate window and pane)."""
    return "guardrun-" + re.sub(r"[^A-Za-z0-9_-]", "_", job)


def base_argv(socket_name: str | None) -> list[str]:
    return ["tmux", *(["-L", socket_name] if socket_name else [])]


def passed_env(environ: Mapping[str, str]) -> list[str]:
    """`-e NAME=value` arguments for the caller's environment, minus terminal variables."""
    args: list[str] = []
    for name, value in sorted(environ.items()):
        if name not in _NOT_PASSED and "=" not in name:
            args += ["-e", f"{name}={value}"]
    return args


def new_session_argv(base: Sequence[str], session: str, run: Sequence[str],
                     environ: Mapping[str, str], cwd: str) -> list[str]:
    return [*base, "new-session", "-d", "-s", session, "-x", str(WIDTH), "-y", str(HEIGHT),
            "-c", cwd, *passed_env(environ), "--", *run,
            ";", "set-option", "-w", "-t", f"={session}:", "remain-on-exit", "on"]


def attach_argv(base: Sequence[str], session: str, inside_tmux: bool) -> list[str]:
    """attach-session from a plain terminal; switch-client from inside tmux (attaching
    there would nest one tmux in another)."""
    verb = "switch-client" if inside_tmux else "attach-session"
    return [*base, verb, "-t", f"={session}"]


def _tmux(argv: Sequence[str]) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise TmuxError("tmux is not installed (apt install tmux)")
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def has_session(base: Sequence[str], session: str) -> bool:
    return _tmux([*base, "has-session", "-t", f"={session}"]).returncode == 0


def pane(base: Sequence[str], session: str) -> Pane | None:
    """The state of the session's (first) pane: is the run in it over?"""
    result = _tmux([*base, "list-panes", "-t", f"={session}:", "-F",
                    "#{pane_dead} #{pane_dead_status}"])
    if result.returncode != 0 or not result.stdout.strip():
        return None
    dead, _sep, status = result.stdout.splitlines()[0].partition(" ")
    return Pane(dead == "1", int(status) if status.strip().lstrip("-").isdigit() else None)


def create(base: Sequence[str], session: str, run: Sequence[str], environ: Mapping[str, str],
           cwd: str) -> None:
    result = _tmux(new_session_argv(base, session, run, environ, cwd))
    if result.returncode != 0:
        raise TmuxError(f"tmux new-session failed: {result.stderr.strip() or result.returncode}")

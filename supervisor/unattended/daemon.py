"""`guardrun start`: a job's supervisor detached from the terminal, and the wait for it.

The classic double fork: fork, setsid (a new session, no controlling terminal), fork
again (the daemon is not a session leader, so opening a terminal can never make it its
controlling one), stdin from /dev/null, stdout and stderr appended to the job's
`supervisor.log`, cwd `/` (no mount kept busy), then exec `guardrun run` afresh (no state
of the `start` process carried over). A dropped SSH session sends it nothing.

`start` knows its daemon got the job when the job's lock file carries the token it
passed down (GUARDRUN_START_TOKEN): the supervisor writes it right after taking the
lock. That survives a job so short that it is over before `start` looks. It then waits
for the daemon to spawn its first attempt (its own state.json names a launcher), for a
few seconds at most: a daemon that gives up at once (a program that cannot be executed,
a state dir it cannot use) used to be reported "started" with exit 0 (issue 12 §6).
"""
from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..core.clock import Clock
from ..record.journal import read_state
from .jobrun import START_TOKEN
from .lock import read_info

SUPERVISOR_LOG = "supervisor.log"
#: How long `start` waits for its daemon to take the job's lock: an interpreter start
#: and a recipe load take well under a second; a leftover stop can take the grace.
START_TIMEOUT = 60.0
#: How long `start` then waits for the first attempt's spawn. A daemon that dies sooner
#: is reported with its log; one still preparing (waiting for GPUs, converting a
#: checkpoint, stopping a dead run's leftovers) is reported started, with its state.
SETTLE_TIMEOUT = 10.0
POLL = 0.02


class DetachError(Exception):
    """The daemon could not be started."""


@dataclass(frozen=True)
class Started:
    pid: int | None  # the supervisor's pid (None: it died before taking the lock)
    ok: bool
    log_tail: str    # what it wrote before dying, for the user


def run_argv(recipe: Path, options: Sequence[str]) -> list[str]:
    """`guardrun run` as the current interpreter runs it (no console script needed)."""
    return [sys.executable, "-m", "guardrun.supervisor", "run", *options, str(recipe)]


def daemon_env(environ: Mapping[str, str], token: str) -> dict[str, str]:
    """The daemon's environment: ours, the start token, and an absolute state root
    (the daemon runs in `/`, where a relative GUARDRUN_STATE_DIR would mean elsewhere)."""
    env = dict(environ)
    env[START_TOKEN] = token
    if env.get("GUARDRUN_STATE_DIR"):
        env["GUARDRUN_STATE_DIR"] = os.path.abspath(env["GUARDRUN_STATE_DIR"])
    return env


def new_token() -> str:
    return uuid.uuid4().hex


def detach(argv: Sequence[str], log_path: Path, env: Mapping[str, str]) -> int:
    """Start `argv` as a daemon (double fork); returns its pid once it exists."""
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the child, which never returns here
        _intermediate(list(argv), log_path, dict(env), read_end, write_end)
    os.close(write_end)
    os.waitpid(first, 0)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    if not answer.isdigit():
        raise DetachError(answer.decode(errors="replace") or "the intermediate process died")
    return int(answer)


def _intermediate(argv: list[str], log_path: Path, env: dict, read_end: int, write_end: int) -> None:
    """The first child: a new session, the daemon forked from it, its pid sent up, exit."""
    try:
        os.close(read_end)
        os.setsid()
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            _exec_daemon(argv, log_path, env)
        os.write(write_end, b"%d" % pid)
    except BaseException as err:  # noqa: BLE001 - a forked child must never unwind into the caller
        os.write(write_end, f"cannot detach: {err}".encode())
        os._exit(1)
    os._exit(0)


def _exec_daemon(argv: list[str], log_path: Path, env: dict) -> None:
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir("/")
        os.execve(argv[0], argv, env)
    except BaseException as err:  # noqa: BLE001 - see _intermediate
        os.write(2, f"guardrun: error: cannot start the supervisor: {err}\n".encode())
    os._exit(127)


def _running(pid: int) -> bool:
    """Whether `pid` runs (not our child: init reaps it, so a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_started(job_dir: Path, pid: int, token: str, log_offset: int, clock: Clock,
                 timeout: float = START_TIMEOUT) -> Started:
    """Wait until the daemon `pid` holds the job's lock (its token is in the lock file),
    or it died, or `timeout` passed (then it is reported as not started, still running)."""
    deadline = clock.monotonic() + timeout
    while True:
        info = read_info(job_dir)
        if info is not None and info.token == token:
            return Started(info.pid, True, "")
        if not _running(pid) or clock.monotonic() >= deadline:
            info = read_info(job_dir)  # it may have taken the lock just before exiting
            if info is not None and info.token == token:
                return Started(info.pid, True, "")
            return Started(pid if _running(pid) else None, False,
                           _tail(job_dir / SUPERVISOR_LOG, log_offset))
        clock.sleep(POLL)


@dataclass(frozen=True)
class Settled:
    running: bool   # the daemon still runs
    state: dict     # its own state.json ({} while it has written none)
    log_tail: str   # what it wrote to its log, when it is gone


def wait_settled(job_dir: Path, pid: int, log_offset: int, clock: Clock,
                 timeout: float = SETTLE_TIMEOUT) -> Settled:
    """Once daemon `pid` holds the lock: wait until its first attempt is spawned, it
    exits, or `timeout` passes. Only a state.json written by `pid` counts (the last
    run's may name another launcher)."""
    deadline = clock.monotonic() + timeout
    while True:
        alive = _running(pid)
        state = _own_state(job_dir, pid)
        if not alive:
            return Settled(False, state, _tail(job_dir / SUPERVISOR_LOG, log_offset))
        if state.get("launcher_pid") or clock.monotonic() >= deadline:
            return Settled(True, state, "")
        clock.sleep(POLL)


def _own_state(job_dir: Path, pid: int) -> dict:
    state = read_state(job_dir, say=None)  # polled: a damaged old one is not worth 500 warnings
    return state if isinstance(state, dict) and state.get("pid") == pid else {}


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _tail(path: Path, offset: int, limit: int = 4000) -> str:
    """What the daemon wrote to its log since `offset` (its own run), at most `limit` bytes."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read()
    except FileNotFoundError:
        return ""
    return text[-limit:].decode("utf-8", "replace").strip()

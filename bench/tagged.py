"""Run a benchmark's command so that nothing it starts can be left behind unnoticed.

Every process the command starts inherits `GUARDRUN_BENCH_TAG=<uuid>` in its environment
(ranks, orphans and double-forked children alike), the way tests/conftest.py tags a test's
processes. After the command exits, `leftovers` lists the live processes that still carry
the tag; the benchmarks report them, kill them, and exit non-zero.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

from guardrun.supervisor.watch.proctree import environ_pids

TAG = "GUARDRUN_BENCH_TAG"


def new_tag() -> str:
    return uuid.uuid4().hex


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries `tag` (a zombie's environ reads empty)."""
    return sorted(environ_pids({f"{TAG}={tag}".encode()}))


def leftovers(tag: str, timeout: float = 10.0) -> list[int]:
    """The tagged processes still alive `timeout` seconds after the command exited (killed
    with SIGKILL before returning, so one leak cannot disturb the next measurement)."""
    deadline = time.monotonic() + timeout
    while (left := tagged_pids(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for an exit: there is no event to wait on for a non-child
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


@dataclass(frozen=True)
class Ran:
    code: int | None       # None: timed out (the bench stopped it)
    wall: float            # seconds from spawn to exit
    output: str            # merged stdout and stderr
    left: tuple[int, ...]  # tagged processes alive after the exit (killed since)


def run_tagged(argv: Sequence[str], env: dict[str, str], timeout: float, cwd: str | None = None,
               on_line: Callable[[str], None] | None = None,
               on_spawn: Callable[[int], None] | None = None,
               preexec_fn: Callable[[], None] | None = None) -> Ran:
    """Run `argv` with a fresh tag; feed each output line to `on_line` as it comes
    (`on_spawn` gets the pid first; `preexec_fn` runs in the child before exec).

    On timeout the command gets SIGTERM (torchrun forwards it to its ranks, guardrun stops
    its job gracefully), 30 s later every tagged process gets SIGKILL.
    """
    tag = new_tag()
    env = dict(env, **{TAG: tag})
    started = time.monotonic()
    popen = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_fn)
    if on_spawn is not None:
        on_spawn(popen.pid)
    lines: list[str] = []
    deadline = started + timeout
    timed_out = False

    def read() -> None:
        for raw in iter(popen.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(popen, tag)
    except KeyboardInterrupt:
        _stop(popen, tag)
        raise
    wall = time.monotonic() - started
    left = leftovers(tag)
    reader.join(timeout=10)
    return Ran(code=None if timed_out else popen.returncode, wall=wall, output="".join(lines),
               left=tuple(left))


def _stop(popen: subprocess.Popen, tag: str) -> None:
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for pid in tagged_pids(tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        popen.wait()

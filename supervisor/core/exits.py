"""guardrun's exit codes, one table (the README's "Exit codes"), and the one error line.

`run`: 0 finished, 1 gave up, 2 a bad recipe or command line, 130 interrupted. The other
commands: 0 done, 1 the action failed, 2 usage. `status JOB` follows systemctl and
supervisorctl so that a script can test it: 0 running, 3 not running, 4 no such job.
"""
from __future__ import annotations

import sys

FINISHED = 0      # the job finished (or had already: nothing launched); a command did what it was asked
GAVE_UP = 1       # restarts used up, no rung left, a user error in the script
FAILED = 1        # a command's action failed (a daemon that died at start, a stop that timed out)
USAGE = 2         # a bad recipe or command line, a job already supervised, an unsafe state dir
NOT_RUNNING = 3   # `status JOB`: the job is known but no supervisor runs it
UNKNOWN_JOB = 4   # `status JOB`: no state recorded for JOB
INTERRUPTED = 130  # Ctrl-C or SIGTERM


def say_error(text: str) -> None:
    """`guardrun: error: TEXT` on stderr; no stderr to say it on is no second failure."""
    try:
        print(f"guardrun: error: {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # the journal has it


def fail(text: str, code: int) -> SystemExit:
    """Say the error; the exit to raise: `raise fail("...", USAGE)`."""
    say_error(text)
    return SystemExit(code)

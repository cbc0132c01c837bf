"""Signal handlers that only record what was asked; the loop acts on it.

- SIGINT (Ctrl-C) once, or SIGTERM (systemd, `kill`): stop the job gracefully.
- SIGINT twice: kill the job now, without the grace period.
- SIGHUP (the terminal went away): stop writing to it; the job keeps running.
"""
from __future__ import annotations

import signal
from typing import Callable


class Requests:
    """What signals have asked for so far. Set from handlers, read by the loop."""

    def __init__(self) -> None:
        self.stop = False
        self.kill_now = False
        self.hung_up = False
        self.signal_name = ""

    def ask_stop(self, name: str) -> None:
        if self.stop and name == "SIGINT":
            self.kill_now = True
        self.stop = True
        self.signal_name = self.signal_name or name


def wait_unless_stopped(clock, requests: Requests, seconds: float) -> bool:
    """Wait `seconds` on `clock` (a supervisor.clock.Clock) in short steps, so a Ctrl-C
    is acted on at once; False when a stop was asked for."""
    deadline = clock.monotonic() + seconds
    while clock.monotonic() < deadline:
        if requests.stop:
            return False
        clock.sleep(min(0.2, deadline - clock.monotonic()))
    return not requests.stop


def install(requests: Requests, on_hangup: Callable[[], None]) -> Callable[[], None]:
    """Install the handlers; returns a function that puts the previous ones back."""
    def stop(signum, _frame):
        requests.ask_stop(signal.Signals(signum).name)

    def hangup(_signum, _frame):
        requests.hung_up = True
        on_hangup()

    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGINT, stop), (signal.SIGTERM, stop), (signal.SIGHUP, hangup))}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore

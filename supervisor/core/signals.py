"""Signal handlers that only record what was asked; the loop acts on it.

- SIGINT (Ctrl-C) once, or SIGTERM (systemd, `kill`): stop the job gracefully.
- SIGINT twice: kill the job now, without the grace period.
- SIGHUP (the terminal went away): stop writing to it; the job keeps running.
- SIGWINCH (the terminal was resized): counted (`resizes`); the console measures the
  width again before its next redraw.

`guardrun run` installs them before anything else (`install_early`, called when the
command's module is first imported, before the ~200 ms of imports, the recipe, the lock
and a dead run's leftovers): a SIGTERM in that time used to kill it with -15 and leave
the journal saying nothing. What remains is the interpreter's own start (about 20 ms
here, `python -c pass`), before any of guardrun's code runs.
"""
from __future__ import annotations

import os
import signal
from typing import Callable


class Requests:
    """What signals have asked for so far. Set from handlers, read by the loop."""

    def __init__(self) -> None:
        self.stop = False
        self.kill_now = False
        self.hung_up = False
        self.signal_name = ""
        self._on_hangup: Callable[[], None] | None = None

    def when_hung_up(self, action: Callable[[], None]) -> None:
        """Run `action` on SIGHUP (the console's detach), at once if it already came."""
        self._on_hangup = action
        if self.hung_up:
            action()

    def hang_up(self) -> None:
        self.hung_up = True
        if self._on_hangup is not None:
            self._on_hangup()

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


_resizes = 0


def resizes() -> int:
    """How many SIGWINCHes have come: the status line is fitted again when it changes."""
    return _resizes


def _resized(_signum, _frame) -> None:
    global _resizes
    _resizes += 1


def install(requests: Requests, on_hangup: Callable[[], None] | None = None) -> Callable[[], None]:
    """Install the handlers; returns a function that puts the previous ones back."""
    if on_hangup is not None:
        requests.when_hung_up(on_hangup)

    def stop(signum, _frame):
        requests.ask_stop(signal.Signals(signum).name)

    def hangup(_signum, _frame):
        requests.hang_up()

    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGINT, stop), (signal.SIGTERM, stop), (signal.SIGHUP, hangup),
                 (signal.SIGWINCH, _resized))}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore


_early: tuple[Requests, Callable[[], None]] | None = None


def install_early() -> Requests:
    """Install the handlers now, once per process, for `guardrun run` to take over later
    (`take_early`). Any other command gives them back with `release_early`."""
    global _early
    if _early is None:
        requests = Requests()
        _early = (requests, install(requests))
    return _early[0]


def take_early() -> Requests | None:
    """The Requests the early handlers have been filling, if they were installed."""
    return _early[0] if _early is not None else None


def release_early() -> None:
    """Put the previous handlers back (a command other than `run`: ^C and SIGTERM act as
    they always did); a signal that came meanwhile is delivered again, now to them."""
    global _early
    if _early is None:
        return
    requests, restore = _early
    _early = None
    restore()
    if requests.signal_name:
        os.kill(os.getpid(), signal.Signals[requests.signal_name])
    elif requests.hung_up:
        os.kill(os.getpid(), signal.SIGHUP)

"""systemd's notify protocol (sd_notify) without libsystemd: one datagram per message.

Under a `Type=notify` unit systemd sets NOTIFY_SOCKET (a path, or `@name` for the abstract
namespace) and, with WatchdogSec=, WATCHDOG_USEC (and WATCHDOG_PID, the pid it expects
the pings from). What guardrun sends:

- READY=1 when the job first enters `running` (its first attempt is spawned and watched);
- STATUS=<the status line>, at most every `status_every` seconds, and guardrun's own
  messages ("attempt 2 ended: host_oom") as they happen: `systemctl status` shows them;
- WATCHDOG=1 from the loop's own sleeps (see WatchdogClock), so pings stop when the loop
  stops turning, which is what the watchdog is for;
- STOPPING=1 when the job enters a terminal state (the supervisor is about to exit), with
  the exit code as the last STATUS.

READY and STOPPING follow the job's state changes (`moved`, which the Supervisor calls).

Without NOTIFY_SOCKET every call is a no-op. The variables are removed from the
environment once read (sd_notify's unset_environment), so the job's own processes do
not send on guardrun's behalf. Sends never block (MSG_DONTWAIT) and never raise: a full
queue or a vanished manager must not stall or break the supervisor.
"""
from __future__ import annotations

import os
import socket
from typing import Mapping, MutableMapping

from ..core.clock import Clock
from ..core.states import TERMINAL, State
from .console import Console

#: STATUS= from the live status line at most this often (the loop redraws it every
#: monitor interval, down to 50 ms; systemd keeps only the latest anyway).
STATUS_EVERY = 2.0
#: Pings per watchdog period. sd_watchdog_enabled(3) advises pinging at half the period;
#: a third leaves room for one slow sample.
PINGS_PER_PERIOD = 3
#: At most this many bytes of STATUS text (systemd truncates long lines in its display).
STATUS_MAX = 512


def socket_address(value: str | None) -> str | bytes | None:
    """The sockaddr for NOTIFY_SOCKET: a path, or `@name` -> abstract `\\0name`.

    Other forms (systemd >= 254 also accepts `vsock:CID:PORT`) are not supported: None.
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_period(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between the manager's watchdog deadlines, or None when it is not for us."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1e6


class Notifier:
    """Sends notify messages to one socket; every method is a no-op when `address` is None."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None,
                 status_every: float = STATUS_EVERY):
        self.address = address
        self.watchdog_every = watchdog / PINGS_PER_PERIOD if watchdog else None
        self._status_every = status_every
        self._sock: socket.socket | None = None
        self._ready = False
        self._stopping = False
        self._last_status: float | None = None
        self._last_ping: float | None = None

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> "Notifier":
        """Read (and remove) NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID from `env`."""
        env = os.environ if env is None else env
        address = socket_address(env.get("NOTIFY_SOCKET"))
        watchdog = watchdog_period(env, os.getpid()) if address else None
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """One datagram of `KEY=value` lines; False if it could not be sent (never raises)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), socket.MSG_DONTWAIT, self.address)
            return True
        except OSError:  # ECONNREFUSED (manager gone), EAGAIN (queue full), ENOENT
            return False

    def ready(self) -> None:
        if not self._ready:
            self._ready = True  # once, even if that send failed: the manager may be gone
            self.send("READY=1")

    def moved(self, state: State, exit_code: int | None) -> None:
        """The job's state changed: READY=1 at the first `running`, STOPPING=1 at the end."""
        if state is State.RUNNING:
            self.ready()
        elif state in TERMINAL:
            self.stopping(f"guardrun exits {exit_code}: {state}")

    def status(self, text: str, now: float | None = None) -> None:
        """STATUS=text; with `now`, rate-limited (the live line), else sent at once. None
        once STOPPING=1 went out: its STATUS (the exit code) is the one that stays."""
        if self.address is None or self._stopping:
            return
        if now is not None:
            if self._last_status is not None and now - self._last_status < self._status_every:
                return
            self._last_status = now
        self.send("STATUS=" + " ".join(text.split())[:STATUS_MAX])

    def watchdog(self, now: float) -> None:
        if self.watchdog_every is None:
            return
        if self._last_ping is None or now - self._last_ping >= self.watchdog_every:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self, why: str) -> None:
        """STOPPING=1 with the final status; READY=1 first if it never went out (a job
        that ended before its first sample), so the manager sees a start, then a stop."""
        if self.address is None or self._stopping:
            return
        if not self._ready:
            self.ready()
        self._stopping = True
        self.send("STOPPING=1", "STATUS=" + " ".join(why.split())[:STATUS_MAX])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class NotifyingConsole(Console):
    """The console, also telling systemd: status lines and guardrun's own messages
    become STATUS=."""

    def __init__(self, notifier: Notifier, **kwargs):
        super().__init__(**kwargs)
        self._notifier = notifier

    def status(self, text: str, now: float) -> None:
        super().status(text, now)
        self._notifier.status(text, now)

    def say(self, text: str) -> None:
        super().say(text)
        self._notifier.status(text)


class WatchdogClock:
    """The loop's clock, pinging the watchdog whenever the loop waits.

    Every wait of the supervisor goes through `clock.sleep`: between samples, during
    backoff, during a stop's grace period. So pings flow while the loop turns and stop
    when it hangs (a blocked read, a deadlock). A long wait (a 60 s monitor interval, a
    5 min backoff) is cut into pieces no longer than the ping period.
    """

    def __init__(self, inner: Clock, notifier: Notifier):
        self._inner = inner
        self._notifier = notifier
        self._piece = notifier.watchdog_every or float("inf")

    def monotonic(self) -> float:
        return self._inner.monotonic()

    def sleep(self, seconds: float) -> None:
        deadline = self._inner.monotonic() + seconds
        while True:
            now = self._inner.monotonic()
            self._notifier.watchdog(now)
            left = deadline - now
            if left <= 0:
                return
            self._inner.sleep(min(left, self._piece))

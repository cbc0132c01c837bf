"""What `guardrun run` sets up around one Supervisor, so the loop itself stays simple.

In order: the job's lock (one supervisor per job: a second run exits 2 naming the pid
of the first), the processes a SIGKILLed predecessor left behind (stopped before
anything starts), the job's mark in the environment (so the *next* run can find this
one's leftovers), the control socket (`guardrun stop`, `guardrun status`), and systemd's
notify protocol (a console and a clock that report to it; READY=1 and STOPPING=1 follow
the job's states). On the way out: the socket removed, then the lock released, so a
`guardrun stop` waiting for the lock sees a supervisor that is really done.
"""
from __future__ import annotations

import os

from guardrun.launcher.spec import Recipe

from ..core import events
from ..core.clock import Clock, MonotonicClock
from ..core.exits import GAVE_UP, USAGE, fail
from ..core.signals import Requests
from ..record.console import Console
from ..record.journal import Journal, StateDirError, read_state
from ..record.notify import Notifier, NotifyingConsole, WatchdogClock
from ..watch import cgroupfs, cgroupv1, leftovers
from ..watch.containment import leftover_members
from .control import ControlServer
from .lock import JobLock, LockHeld

#: Set by `guardrun start` for its daemon: written into the lock file once the lock is
#: taken, which is how `start` knows its own daemon (not another) got the job.
START_TOKEN = "GUARDRUN_START_TOKEN"


class JobRun:
    """A context for one foreground run: `with JobRun(...) as job: job.run(supervisor)`."""

    def __init__(self, recipe: Recipe, journal: Journal, requests: Requests | None = None, *,
                 quiet: bool = False):
        self.recipe = recipe
        self.journal = journal
        self.requests = requests if requests is not None else Requests()  # filled since before the recipe
        self.notifier = Notifier.from_env()
        self.console: Console = (NotifyingConsole(self.notifier, quiet=quiet)
                                 if self.notifier.enabled else Console(quiet=quiet))
        inner = MonotonicClock()
        self.clock: Clock = WatchdogClock(inner, self.notifier) if self.notifier.watchdog_every else inner
        self.requests.when_hung_up(self.console.detach)
        self._lock = JobLock(journal.dir)
        self._server: ControlServer | None = None

    def __enter__(self) -> "JobRun":
        try:
            self._lock.acquire(os.environ.pop(START_TOKEN, ""))
        except LockHeld as err:
            raise fail(f"job {self.recipe.name} is {err}; stop it with `guardrun stop "
                       f"{self.recipe.name}` or wait for it", USAGE) from None
        except (StateDirError, OSError) as err:
            raise fail(f"state directory: {err}", USAGE) from None
        try:
            self._stop_leftovers()
        except BaseException:
            self._lock.release()
            raise
        leftovers.mark_environment(self.journal.dir)
        return self

    def run(self, supervisor) -> int:
        """Serve the control socket while `supervisor` runs; its exit code."""
        try:
            self._server = ControlServer(self.journal.dir, supervisor.requests,
                                         supervisor.snapshot).start()
        except (StateDirError, OSError) as err:
            raise fail(f"control socket: {err}", USAGE) from None
        supervisor.note(control_socket=str(self._server.path),
                        supervisor_start=leftovers.start_time(os.getpid()))
        supervisor.listen(self.notifier.moved)  # READY=1 at running, STOPPING=1 at the end
        return supervisor.run()

    def __exit__(self, *_exc) -> None:
        if self._server is not None:
            self._server.close()
        self.notifier.close()
        self._lock.release()

    def _stop_leftovers(self) -> None:
        """Stop what a dead supervisor of this job left running; refuse to start over it.

        A stop asked for meanwhile does not cut it short (the old job gets its grace, as an
        attempt would), a second ^C does; the run then ends as interrupted (supervisor.loop).
        """
        finder = self._leftover_finder()
        found = finder()
        if not found:
            self._remove_leftover_cgroup()
            return
        pids = ", ".join(str(ident.pid) for ident in found)
        self.console.say(f"stopping {len(found)} process(es) left by a previous supervisor "
                         f"of this job: {pids}")
        report = leftovers.stop(finder, self.recipe.stop_grace, self.clock,
                                hurry=lambda: self.requests.kill_now)
        self.journal.emit(events.LEFTOVERS_STOPPED, pids=list(report.found), killed=list(report.killed),
                          left=list(report.left), took=round(report.took, 3))
        self._remove_leftover_cgroup()
        if report.left:
            raise fail("processes of the previous run survived SIGKILL (stuck in the kernel?): "
                       + ", ".join(map(str, report.left)) + "; not starting over them", GAVE_UP)

    def _job_cgroup(self):
        """This job's cgroup (this user's, this state dir's), or None where there is none: where
        its state dir recorded it, v1 or v2 (cgroupfs.recorded), else where v1 makes it here."""
        try:
            path = cgroupv1.JobCgroup.path_for(self.recipe.name, self.journal.dir)
        except cgroupv1.CgroupError:
            return None
        return path if path.is_dir() else None

    def _leftover_finder(self):
        """A dead run's processes by every /proc handle, and every member of its job cgroup."""
        finder = leftovers.Finder(self.journal.dir, read_state(self.journal.dir))
        path = self._job_cgroup()
        if path is None:
            return finder
        in_cgroup = leftover_members(path)

        def members():
            found = finder()
            seen = {ident.pid for ident in found}
            return found + [ident for ident in in_cgroup() if ident.pid not in seen and ident.pid != os.getpid()]
        return members

    def _remove_leftover_cgroup(self) -> None:
        """A dead supervisor's empty cgroups of this job go (never another job's or user's)."""
        path = self._job_cgroup()
        if path is not None:
            left = cgroupfs.JobCgroup(path, self.journal.dir).remove()  # the record goes with it
            self.journal.emit(events.CGROUP_LEFTOVER_REMOVED, path=str(path), left=left)

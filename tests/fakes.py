"""Hand-written fakes for what this machine cannot give a test on demand.

They stand behind the same interfaces as the real things (supervisor.core.clock.Clock,
and supervisor.watch.seams' ProcessOps and MemorySource), so the loop runs unchanged on
them: no process is started, no real second passes.
"""
from __future__ import annotations

import io
import signal
import socket
from dataclasses import dataclass, field

from guardrun.supervisor.watch import proc
from guardrun.supervisor.watch.proc import StopReport
from guardrun.supervisor.watch.proctree import ProcId, Walk
from guardrun.supervisor.watch.seams import group_stop


class FakeClock:
    """Monotonic time that moves only when slept on: tests never wait for real."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []
        self._due: list[tuple[float, object]] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        due = [action for at, action in self._due if at <= self.now]
        self._due = [(at, action) for at, action in self._due if at > self.now]
        for action in due:
            action()

    def at(self, seconds: float, action) -> None:
        """Call `action()` once a sleep takes the clock `seconds` past now (a signal, an exit)."""
        self._due.append((self.now + seconds, action))


@dataclass
class ScriptedHost:
    total: int
    available: int


@dataclass
class ScriptedTree:
    pids: tuple[int, ...]
    anon: int


@dataclass
class ScriptedMemory:
    """A memory source (supervisor.watch.seams.MemorySource) that replays a list of
    (fast anon, pss, available) readings: each sample of the tree takes the next one (the
    last repeats), and pss() and host() answer from it (from the first before any sample)."""

    total: int
    readings: list[tuple[int, int, int]]
    pss_calls: int = 0
    position: int = field(default=0)

    def _current(self) -> tuple[int, int, int]:
        return self.readings[min(max(self.position - 1, 0), len(self.readings) - 1)]

    def sample_tree(self, root_pid: int, adopter: int | None = None, exclude=()) -> ScriptedTree:
        self.position += 1
        return ScriptedTree((root_pid,), self._current()[0])

    def pss(self, pids) -> int:
        self.pss_calls += 1
        return self._current()[1]

    def host(self) -> ScriptedHost:
        return ScriptedHost(self.total, self._current()[2])


#: Fake launchers' pids start above the kernel's PID_MAX_LIMIT (4,194,304): never a real process.
FAKE_PID = 5_000_000


class FakePopen:
    """A launcher (supervisor.watch.seams.Launched) without a process. It prints `output`,
    then exits with `code` once `runs_for` seconds of `clock` have passed (None: it runs
    until signalled). SIGTERM makes it exit with `on_term` (None: it ignores SIGTERM);
    SIGKILL always ends it (-9)."""

    def __init__(self, pid: int = 7, clock: FakeClock | None = None, *, output: str = "",
                 code: int = 0, runs_for: float | None = None, on_term: int | None = None):
        self.pid, self.returncode, self.signals, self.waited = pid, None, [], False
        self.stdout = io.BytesIO(output.encode())
        self.code, self.on_term = code, on_term
        self._ends_at = clock.now + runs_for if clock is not None and runs_for is not None else None
        self._clock = clock

    def poll(self):
        if self.returncode is None and self._ends_at is not None and self._clock.now >= self._ends_at:
            self.returncode = self.code
        return self.returncode

    def send_signal(self, sig):
        self.signals.append(sig)
        if self.poll() is not None:
            return
        if sig == signal.SIGKILL:
            self.returncode = -signal.SIGKILL
        elif sig == signal.SIGTERM and self.on_term is not None:
            self.returncode = self.on_term

    def wait(self, timeout=None):
        self.waited = True
        return self.returncode


class FakeTree:
    """A tree that obeys SIGKILL, except for the `stuck` (D state); killing a pid in
    `forks` makes that child appear first (it forked while being killed)."""

    def __init__(self, live, stuck=(), forks=None):
        self.live, self.stuck, self.forks, self.signals = list(live), set(stuck), forks or {}, []

    def walk(self, root_pid, exclude=()):
        return Walk(tuple(self.live), tuple(ProcId(pid, 1) for pid in self.live), ())

    def pids(self, root_pid, exclude=()):
        return list(self.walk(root_pid, exclude).live)

    def alive(self, ident):
        return ident.pid in self.live

    def signal(self, ident, sig):
        self.signals.append((ident.pid, sig))
        if sig == signal.SIGKILL and ident.pid not in self.stuck:
            self.live.remove(ident.pid)
            if ident.pid in self.forks:
                self.live.append(self.forks.pop(ident.pid))
        return True


class LauncherTree(FakeTree):
    """The tree of one FakePopen: the launcher alone, alive until it exits; signals go to it."""

    def __init__(self, launcher: FakePopen):
        super().__init__(())
        self.launcher = launcher

    def walk(self, root_pid, exclude=()):
        self.live = [self.launcher.pid] if self.launcher.poll() is None else []
        return super().walk(root_pid, exclude)

    def alive(self, ident):
        return ident.pid == self.launcher.pid and self.launcher.poll() is None

    def signal(self, ident, sig):
        self.signals.append((ident.pid, sig))
        self.launcher.send_signal(sig)
        return True


@dataclass(frozen=True)
class Launch:
    """What one fake launch does (FakePopen's arguments): print, run, exit, answer SIGTERM;
    or `fails` at the spawn (nothing started)."""

    output: str = ""
    code: int = 0
    runs_for: float | None = 0.0
    on_term: int | None = -signal.SIGTERM
    fails: OSError | None = None


class FakeProcesses:
    """ProcessOps (supervisor.watch.seams) without processes: the n-th spawn is the n-th
    Launch given; the stop is the real proc.stop_tree, on the launcher's fake tree."""

    def __init__(self, clock: FakeClock, *launches: Launch):
        self.clock, self.launches = clock, list(launches)
        self.spawned: list[FakePopen] = []
        self.argvs: list[list[str]] = []
        self.stops: list[StopReport] = []

    def adopt_orphans(self) -> bool:
        return True

    def spawn(self, argv, *, env, cwd, join, stdout=None) -> FakePopen:
        calls = len(self.argvs)
        if calls == len(self.launches):
            raise AssertionError(f"spawn {calls + 1} was not scripted: {argv}")
        launch = self.launches[calls]
        self.argvs.append(list(argv))
        if launch.fails is not None:
            raise launch.fails
        popen = FakePopen(FAKE_PID + calls, self.clock, output=launch.output, code=launch.code,
                          runs_for=launch.runs_for, on_term=launch.on_term)
        self.spawned.append(popen)
        return popen

    def tree(self) -> LauncherTree:
        return LauncherTree(self.spawned[-1])

    def stop_tree(self, launched, tree, *, grace, clock, hurry, group, on_event) -> StopReport:
        report = proc.stop_tree(launched, tree, grace=grace, clock=clock, hurry=hurry, on_event=on_event,
                                **group_stop(group))
        self.stops.append(report)
        return report


from guardrun.launcher.gpus import GpuReading  # noqa: E402  (appended with the GPU fakes)
from guardrun.supervisor.watch.gpu import GpuError  # noqa: E402


class FakeGpuSource:
    """A GPU source (supervisor.gpu.GpuSource) without a GPU: readings come from a
    function the test controls, so a test can make VRAM rise when its job says so.

    `used(index)` gives GPU `index`'s used bytes at each call of devices();
    `procs` maps a GPU index to its processes; `fail` makes every call raise GpuError;
    `process_query` is the supervisor.gpu.QueryChoice it reports (None: not asked yet).
    """

    def __init__(self, count: int = 1, total: int = 80 << 30, used=None, procs=None,
                 name: str = "Fake H100", process_query=None):
        self.count, self.total, self.name = count, total, name
        self.process_query = process_query
        self.used = used or (lambda index: 0)
        self.procs = procs if procs is not None else {}
        self.fail = ""
        self.calls = 0

    def devices(self):
        self.calls += 1
        if self.fail:
            raise GpuError(self.fail)
        return [GpuReading(i, f"GPU-fake-{i}", self.name, used=self.used(i), total=self.total)
                for i in range(self.count)]

    def processes(self, index: int):
        if self.fail:
            raise GpuError(self.fail)
        return list(self.procs.get(index, ()))


class FakeSystemd:
    """systemd's side of NOTIFY_SOCKET: a datagram socket bound at `path`; `received()`
    drains what guardrun sent so far. A context manager that closes it."""

    def __init__(self, path):
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.setblocking(False)

    def received(self) -> list[str]:
        messages = []
        while True:
            try:
                messages.append(self._sock.recv(4096).decode())
            except BlockingIOError:
                return messages

    def __enter__(self) -> "FakeSystemd":
        return self

    def __exit__(self, *_exc) -> None:
        self._sock.close()

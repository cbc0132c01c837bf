"""Process operations behind one small interface: spawn a job, stop its whole tree.

The job's launcher (torchrun, deepspeed, python) is spawned in its own session, so a
terminal's hangup or ^C reaches guardrun and not the ranks. Its ranks may sit in
sessions of their own (torchrun starts each worker with start_new_session=True), so a
process-group signal would miss them: the tree is found by parent links
(supervisor.proctree) and every pid in it is signalled by identity, never by group.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..core import events
from ..core.clock import Clock
from .proctree import GONE, ProcId, ProcTree, Walk

__all__ = ["GONE", "ProcId", "ProcTree", "StopReport", "Walk", "reap",
           "set_child_subreaper", "spawn", "stop_members", "stop_tree"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

#: How often the grace period looks at the tree. 50 ms: a polite job's exit is seen
#: within 50 ms, and a walk of a 64-process tree costs well under 1 ms (bench/sampling.py).
GRACE_POLL = 0.05
#: How often the kill loop re-walks; SIGKILL takes effect in microseconds, so only a
#: process forking while being killed, or one in D state, keeps it going.
KILL_POLL = 0.01
#: A process alive this long after SIGKILL is stuck in the kernel (D state, often a
#: hung NFS or GPU driver call): report it rather than wait forever.
KILL_TIMEOUT = 5.0

Emit = Callable[..., None]


def _find_prctl():
    """libc's prctl from the symbols already loaded (CDLL(None)): ctypes.util.find_library
    would run `ldconfig -p` in a subprocess at import time."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def _prctl(option: int, arg: int) -> bool:
    if _PRCTL is None:
        return False
    return _PRCTL(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) == 0


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of init.

    A double-forked worker, or a rank whose torchrun was SIGKILLed, then stays in the
    tree guardrun walks (as one of its own children). Unprivileged; Linux >= 3.4.
    Returns False where the kernel or libc does not offer it.
    """
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


# -- spawning ------------------------------------------------------------------------------

def _child_setup(oom_adj: bytes, pdeathsig: int, parent: int,
                 join: bytes | None = None) -> Callable[[], None]:
    """The preexec_fn. It runs between fork and exec, so everything it touches (paths,
    bytes, ctypes arguments) is made before the fork and it only makes raw syscalls.
    `join`: a cgroup.procs file the child moves itself into ("0": the writer) before
    exec, so every process it ever starts is a member; a failure raises, so Popen
    raises SubprocessError and nothing was started (the caller spawns again without)."""
    adj_path = b"/proc/self/oom_score_adj"
    prctl = _PRCTL
    args = tuple(ctypes.c_ulong(v) for v in (PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0))

    def setup() -> None:
        if join:
            fd = os.open(join, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        if oom_adj:
            try:
                fd = os.open(adj_path, os.O_WRONLY)
                try:
                    os.write(fd, oom_adj)
                finally:
                    os.close(fd)
            except OSError:
                pass  # lowering needs CAP_SYS_RESOURCE; an unwritable value is not fatal
        if pdeathsig and prctl is not None:
            prctl(*args)
            if os.getppid() != parent:  # the parent died before the prctl took effect
                os.kill(os.getpid(), pdeathsig)
    return setup


def spawn(argv: Sequence[str], *, env: dict[str, str] | None, cwd: str | None, stdout, stderr,
          oom_score_adj: int | None = 800,
          pdeathsig: int | None = signal.SIGTERM, join: bytes | None = None) -> subprocess.Popen:
    """Start the launcher in a new session, first in line for the OOM killer.

    - start_new_session: ^C or a terminal hangup reaches guardrun, which decides.
    - oom_score_adj (inherited by every descendant): the kernel takes the job before
      sshd or guardrun. Raising it is unprivileged.
    - PR_SET_PDEATHSIG: if guardrun dies, the launcher gets SIGTERM and forwards it to
      its ranks (torchrun and deepspeed do). It fires when the parent *thread* exits,
      so call spawn from a thread that lives as long as the job (the main thread).
    - stdin is /dev/null: a job that prompts (a login, a y/N) fails at once instead of
      waiting forever on a terminal it is no longer attached to.
    """
    adj = b"" if oom_score_adj is None else str(int(oom_score_adj)).encode()
    setup = (_child_setup(adj, int(pdeathsig or 0), os.getpid(), join)
             if adj or pdeathsig or join else None)
    return subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=stderr, start_new_session=True,
                            preexec_fn=setup)


def reap(pids: Iterable[int], exclude: Iterable[int] = ()) -> list[int]:
    """waitpid(WNOHANG) each zombie that is our own child (an adopted orphan).

    `exclude` the launcher: its Popen reaps it, and a pid reaped behind Popen's back
    could be reused before Popen looks. Pids that are not our children are skipped.
    """
    skip = set(exclude)
    reaped = []
    for pid in pids:
        if pid in skip:
            continue
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append(done)
    return reaped


# -- stopping the tree -----------------------------------------------------------------

@dataclass(frozen=True)
class StopReport:
    term_sent_at: float | None  # clock reading when SIGTERM went out; None: not sent
    killed: tuple[int, ...]     # pids that got SIGKILL
    left: tuple[int, ...]       # pids alive KILL_TIMEOUT after SIGKILL (D state): empty on success
    took: float                 # seconds from the call to the tree being gone
    found: tuple[int, ...] = ()  # every pid seen during the stop, in the order seen


#: Who is to be stopped, asked again after every signal and every poll: (pid, start time)
#: of each live member. A member born meanwhile (one that forks on SIGTERM) is in the
#: next answer; one that is gone may be left out, or counted and found not alive.
Members = Callable[[], Iterable[ProcId]]


def _root(popen: subprocess.Popen | None) -> int | None:
    """The launcher's pid while it is ours: once Popen has reaped it, the pid may be reused."""
    return popen.pid if popen is not None and popen.poll() is None else None


def _no_event(name: str, **fields) -> None:
    return None


def stop_tree(popen: subprocess.Popen, tree: ProcTree, *, grace: float, clock: Clock,
              on_event: Emit | None = None, hurry: Callable[[], bool] | None = None,
              exclude: Iterable[int] = (), group: Callable[[], Iterable[int]] | None = None,
              group_kill: Callable[[], bool] | None = None) -> StopReport:
    """SIGTERM, wait up to `grace` for the tree to go, then SIGKILL whatever is left.

    SIGTERM goes to the launcher, which forwards it to its ranks (torchrun, deepspeed);
    if the launcher is already gone, to each process left. `hurry()` turning true (a
    second ^C) cuts the grace short. Every process seen in the tree since the call is
    remembered by identity, so one orphaned on the way (re-parented to init where
    guardrun is no subreaper) is still killed. Adopted zombies are reaped, the
    launcher waited for. `group()`: the pids of the attempt's cgroup, members too
    (one that left the tree by setsid and a double fork to its own reaper is still in it);
    `group_kill()`: SIGKILL them all at once where the kernel can (cgroupfs.Group.kill_switch).
    """
    skip = frozenset(exclude)

    def members() -> tuple[ProcId, ...]:
        walk = tree.walk(_root(popen), skip)
        reap(walk.zombies, exclude=(popen.pid,))
        found = walk.values  # held_identity's ProcIds
        return found + _group_members(group, tree, {ident.pid for ident in found} | skip) if group else found

    report = stop_members(members, tree, grace=grace, clock=clock, on_event=on_event,
                          hurry=hurry, launcher=popen, group_kill=group_kill)
    if popen.pid not in report.left:
        popen.wait()
    return report


def _group_members(group: Callable[[], Iterable[int]], tree: ProcTree,
                   seen: set[int]) -> tuple[ProcId, ...]:
    """The cgroup's members the walk did not reach, by identity (zombies left out)."""
    found = []
    for pid in group():
        if pid in seen:
            continue
        try:
            ident = tree.identity(pid)
        except GONE:
            continue
        if ident is not None:
            found.append(ident)
    return tuple(found)


def stop_members(members: Members, tree: ProcTree, *, grace: float, clock: Clock,
                 on_event: Emit | None = None, hurry: Callable[[], bool] | None = None,
                 launcher: subprocess.Popen | None = None,
                 group_kill: Callable[[], bool] | None = None) -> StopReport:
    """The one stop: SIGTERM, the grace, SIGKILL, each step re-asking `members()`.

    With a live `launcher` (our child) SIGTERM goes to it alone, to forward; otherwise,
    and for every member first seen later (born after the signal, or left when the
    launcher died without forwarding), each member gets its own SIGTERM, once. The kill
    loop re-asks until no member is alive, or names who survived KILL_TIMEOUT. Every
    signal goes by identity (ProcTree.signal): a pid reused meanwhile is never touched.
    `group_kill()` opens the kill phase where it can kill the members' cgroup at once (True).
    stop_tree uses it for an attempt's tree, supervisor.leftovers for a dead run's.
    """
    emit = on_event or _no_event
    stop = _Stop(members, tree, clock, launcher)
    term_sent_at = None
    if grace > 0 and stop.survivors():
        term_sent_at = _send_term(stop, emit)
        _wait_for_exit(stop, stop.started + grace, hurry or (lambda: False), emit)
    if group_kill is not None and stop.survivors() and group_kill():
        emit(events.PROC_GROUP_KILLED)
    killed, left = _kill_all(stop, emit)
    return StopReport(term_sent_at, killed, left, clock.monotonic() - stop.started,
                      tuple(stop.known))


class _Stop:
    """One stop in progress: who is to be stopped, and every member seen since it began."""

    def __init__(self, members: Members, tree: ProcTree, clock: Clock,
                 launcher: subprocess.Popen | None):
        self.members, self.tree, self.clock, self.launcher = members, tree, clock, launcher
        self.started = clock.monotonic()
        self.known: dict[int, ProcId] = {}
        self.termed: set[ProcId] = set()  # had a SIGTERM of their own (or are the launcher)

    def survivors(self) -> list[ProcId]:
        """Ask again, remember every member, and return who of all seen is alive."""
        self.known.update((ident.pid, ident) for ident in self.members())
        return [ident for ident in self.known.values() if self.tree.alive(ident)]

    def term_each(self, survivors: list[ProcId]) -> list[int]:
        """SIGTERM each survivor that has had none; the pids it reached."""
        fresh = [ident for ident in survivors if ident not in self.termed]
        self.termed.update(fresh)
        return [ident.pid for ident in fresh if self.tree.signal(ident, signal.SIGTERM)]


def _send_term(stop: _Stop, emit: Emit) -> float | None:
    if _root(stop.launcher) is not None:
        stop.launcher.send_signal(signal.SIGTERM)
        stop.termed.update(ident for ident in stop.known.values() if ident.pid == stop.launcher.pid)
        targets = [stop.launcher.pid]
    else:  # no launcher to forward it: each process left gets its own
        targets = stop.term_each(stop.survivors())
    if not targets:
        return None
    emit(events.PROC_TERM_SENT, pids=targets)
    return stop.clock.monotonic()


def _wait_for_exit(stop: _Stop, deadline: float, hurry: Callable[[], bool], emit: Emit) -> None:
    """Poll until nothing of the tree is alive, the deadline passes, or hurry() is true.

    A launcher may die of the SIGTERM without forwarding it (the `deepspeed` runner on one
    node has no handler: its launch.py and ranks live on, adopted by guardrun). Once the
    launcher is gone, each process left that has not had a SIGTERM gets its own, so the
    ranks still have the rest of the grace to exit cleanly instead of only a SIGKILL.
    Without a launcher, so does each member born since the last look.
    """
    clock = stop.clock
    while survivors := stop.survivors():
        now = clock.monotonic()
        if now >= deadline or hurry():
            return
        if _root(stop.launcher) is None:
            sent = stop.term_each(survivors)
            if sent:
                emit(events.PROC_TERM_FORWARDED, pids=sent)
        clock.sleep(min(GRACE_POLL, deadline - now))


def _kill_all(stop: _Stop, emit: Emit) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """SIGKILL every live pid, re-asking until none is left (one may fork meanwhile)."""
    killed: dict[int, None] = {}  # insertion-ordered set
    started = stop.clock.monotonic()
    while survivors := stop.survivors():
        if stop.clock.monotonic() - started >= KILL_TIMEOUT:
            left = [ident.pid for ident in survivors]
            emit(events.PROC_SURVIVED_KILL, pids=left, after=KILL_TIMEOUT)
            return tuple(killed), tuple(left)
        sent = [ident.pid for ident in survivors if stop.tree.signal(ident, signal.SIGKILL)]
        fresh = [pid for pid in sent if pid not in killed]
        if fresh:
            emit(events.PROC_KILL_SENT, pids=fresh)
            killed.update(dict.fromkeys(fresh))
        stop.clock.sleep(KILL_POLL)
    return tuple(killed), ()

"""Shared pieces for the process tests: small jobs, liveness checks, a supervisor stand-in.

Run as a script, it plays guardrun's side of a stop in its own process, so that only
that process becomes a child subreaper (pytest must not: every orphan of every later
test would then re-parent to pytest and stay a zombie until pytest exits):

    python tests/helpers_proc.py double-fork GRACE SUBREAPER(0|1)
    python tests/helpers_proc.py spawn-and-wait MARKER_PATH

It prints one JSON line with what it saw, for the test to check.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import wait_until

from guardrun.supervisor.watch import proc
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.watch.proctree import GONE, ProcId, ProcTree

TESTS = Path(__file__).resolve().parent
PY = sys.executable
_PROC = ProcTree()

# Each job prints "ready ..." once it is set up; each blocks until signalled.
IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(60)
"""

POLITE = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
while True:
    time.sleep(60)
"""

# A parent forking one child; both block. Prints "ready CHILD_PID".
FORKS_ONE = """
import os, time
child = os.fork()
if child == 0:
    while True:
        time.sleep(60)
print("ready", child, flush=True)
while True:
    time.sleep(60)
"""

# The launcher forks a middle process that forks a grandchild and exits at once, so the
# grandchild is orphaned. The grandchild ignores SIGTERM. Prints "ready GRANDCHILD_PID".
DOUBLE_FORK = """
import os, signal, time
r, w = os.pipe()
middle = os.fork()
if middle == 0:
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(w, b"%d\\n" % os.getpid())
        while True:
            time.sleep(60)
    os._exit(0)
os.waitpid(middle, 0)
print("ready", os.read(r, 64).decode().strip(), flush=True)
while True:
    time.sleep(60)
"""

# torchrun's shape: ranks in sessions of their own; SIGTERM is forwarded to each rank and
# the launcher waits for them (torchrun: up to 30 s) before it exits. Rank 0 exits on
# SIGTERM; rank 1 ignores it and has a forked worker (a DataLoader worker's place).
RANK = """
import os, signal, sys, time
polite = sys.argv[1] == "polite"
signal.signal(signal.SIGTERM, (lambda *_: sys.exit(0)) if polite else signal.SIG_IGN)
if not polite and os.fork() == 0:
    while True:
        time.sleep(60)
os.write(int(sys.argv[2]), b"x")
while True:
    time.sleep(60)
"""

TORCHRUN_LIKE = f"""
import os, signal, subprocess, sys, time
r, w = os.pipe()
ranks = [subprocess.Popen([sys.executable, "-c", {RANK!r}, kind, str(w)], pass_fds=(w,),
                          start_new_session=True) for kind in ("polite", "stubborn")]
def forward(signum, _frame):
    for rank in ranks:
        rank.send_signal(signum)
    for rank in ranks:
        rank.wait(timeout=30)
    sys.exit(1)
signal.signal(signal.SIGTERM, forward)
got = 0
while got < len(ranks):
    got += len(os.read(r, 8))
print("ready", *[rank.pid for rank in ranks], flush=True)
while True:
    time.sleep(60)
"""

# The `deepspeed` runner's shape on one node: SIGTERM's default action kills the launcher
# and nothing forwards it; its child (launch.py and the ranks in the real thing) exits on
# SIGTERM, writing "term" to the marker file given. Prints "ready CHILD_PID".
NO_FORWARD_CHILD = """
import signal, sys, time
def on_term(*_):
    open(sys.argv[1], "w").write("term")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("up", flush=True)
while True:
    time.sleep(60)
"""

NO_FORWARD = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {NO_FORWARD_CHILD!r}, sys.argv[1]],
                         stdout=subprocess.PIPE)
child.stdout.readline()
print("ready", child.pid, flush=True)
while True:
    time.sleep(60)
"""

# The main thread exits (pthread_exit) while a second thread forks a child and runs on:
# /proc/PID/stat then says Z although the process lives. It ignores SIGTERM, so only a
# SIGKILL by identity stops it. Prints "ready CHILD_PID".
LEADERLESS = """
import ctypes, os, signal, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def worker():
    child = os.fork()
    if child == 0:
        while True:
            time.sleep(60)
    print("ready", child, flush=True)
    while True:
        time.sleep(60)
threading.Thread(target=worker).start()
time.sleep(0.05)
ctypes.CDLL(None).pthread_exit(None)
"""


def start(job: str, *args: str) -> tuple[subprocess.Popen, list[str]]:
    """Spawn a job with proc.spawn and wait for its "ready" line (its extra words back)."""
    popen = proc.spawn([PY, "-c", job, *args], env=dict(os.environ), cwd=None,
                       stdout=subprocess.PIPE, stderr=None)
    line = popen.stdout.readline().decode().split()
    popen.stdout.close()  # the jobs print nothing after "ready"
    assert line[:1] == ["ready"], f"job did not start: {line}"
    return popen, line[1:]


def alive(ident: ProcId | int) -> bool:
    """Whether the process still runs: zombies count as gone; with a ProcId, a newcomer
    that reused the pid does not count either."""
    pid = ident.pid if isinstance(ident, ProcId) else ident
    try:
        now = _PROC.identity(pid)
    except GONE:
        return False
    if now is None:
        return False
    return now == ident if isinstance(ident, ProcId) else True


def assert_all_gone(idents, timeout: float = 5.0) -> None:
    """Wait (polling, up to `timeout`) until none of the processes is alive."""
    idents = list(idents)
    assert idents, "no process to check"
    try:
        wait_until(lambda: not any(alive(ident) for ident in idents), timeout=timeout,
                   what="the tree to be gone")
    except AssertionError:
        raise AssertionError(f"still alive: {[i for i in idents if alive(i)]}") from None


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return int(handle.read().rsplit(b")", 1)[1].split()[1])


def _double_fork(grace: float, subreaper: bool) -> dict:
    made = proc.set_child_subreaper() if subreaper else False
    popen, (grandchild,) = start(DOUBLE_FORK)
    grandchild = int(grandchild)
    if subreaper:
        wait_until(lambda: ppid_of(grandchild) == os.getpid(), timeout=5, what="re-parenting")
    ppid_before_stop = ppid_of(grandchild)
    tree = ProcTree(adopter=os.getpid())
    walk = tree.walk(popen.pid, exclude=())
    idents = list(walk.values)
    if not subreaper:  # the orphan escaped the tree; clean it up by hand
        idents.append(_PROC.identity(grandchild))
        os.kill(grandchild, signal.SIGKILL)
    report = proc.stop_tree(popen, tree, grace=grace, clock=MonotonicClock())
    return {"subreaper": made, "me": os.getpid(), "launcher": popen.pid, "grandchild": grandchild,
            "ppid_before_stop": ppid_before_stop,
            "walked": list(walk.live), "idents": [[i.pid, i.start] for i in idents],
            "killed": list(report.killed), "left": list(report.left),
            "term": report.term_sent_at is not None, "returncode": popen.returncode}


def _spawn_and_wait(marker: str) -> None:
    """Spawn a job that records SIGTERM in `marker`, print its pid, then wait to be killed."""
    job = f"""
import signal, sys, time
def on_term(*_):
    open({marker!r}, "w").write("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(60)
"""
    popen, _ = start(job)
    print(json.dumps({"job": popen.pid}), flush=True)
    signal.pause()  # until the test SIGKILLs this process


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "double-fork":
        print(json.dumps(_double_fork(float(sys.argv[2]), sys.argv[3] == "1")), flush=True)
    elif mode == "spawn-and-wait":
        _spawn_and_wait(sys.argv[2])
    else:
        sys.exit(f"unknown mode {mode}")

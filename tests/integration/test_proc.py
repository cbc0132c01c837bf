"""Spawning and stopping real process trees: every test ends with the whole tree gone.

The subreaper cases run guardrun's side in a helper process (tests/helpers_proc.py):
pytest itself must not become a subreaper, or every orphan of every later test would
re-parent to it and linger as a zombie until the session ends.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import wait_until
from fakes import FakeClock, FakePopen, FakeTree
from helpers_proc import (FORKS_ONE, IGNORES_TERM, LEADERLESS, NO_FORWARD, POLITE, PY, TESTS,
                          TORCHRUN_LIKE, alive, assert_all_gone, start)

from guardrun.supervisor.watch import proc
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.watch.memory import ProcfsMemory
from guardrun.supervisor.watch.proctree import ProcId, ProcTree

HELPER = str(TESTS / "helpers_proc.py")
PAGE = os.sysconf("SC_PAGE_SIZE")


def run_helper(*args: str) -> dict:
    done = subprocess.run([PY, HELPER, *args], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def identities(popen: subprocess.Popen, tree: ProcTree | None = None) -> tuple[ProcId, ...]:
    return (tree or ProcTree()).walk(popen.pid).values


# -- (1) orphans and the subreaper ------------------------------------------------------------

def test_double_forked_grandchild_is_killed_when_guardrun_is_a_subreaper():
    seen = run_helper("double-fork", "0.3", "1")
    assert seen["subreaper"] is True
    assert seen["ppid_before_stop"] == seen["me"]  # re-parented to the supervisor
    assert seen["grandchild"] in seen["walked"] and seen["launcher"] in seen["walked"]
    assert seen["grandchild"] in seen["killed"]  # it ignored SIGTERM
    assert seen["left"] == [] and seen["term"]
    assert_all_gone(ProcId(pid, start) for pid, start in seen["idents"])


def test_without_a_subreaper_the_orphan_escapes_the_walk():
    """Why guardrun sets PR_SET_CHILD_SUBREAPER: the control case."""
    seen = run_helper("double-fork", "0.3", "0")
    assert seen["ppid_before_stop"] != seen["me"]
    assert seen["walked"] == [seen["launcher"]]
    assert_all_gone(ProcId(pid, start) for pid, start in seen["idents"])


# -- (2) (3) grace and SIGKILL -----------------------------------------------------------------

def test_a_job_ignoring_sigterm_is_killed_after_the_grace():
    popen, _ = start(IGNORES_TERM)
    tree = ProcTree()
    idents = identities(popen, tree)
    events = []
    report = proc.stop_tree(popen, tree, grace=0.5, clock=MonotonicClock(),
                            on_event=lambda name, **kv: events.append(name))
    assert report.term_sent_at is not None
    assert report.killed == (popen.pid,) and report.left == ()
    assert 0.5 <= report.took < 3.0
    assert popen.returncode == -signal.SIGKILL
    assert events == ["proc.term_sent", "proc.kill_sent"]
    assert_all_gone(idents)


def test_a_polite_job_exits_on_sigterm_well_before_the_grace():
    popen, _ = start(POLITE)
    idents = identities(popen)
    report = proc.stop_tree(popen, ProcTree(), grace=20.0, clock=MonotonicClock())
    assert report.took < 2.0, report
    assert report.killed == () and report.left == ()
    assert popen.returncode == 0
    assert_all_gone(idents)


def test_no_grace_sends_no_sigterm():
    popen, _ = start(POLITE)  # it would have exited 0 on SIGTERM
    idents = identities(popen)
    report = proc.stop_tree(popen, ProcTree(), grace=0.0, clock=MonotonicClock())
    assert report.term_sent_at is None and report.killed == (popen.pid,)
    assert popen.returncode == -signal.SIGKILL
    assert_all_gone(idents)


def test_a_second_interrupt_cuts_the_grace_short():
    popen, _ = start(IGNORES_TERM)
    idents = identities(popen)
    asked = []
    report = proc.stop_tree(popen, ProcTree(), grace=30.0, clock=MonotonicClock(),
                            hurry=lambda: asked.append(1) or len(asked) >= 3)
    assert report.took < 3.0 and report.killed == (popen.pid,)
    assert_all_gone(idents)


# -- (4) what spawn sets up ----------------------------------------------------------------------

def test_spawned_processes_and_their_children_get_oom_score_adj_800_and_their_own_session():
    popen, (child,) = start(FORKS_ONE)
    idents = identities(popen)
    assert {ident.pid for ident in idents} == {popen.pid, int(child)}
    for pid in (popen.pid, int(child)):
        with open(f"/proc/{pid}/oom_score_adj") as handle:
            assert handle.read().strip() == "800"
    assert os.getsid(popen.pid) == popen.pid != os.getsid(0)
    assert os.readlink(f"/proc/{popen.pid}/fd/0") == "/dev/null"
    proc.stop_tree(popen, ProcTree(), grace=0.3, clock=MonotonicClock())
    assert_all_gone(idents)


def test_a_child_orphaned_during_the_grace_is_killed_even_without_a_subreaper():
    """The launcher dies on SIGTERM; its child, re-parented to init, is out of the walk
    but was seen before: stop_tree signals it by identity (here the forwarded SIGTERM,
    which it does not handle, is enough)."""
    popen, (child,) = start(FORKS_ONE)
    idents = identities(popen)
    seen = []
    report = proc.stop_tree(popen, ProcTree(), grace=3, clock=MonotonicClock(),
                            on_event=lambda name, **fields: seen.append((name, fields)))
    assert popen.returncode == -signal.SIGTERM
    assert ("proc.term_forwarded", {"pids": [int(child)]}) in seen
    assert report.killed == () and report.left == ()
    assert_all_gone(idents)


def test_the_launcher_gets_sigterm_when_guardrun_dies(tmp_path):
    marker = tmp_path / "term"
    helper = subprocess.Popen([PY, HELPER, "spawn-and-wait", str(marker)], stdout=subprocess.PIPE,
                              text=True)
    job = json.loads(helper.stdout.readline())["job"]
    ident = ProcTree().identity(job)
    helper.kill()  # guardrun dies without a chance to stop anything
    helper.wait(timeout=5)
    helper.stdout.close()
    assert_all_gone([ident])
    assert marker.read_text() == "SIGTERM"


# -- (5) a torchrun-like launcher ----------------------------------------------------------------

def test_ranks_in_their_own_sessions_are_all_gone_after_stop_tree():
    popen, ranks = start(TORCHRUN_LIKE)
    polite, stubborn = map(int, ranks)
    tree = ProcTree()
    wait_until(lambda: len(tree.pids(popen.pid)) == 4, timeout=5, what="the stubborn rank's worker")
    idents = identities(popen, tree)
    for rank in (polite, stubborn):
        assert os.getsid(rank) == rank != os.getsid(popen.pid)  # a group signal would miss it
    report = proc.stop_tree(popen, tree, grace=1.5, clock=MonotonicClock())
    assert report.term_sent_at is not None and report.left == ()
    assert polite not in report.killed  # it exited on the forwarded SIGTERM
    assert stubborn in report.killed and popen.pid in report.killed
    assert len(report.killed) == 3  # launcher, stubborn rank, its worker
    assert_all_gone(idents)


def test_when_the_launcher_dies_without_forwarding_sigterm_its_children_get_their_own(tmp_path):
    """The deepspeed runner dies of SIGTERM and forwards nothing: the child it leaves gets
    a SIGTERM of its own at once and exits cleanly, long before the grace is out."""
    marker = tmp_path / "term"
    popen, (child,) = start(NO_FORWARD, str(marker))
    idents = identities(popen)
    seen = []
    report = proc.stop_tree(popen, ProcTree(), grace=20, clock=MonotonicClock(),
                            on_event=lambda name, **fields: seen.append((name, fields)))
    assert popen.returncode == -signal.SIGTERM
    assert marker.read_text() == "term"
    assert report.killed == () and report.took < 10
    assert ("proc.term_forwarded", {"pids": [int(child)]}) in seen
    assert_all_gone(idents)


# -- identity and odd processes ------------------------------------------------------------------

def test_signal_refuses_a_pid_whose_start_time_is_not_the_one_seen():
    popen, _ = start(IGNORES_TERM)
    tree = ProcTree()
    [ident] = identities(popen, tree)
    assert not tree.signal(ProcId(ident.pid, ident.start + 1), signal.SIGKILL)  # a "newcomer"
    assert alive(ident)
    assert tree.signal(ident, signal.SIGKILL)
    popen.wait(timeout=5)
    assert_all_gone([ident])


def test_a_process_whose_main_thread_exited_is_still_found_measured_and_killed():
    popen, (child,) = start(LEADERLESS)
    tree = ProcTree()
    wait_until(lambda: tree.pids(popen.pid) == [popen.pid, int(child)], timeout=5,
               what="the leaderless process and its child")
    idents = identities(popen, tree)
    sample = ProcfsMemory().sample_tree(popen.pid)
    assert sample.pids == (popen.pid, int(child)) and sample.anon > 0
    report = proc.stop_tree(popen, tree, grace=0.2, clock=MonotonicClock())
    assert report.left == () and set(report.killed) == {popen.pid, int(child)}
    assert_all_gone(idents)


def test_reap_waits_only_for_our_own_zombies_and_skips_the_excluded():
    pid = os.posix_spawn("/bin/true", ["true"], dict(os.environ))
    wait_until(lambda: not alive(pid), timeout=5, what="the child to become a zombie")
    assert proc.reap([pid], exclude=[pid]) == []
    assert proc.reap([1, pid]) == [pid]  # pid 1 is not our child: skipped
    assert proc.reap([pid]) == []


# -- memory on a real tree ----------------------------------------------------------------------

def statm_anon(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as handle:
        _size, resident, shared = map(int, handle.read().split()[:3])
    return (resident - shared) * PAGE


def test_sample_tree_on_a_real_tree_agrees_with_statm_and_pss_is_smaller():
    popen, (child,) = start(FORKS_ONE)
    memory = ProcfsMemory()
    sample = memory.sample_tree(popen.pid)
    assert sample.pids == (popen.pid, int(child))
    expected = statm_anon(popen.pid) + statm_anon(int(child))
    assert abs(sample.anon - expected) <= 16 * PAGE  # both idle: a few pages at most
    scanned = ProcfsMemory(children_files=False).sample_tree(popen.pid)  # the fallback walk
    assert scanned.pids == sample.pids and abs(scanned.anon - sample.anon) <= 16 * PAGE
    assert 0 < memory.pss(sample.pids) < sample.anon  # forked: copy-on-write pages are shared
    assert memory.host().available > 0
    idents = identities(popen)
    proc.stop_tree(popen, ProcTree(), grace=0.3, clock=MonotonicClock())
    assert_all_gone(idents)


def test_held_fds_do_not_outlive_the_tree():
    popen, _ = start(FORKS_ONE)
    tree = ProcTree()
    idents = identities(popen, tree)
    assert tree.files.held() > 0
    proc.stop_tree(popen, tree, grace=0.0, clock=MonotonicClock())
    assert tree.files.held() == 0  # the last walk found nothing and closed everything
    assert_all_gone(idents)


# -- stop_tree's logic on fakes (no process can be held in D state unprivileged) -----------------

def test_the_kill_phase_kills_the_cgroup_at_once_where_the_kernel_can():
    """v2's cgroup.kill takes every member at once, the one forking too: nothing is left
    for SIGKILL one by one. Where it cannot (v1, an old kernel), member by member as before."""
    for can in (True, False):
        popen, tree, clock, events = FakePopen(), FakeTree([7, 8], forks={8: 9}), FakeClock(), []

        def kill_switch():
            if can:
                tree.live.clear()  # what the kernel does: the fork of 8 never happens
            return can
        report = proc.stop_tree(popen, tree, grace=0.0, clock=clock, group=lambda: (), group_kill=kill_switch,
                                on_event=lambda name, **kv: events.append((name, kv)))
        assert report.left == () and tree.live == []
        if can:
            assert events == [("proc.group_killed", {})] and tree.signals == [] and report.killed == ()
        else:
            assert events == [("proc.kill_sent", {"pids": [7, 8]}), ("proc.kill_sent", {"pids": [9]})]


def test_a_process_stuck_after_sigkill_is_reported_not_waited_for_forever():
    popen, tree, clock = FakePopen(), FakeTree([7, 8], stuck=[7, 8]), FakeClock()
    events = []
    report = proc.stop_tree(popen, tree, grace=2.0, clock=clock,
                            on_event=lambda name, **kv: events.append((name, kv)))
    assert report.left == (7, 8) and report.killed == (7, 8)
    assert report.took >= 2.0 + proc.KILL_TIMEOUT
    assert events[-1] == ("proc.survived_kill", {"pids": [7, 8], "after": proc.KILL_TIMEOUT})
    assert not popen.waited  # the launcher is among the survivors: Popen.wait would hang


def test_a_process_forked_while_the_tree_is_killed_is_killed_too():
    popen, clock = FakePopen(), FakeClock()
    report = proc.stop_tree(popen, FakeTree([7], forks={7: 9}), grace=0.0, clock=clock)
    assert report.killed == (7, 9) and report.left == ()
    assert popen.signals == [] and popen.waited


def test_the_grace_is_timed_on_the_clock_passed_in():
    popen, clock = FakePopen(), FakeClock()
    started = time.monotonic()
    tree = FakeTree([7])  # ignores SIGTERM
    report = proc.stop_tree(popen, tree, grace=60.0, clock=clock)
    assert popen.signals == [signal.SIGTERM] and tree.signals == [(7, signal.SIGKILL)]
    assert report.took >= 60.0 and time.monotonic() - started < 2.0
    assert max(clock.sleeps) <= proc.GRACE_POLL

"""The pieces that keep one job to one supervisor, on real processes and sockets:
the fcntl lock, the control socket (and what it refuses), a dead run's leftovers."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from fakes import FakeClock
from guardrun.supervisor.unattended import control
from guardrun.supervisor.watch import leftovers
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.record.journal import StateDirError, ensure_private_dir
from guardrun.supervisor.unattended.lock import JobLock, LockHeld, holder, read_info
from guardrun.supervisor.core.signals import Requests

HOLD_LOCK = textwrap.dedent("""
    import sys
    from pathlib import Path
    from guardrun.supervisor.unattended.lock import JobLock
    JobLock(Path(sys.argv[1])).acquire("held")
    print("locked", flush=True)
    sys.stdin.read()
""")

root_only = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")


@pytest.fixture
def job(tmp_path):
    return ensure_private_dir(tmp_path / "state" / "job")


def hold_lock(directory) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "locked\n"
    return child


def test_the_lock_names_its_holder_and_dies_with_it(job):
    child = hold_lock(job)
    assert holder(job) == child.pid
    with pytest.raises(LockHeld) as refused:
        JobLock(job).acquire()
    assert refused.value.pid == child.pid and f"pid {child.pid}" in str(refused.value)
    child.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
    child.wait()
    assert holder(job) is None
    with JobLock(job) as mine:
        mine.acquire("token-2")
        assert read_info(job).token == "token-2" and read_info(job).pid == os.getpid()
    assert holder(job) is None


def test_a_symlinked_lock_file_is_refused(job, tmp_path):
    (tmp_path / "elsewhere").write_text("")
    (job / "supervisor.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateDirError, match="symlink"):
        JobLock(job).acquire()


@pytest.fixture
def served(job):
    requests = Requests()
    server = control.ControlServer(job, requests, lambda: {"state": "running", "step": 12}).start()
    yield server, requests
    server.close()


def test_status_stop_and_stop_now_through_the_socket(job, served):
    server, requests = served
    mode = os.lstat(server.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert control.request(job, "status")["state"] == {"state": "running", "step": 12}
    assert not requests.stop
    assert control.request(job, "stop")["message"] == "stopping the job gracefully"
    assert requests.stop and not requests.kill_now
    control.request(job, "stop-now")
    assert requests.kill_now
    with pytest.raises(control.ControlError, match="unknown command 'reboot'"):
        control.request(job, "reboot")


def test_socket_is_removed_on_close_and_a_client_then_says_so(job):
    server = control.ControlServer(job, Requests(), dict).start()
    server.close()
    assert not server.path.exists()
    with pytest.raises(control.ControlError, match="is the supervisor running"):
        control.request(job, "status")


def test_a_stale_socket_of_a_dead_supervisor_is_replaced(job):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(job / control.SOCKET_NAME))
    stale.close()  # the path stays, nobody listens: what SIGKILL leaves
    with pytest.raises(control.ControlError, match="the supervisor is gone"):
        control.request(job, "status")
    server = control.ControlServer(job, Requests(), lambda: {"ok": 1}).start()
    try:
        assert control.request(job, "status")["state"] == {"ok": 1}
    finally:
        server.close()


def test_a_symlink_in_place_of_the_socket_is_refused(job, tmp_path):
    (job / control.SOCKET_NAME).symlink_to(tmp_path / "their.sock")
    with pytest.raises(StateDirError, match="not a socket of yours"):
        control.ControlServer(job, Requests(), dict).start()
    with pytest.raises(StateDirError, match="not a socket of yours"):
        control.request(job, "stop")


def test_a_long_state_path_still_binds(tmp_path):
    deep = ensure_private_dir(tmp_path / ("d" * 60) / ("e" * 60) / "job")
    assert len(str(deep / control.SOCKET_NAME)) > 108  # more than a sockaddr_un holds
    server = control.ControlServer(deep, Requests(), lambda: {"deep": True}).start()
    try:
        assert control.request(deep, "status")["state"] == {"deep": True}
    finally:
        server.close()


@root_only
def test_another_users_state_dir_is_refused(job):
    os.chown(job, 65534, 65534)
    with pytest.raises(StateDirError, match="not a private directory of yours"):
        control.ControlServer(job, Requests(), dict)
    with pytest.raises(StateDirError, match="not a private directory of yours"):
        control.request(job, "status")


@root_only
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="needs a system python3")
def test_another_user_connecting_is_refused_by_peer_uid(job, served):
    server, requests = served
    os.chmod(job, 0o711)  # let uid 65534 reach the socket: only SO_PEERCRED stands in the way
    os.chmod(server.path, 0o666)
    dir_fd = os.open(job, os.O_PATH | os.O_DIRECTORY)  # the parents (pytest's tmp) are 0700
    script = textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.connect("/proc/self/fd/{dir_fd}/{control.SOCKET_NAME}")
        s.sendall(b"stop\\n")
        print(s.recv(4096).decode(), end="")
    """)
    try:
        reply = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True,
                               timeout=30, user=65534, group=65534, pass_fds=(dir_fd,), cwd="/")
    finally:
        os.close(dir_fd)
    assert reply.returncode == 0, reply.stderr
    assert json.loads(reply.stdout) == {"ok": False, "error": "refused: you are not the job's owner"}
    assert not requests.stop


SLEEPER = "import signal, sys, time; {} print('up', flush=True); time.sleep(60)"


def marked_process(job, ignore_term: bool = False) -> subprocess.Popen:
    env = dict(os.environ)
    leftovers.mark_environment(job, env)
    code = SLEEPER.format("signal.signal(signal.SIGTERM, signal.SIG_IGN);" if ignore_term else "")
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "up\n"
    return child


def test_leftovers_are_found_by_mark_and_by_recorded_launcher(job, tmp_path):
    marked = marked_process(job)
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    other_job = marked_process(ensure_private_dir(tmp_path / "state" / "other"))
    try:
        start = leftovers.start_time(plain.pid)
        found = {i.pid for i in leftovers.find(job, {"launcher_pid": plain.pid, "launcher_start": start})}
        assert found == {marked.pid, plain.pid}
        stale = {"launcher_pid": plain.pid, "launcher_start": start + 1}  # the pid, reused
        assert {i.pid for i in leftovers.find(job, stale)} == {marked.pid}
    finally:
        for child in (marked, plain, other_job):
            child.kill()
            child.wait()


def test_a_recorded_launcher_brings_its_unmarked_children(job):
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); print(c.pid, flush=True); time.sleep(60)")
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(launcher.stdout.readline())
    try:
        recorded = {"launcher_pid": launcher.pid, "launcher_start": leftovers.start_time(launcher.pid)}
        found = leftovers.find(job, recorded)
        assert [i.pid for i in found] == [launcher.pid, child]
        report = leftovers.stop(found, grace=5, clock=MonotonicClock())
        assert report.left == () and launcher.wait(timeout=10) == -signal.SIGTERM
    finally:
        launcher.kill()
        launcher.wait()


def test_leftovers_get_sigterm_then_sigkill_after_the_grace(job):
    polite, stubborn = marked_process(job), marked_process(job, ignore_term=True)
    found = leftovers.find(job, None)
    report = leftovers.stop(found, grace=0.5, clock=MonotonicClock())
    assert set(report.found) == {polite.pid, stubborn.pid}
    assert report.killed == (stubborn.pid,) and report.left == ()
    assert polite.wait(timeout=10) == -signal.SIGTERM and stubborn.wait(timeout=10) == -signal.SIGKILL


def test_no_leftovers_means_nothing_is_signalled(job):
    assert leftovers.find(job, {"launcher_pid": 999999, "launcher_start": 1}) == []
    clock = FakeClock()
    assert leftovers.stop([], grace=30, clock=clock).found == () and clock.sleeps == []


def test_marks_are_exact_entries():
    assert leftovers.carries_mark(b"A=1\0GUARDRUN_JOB_DIR=/s/job\0", "/s/job")
    assert not leftovers.carries_mark(b"GUARDRUN_JOB_DIR=/s/job2\0", "/s/job")
    assert leftovers.recorded_launcher({"launcher_pid": "12"}) is None

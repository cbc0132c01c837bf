"""sd_notify: addresses, the watchdog period, what is sent and when, a no-op without systemd."""
from __future__ import annotations

import io
import os

import pytest

from fakes import FakeClock, FakeSystemd
from guardrun.supervisor.core.states import State
from guardrun.supervisor.record.notify import (Notifier, NotifyingConsole, WatchdogClock, socket_address,
                                        watchdog_period)


@pytest.fixture
def listener(tmp_path):
    with FakeSystemd(tmp_path / "notify.sock") as manager:
        yield manager


@pytest.mark.parametrize("value,address", [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@guardrun/notify", b"\0guardrun/notify"),
    ("vsock:2:1234", None),  # systemd >= 254 form, not supported: no-op
    ("relative/path", None),
    ("", None),
    (None, None),
])
def test_socket_address(value, address):
    assert socket_address(value) == address


@pytest.mark.parametrize("env,period", [
    ({"WATCHDOG_USEC": "2000000"}, 2.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_period(env, period):
    assert watchdog_period(env, os.getpid()) == period


def test_from_env_takes_the_variables_out_so_the_job_does_not_inherit_them(tmp_path):
    env = {"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "3000000",
           "WATCHDOG_PID": str(os.getpid()), "OTHER": "kept"}
    notifier = Notifier.from_env(env)
    assert notifier.enabled and notifier.watchdog_every == pytest.approx(1.0)
    assert env == {"OTHER": "kept"}


def test_without_notify_socket_everything_is_a_no_op():
    notifier = Notifier.from_env({})
    assert not notifier.enabled and notifier.watchdog_every is None
    notifier.ready()
    notifier.status("x", 0.0)
    notifier.stopping("bye")
    assert notifier.send("READY=1") is False


def test_ready_once_then_status_rate_limited_then_stopping(listener, tmp_path):
    notifier = Notifier(str(tmp_path / "notify.sock"), status_every=2.0)
    notifier.ready()
    notifier.ready()
    notifier.status("attempt 1 · step 1", 10.0)
    notifier.status("attempt 1 · step 2", 11.0)  # within 2 s of the last: dropped
    notifier.status("attempt 1 ended: host_oom")  # guardrun's own message: at once
    notifier.status("attempt 2 · step 1", 12.5)
    notifier.stopping("guardrun exits 0: finished")
    assert listener.received() == ["READY=1", "STATUS=attempt 1 · step 1",
                                  "STATUS=attempt 1 ended: host_oom", "STATUS=attempt 2 · step 1",
                                  "STOPPING=1\nSTATUS=guardrun exits 0: finished"]


def test_stopping_before_any_status_still_says_ready_first(listener, tmp_path):
    notifier = Notifier(str(tmp_path / "notify.sock"))
    notifier.stopping("guardrun exits 1: gave_up")
    assert listener.received() == ["READY=1", "STOPPING=1\nSTATUS=guardrun exits 1: gave_up"]


def test_a_vanished_manager_never_breaks_the_supervisor(tmp_path):
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"), watchdog=1.0)
    assert notifier.send("READY=1") is False
    notifier.watchdog(0.0)
    notifier.stopping("bye")


def test_a_full_queue_drops_instead_of_blocking(listener, tmp_path):
    notifier = Notifier(str(tmp_path / "notify.sock"))
    results = [notifier.send("STATUS=" + "x" * 4000) for _ in range(5000)]
    assert results[0] is True and results[-1] is False  # nobody read: EAGAIN, not a hang


def test_watchdog_clock_pings_while_the_loop_sleeps_in_pieces(listener, tmp_path):
    clock = FakeClock()
    notifier = Notifier(str(tmp_path / "notify.sock"), watchdog=0.3)  # ping every 0.1 s
    watched = WatchdogClock(clock, notifier)
    watched.sleep(1.0)
    assert max(clock.sleeps) <= 0.1 + 1e-9 and sum(clock.sleeps) == pytest.approx(1.0)
    assert 10 <= listener.received().count("WATCHDOG=1") <= 11
    assert watched.monotonic() == clock.now


def test_the_console_sends_its_lines_as_status_and_never_ready(listener, tmp_path):
    notifier = Notifier(str(tmp_path / "notify.sock"))
    console = NotifyingConsole(notifier, stream=io.StringIO(), tty=False)
    console.say("job x: journal in /somewhere")
    console.status("waiting for 1 free GPU(s), 60s left", 5.0)  # no attempt runs yet
    assert listener.received() == ["STATUS=job x: journal in /somewhere",
                                  "STATUS=waiting for 1 free GPU(s), 60s left"]


def test_ready_when_running_stopping_with_the_exit_code_when_terminal(listener, tmp_path):
    notifier = Notifier(str(tmp_path / "notify.sock"))
    for state, code in [(State.RUNNING, None), (State.STOPPING, None), (State.BACKOFF, None),
                        (State.STARTING, None), (State.RUNNING, None), (State.FINISHED, 0)]:
        notifier.moved(state, code)
    assert listener.received() == ["READY=1", "STOPPING=1\nSTATUS=guardrun exits 0: finished"]


def test_after_stopping_its_status_stays_the_last(listener, tmp_path):
    notifier = Notifier(str(tmp_path / "notify.sock"))
    notifier.moved(State.GAVE_UP, 1)
    notifier.status("giving up: restarts used up (3)")
    notifier.stopping("again")
    assert listener.received() == ["READY=1", "STOPPING=1\nSTATUS=guardrun exits 1: gave_up"]

"""What the terminal shows: output above one live status line; nothing after a hangup."""
import io
import os
import signal

import pytest

from guardrun.supervisor.core import signals
from guardrun.supervisor.record.console import DEFAULT_WIDTH, MARGIN, Console
from guardrun.supervisor.record.statusline import Field, StatusLine


@pytest.fixture(autouse=True)
def handlers():
    """guardrun's signal handlers, SIGWINCH's among them, for the test; the old ones after."""
    restore = signals.install(signals.Requests())
    yield
    restore()


def test_tty_redraws_status_under_output():
    out = io.StringIO()
    console = Console(out, tty=True)
    console.status("attempt 1 · step 3", now=0.0)
    console.output("[1] ", "hello")
    text = out.getvalue()
    # erased from the line's start down, the output, the status again, the cursor at its start
    assert text.endswith("\r\x1b[J[1] hello\nattempt 1 · step 3\r")


def test_tty_status_is_fitted_to_the_width():
    out = io.StringIO()
    console = Console(out, tty=True)  # a StringIO cannot be asked: DEFAULT_WIDTH, 80
    console.status(StatusLine([Field("attempt", "attempt 1"), Field("ranks", "2 rank(s)"),
                               Field("mem", "mem " + "9" * 50), Field("step", "step 3")]), now=0.0)
    drawn = out.getvalue().removeprefix("\r\x1b[J").removesuffix("\r")
    assert drawn == "attempt 1 · mem " + "9" * 50 + " · step 3"  # 87 wide: "2 rank(s)" gave way
    assert len(drawn) <= DEFAULT_WIDTH - MARGIN


def test_a_resize_refits_the_next_redraw(monkeypatch):
    """The width is asked once, then again only after a SIGWINCH (signals.resizes moved)."""
    columns = iter([100, 40])
    asked = []

    def terminal_size(fd):
        asked.append(fd)
        return os.terminal_size((next(columns), 24))
    monkeypatch.setattr(os, "get_terminal_size", terminal_size)
    with open(os.devnull, "w") as devnull:
        console = Console(devnull, tty=True)
        text = "x" * 90
        console.status(text, now=0.0)
        console.status(text, now=1.0)
        assert console._status == "x" * 90 + "\r" and len(asked) == 1
        os.kill(os.getpid(), signal.SIGWINCH)  # what a terminal sends; install()'s handler counts it
        console.status(text, now=2.0)
        assert console._status == "x" * 38 + "…\r" and len(asked) == 2


def test_plain_status_is_rate_limited():
    out = io.StringIO()
    console = Console(out, tty=False, plain_every=30)
    for now in (0.0, 10.0, 29.0, 31.0):
        console.status(f"s{now:g}", now=now)
    assert out.getvalue() == "guardrun: s0\nguardrun: s31\n"


def test_quiet_hides_job_output_not_guardrun_lines():
    out = io.StringIO()
    console = Console(out, tty=False, quiet=True)
    console.output("[1] ", "noise")
    console.say("attempt 1 ended: host_oom")
    assert out.getvalue() == "guardrun: attempt 1 ended: host_oom\n"


class HungUpTerminal(io.StringIO):
    """EIO on the first write (the terminal hung up); it would take later writes."""

    def __init__(self):
        super().__init__()
        self.hung_up = False

    def write(self, text):
        if not self.hung_up:
            self.hung_up = True
            raise OSError(5, "Input/output error")
        return super().write(text)


def test_write_error_after_hangup_detaches_quietly():
    terminal = HungUpTerminal()
    console = Console(terminal, tty=True)
    console.say("still here")
    console.output("[1] ", "more")  # no exception: the journal keeps the record
    console.say("and more")
    assert terminal.hung_up and terminal.getvalue() == ""  # detached: nothing written after the hangup

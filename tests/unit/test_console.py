"""What the terminal shows: output above one live status line; nothing after a hangup."""
import io

from guardrun.supervisor.record.console import Console


def test_tty_redraws_status_under_output():
    out = io.StringIO()
    console = Console(out, tty=True)
    console.status("attempt 1 · step 3", now=0.0)
    console.output("[1] ", "hello")
    text = out.getvalue()
    assert text.endswith("\r\x1b[K[1] hello\nattempt 1 · step 3")


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

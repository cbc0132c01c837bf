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


class BrokenTerminal(io.StringIO):
    def write(self, text):
        raise OSError(5, "Input/output error")


def test_write_error_after_hangup_detaches_quietly():
    console = Console(BrokenTerminal(), tty=True)
    console.say("still here")
    assert not console.attached
    console.output("[1] ", "more")  # no exception: the journal keeps the record

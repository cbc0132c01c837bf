"""On journald (JOURNAL_STREAM names the stream's device:inode) every console line starts
with its syslog priority, so `journalctl -p warning` shows what went wrong; anywhere else
nothing is prefixed."""
import os
import select

import pytest

from guardrun.supervisor.record import levels
from guardrun.supervisor.record.console import Console


def lines_written(path, journal_stream, env):
    """What a console on the real file `path` writes, JOURNAL_STREAM set to `journal_stream`."""
    with open(path, "w") as stream:
        env.setenv("JOURNAL_STREAM", journal_stream(stream))
        console = Console(stream, tty=False, plain_every=0)
        console.output("", "step 3 loss 0.5")
        console.output("", "<3>a job line that looks like a priority")
        console.status("attempt 1 · step 3", now=0.0)
        console.say("attempt 1 started")
        console.say(levels.warning("attempt 1 ended: host_oom (tree 3.9 GiB > 3 GiB)"))
        console.say(levels.error("giving up: restarts used up (3)\nlast: host_oom"))
        assert console.flush(5.0)
    return open(path).read().splitlines()


def device_inode(stream):
    info = os.fstat(stream.fileno())
    return f"{info.st_dev}:{info.st_ino}"


def test_lines_carry_their_priority_on_the_journal(tmp_path, monkeypatch):
    assert lines_written(tmp_path / "stderr", device_inode, monkeypatch) == [
        "<6>step 3 loss 0.5",
        "<6><3>a job line that looks like a priority",  # the job's own: info, read as text
        "<6>guardrun: attempt 1 · step 3",
        "<6>guardrun: attempt 1 started",
        "<4>guardrun: attempt 1 ended: host_oom (tree 3.9 GiB > 3 GiB)",
        "<3>guardrun: giving up: restarts used up (3)",
        "<3>last: host_oom",
    ]


@pytest.mark.parametrize("journal_stream", [
    lambda stream: "",                                        # not under systemd
    lambda stream: device_inode(stream).split(":")[0] + ":1",  # the journal is another stream
    lambda stream: "garbage",
])
def test_nothing_is_prefixed_elsewhere(tmp_path, journal_stream, monkeypatch):
    written = lines_written(tmp_path / "out", journal_stream, monkeypatch)
    assert written[0] == "step 3 loss 0.5" and written[-2] == "guardrun: giving up: restarts used up (3)"
    assert not any(line.startswith(("<4>", "<6>")) for line in written)


def test_lines_the_journal_did_not_take_are_a_warning(monkeypatch):
    """A journal that stops reading (a pipe here: its device:inode named the same way) costs
    the oldest of the job's lines; the notice that says so is a warning."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        info = os.fstat(write_end)
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        console = Console(stream, tty=False)
        for number in range(50_000):  # ~3 MB: far more than the pipe holds
            console.output("[1] ", f"line {number} " + "x" * 50)
        console.say("the verdict")
        text = b""
        while b"the verdict\n" not in text and select.select([read_end], [], [], 20)[0]:
            text += os.read(read_end, 1 << 16)  # the reader comes back
    finally:
        stream.close()
        os.close(read_end)
    lines = text.decode().splitlines()
    notices = [line for line in lines if "not shown on this terminal" in line]
    assert notices and all(line.startswith("<4>guardrun: ") for line in notices), notices
    assert all(line.startswith("<6>") or line in notices for line in lines), lines[:3]

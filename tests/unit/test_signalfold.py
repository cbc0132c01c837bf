"""A launcher's traceback for the signal that stopped it reaches the console as one line;
output.log keeps every line; any other traceback is shown whole."""
import io
from pathlib import Path

import pytest

from guardrun.supervisor.diagnose.output import OutputReader
from guardrun.supervisor.diagnose.signalfold import MAX_HELD, SignalFold
from guardrun.supervisor.record.console import Console

#: What torchrun printed when guardrun stopped `make demo`'s first attempt (torch 2.13, CPU).
SIGTERM = (Path(__file__).parents[1] / "data" / "signalfold" / "torchrun_sigterm.txt").read_text()
LAST = "torch.distributed.elastic.multiprocessing.api.SignalException: Process 13739 got signal: 15"


def shown(lines, armed=True):
    fold = SignalFold(armed)
    out = [line for each in lines for line in fold.feed(each)]
    return out + fold.end()


def test_torchruns_sigterm_traceback_is_one_line():
    lines = SIGTERM.splitlines()
    assert shown(lines) == lines[:3] + [f"{LAST} (its 29-line traceback is in output.log)"]


def test_the_console_gets_one_line_and_output_log_all(tmp_path):
    sink = io.StringIO()
    data = (SIGTERM + "after\n").encode()
    reader = OutputReader(io.BytesIO(data), tmp_path / "output.log", Console(sink, tty=False), "[1] ")
    reader.stopping()  # guardrun stops the attempt: the signal's traceback is its own doing
    assert reader.start().join(timeout=5)
    console = sink.getvalue().splitlines()
    assert len(console) == 5 and console[3] == f"[1] {LAST} (its 29-line traceback is in output.log)"
    assert console[4] == "[1] after"
    assert (tmp_path / "output.log").read_text() == SIGTERM + "after\n"


def test_a_real_error_is_shown_whole():
    error = ["Traceback (most recent call last):", '  File "train.py", line 3, in <module>',
             "    main()", "ValueError: bad config"]
    assert shown(error) == error


def test_keyboard_interrupt_of_a_worker_with_other_ranks_between():
    lines = ["[default1]:Traceback (most recent call last):", '[default1]:  File "t.py", line 9, in <module>',
             "[default0]:step 3", "[default1]:    time.sleep(1)", "[default1]:KeyboardInterrupt"]
    assert shown(lines) == ["[default0]:step 3",
                            "[default1]:KeyboardInterrupt (its 4-line traceback is in output.log)"]


@pytest.mark.parametrize("lines", [
    ["Traceback (most recent call last):", '  File "t.py", line 1'],  # the output ended inside it
    ["Traceback (most recent call last):"] + ["  frame"] * (MAX_HELD + 5) + [LAST],  # too long to hold
])
def test_what_cannot_be_folded_is_shown_as_it_was(lines):
    assert shown(lines) == lines


def test_a_signal_guardrun_did_not_send_is_shown_whole():
    """Before guardrun stops the attempt (someone else's SIGTERM, the job's own ^C) nothing is folded."""
    lines = SIGTERM.splitlines()
    assert shown(lines, armed=False) == lines

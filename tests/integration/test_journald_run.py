"""A real `guardrun run` whose output is "the journal": a file whose device:inode is in
JOURNAL_STREAM, as systemd sets it. `journalctl -p warning` would show guardrun's lines
about the failed attempt and the giving up, and nothing of the job's; without
JOURNAL_STREAM (or naming another stream) nothing is prefixed."""
from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from helpers_unattended import GUARDRUN

JOB = textwrap.dedent("""\
    print("<3>step 1 loss 0.5", flush=True)  # a job line that looks like a priority
    raise RuntimeError("the job broke")
    """)


def run(tmp_path: Path, journal_stream) -> list[str]:
    """guardrun's stdout and stderr (one file, as under systemd), JOURNAL_STREAM set from it."""
    (tmp_path / "job.py").write_text(JOB)
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        launcher: python
        script: {tmp_path / "job.py"}
        monitor: {{interval: 0.1}}
        ladder: []
        restarts: {{max: 0}}
        """))
    out = tmp_path / "journal"
    with open(out, "w") as stream:
        env = dict(os.environ, JOURNAL_STREAM=journal_stream(os.fstat(stream.fileno())))
        done = subprocess.run([GUARDRUN, "run", str(recipe)], stdin=subprocess.DEVNULL, stdout=stream,
                              stderr=stream, env=env, timeout=60)
    assert done.returncode == 1, out.read_text()
    return out.read_text().splitlines()


def priority(line: str) -> int:
    return int(re.match(r"<(\d)>", line).group(1))


def test_journalctl_p_warning_shows_what_went_wrong(tmp_path, state_dir):
    lines = run(tmp_path, lambda info: f"{info.st_dev}:{info.st_ino}")
    assert all(re.match(r"<[346]>", line) for line in lines), lines
    warnings = [line for line in lines if priority(line) <= 4]
    assert warnings and all(line.startswith(("<4>guardrun: ", "<3>guardrun: ")) for line in warnings), lines
    assert re.match(r"<4>guardrun: attempt 1 ended: \w+", warnings[0]), warnings
    assert warnings[-1].startswith("<3>guardrun: giving up: "), warnings
    assert "<6>[1] <3>step 1 loss 0.5" in lines  # the job's line: info, its "<3>" is text
    assert "<6>[1] RuntimeError: the job broke" in lines


@pytest.mark.parametrize("journal_stream", [lambda info: "", lambda info: f"{info.st_dev}:{info.st_ino + 1}"],
                         ids=["no journal", "another stream"])
def test_nothing_is_prefixed_off_the_journal(tmp_path, state_dir, journal_stream):
    lines = run(tmp_path, journal_stream)
    assert "[1] <3>step 1 loss 0.5" in lines
    assert any(line.startswith("guardrun: giving up: ") for line in lines), lines
    assert not [line for line in lines if re.match(r"<\d>guardrun", line)], lines

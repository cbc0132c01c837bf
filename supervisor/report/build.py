"""`guardrun report JOB`: the job's memory over time as a PNG, and an HTML page with the same
plot, the attempts table and the root causes, both from the journal alone (a finished,
running or dead job alike).

matplotlib is an optional extra: without it the command says how to get it and exits 2.
A damaged journal is reported around: its unusable lines and events are left out and one
warning line says how many; a journal that cannot be read at all (a directory, EIO) is an
error (exit 2). Written into the job's state folder (the default), both files are 0600.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..record.journal import Skipped, job_dir, read_events
from ..record.statedir import FILE_MODE, warn
from .data import build
from .html import page

# guardrun is not on a package index: `pip install 'guardrun[plot]'` finds nothing. The
# interpreter guardrun runs under is the one that needs matplotlib.
INSTALL_HINT = (f"{sys.executable} -m pip install 'matplotlib>=3.7' "
                "(the plot extra: in a guardrun clone, pip install '.[plot]')")


class ReportError(Exception):
    """The report cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class Written:
    png: Path
    html: Path
    attempts: int
    samples: int


def make(job: str, out: Path | None = None, say: Callable[[str], None] = warn) -> Written:
    """Write `<out>/<job>-memory.png` and `<out>/<job>-report.html` (out: the job's state folder)."""
    try:
        from .plot import render
    except ImportError as err:
        raise ReportError(f"guardrun report draws with matplotlib, which is not installed ({err}): "
                          f"{INSTALL_HINT}") from None
    directory = job_dir(job)
    path = directory / "events.jsonl"
    if not os.path.lexists(path):
        raise ReportError(f"no journal for job {job!r}: {path} does not exist "
                          "(guardrun list shows the jobs it knows)")
    skipped = Skipped(path)
    report = build(job, read_events(directory, skipped))
    if skipped.unreadable:
        raise ReportError(f"cannot read {path}: {skipped.unreadable}")
    left_out = skipped.count + len(report.skipped)
    if left_out:
        first = skipped.first or report.skipped[0]
        say(f"{path}: skipped {left_out} unusable line{'s' * (left_out > 1)} ({first}); "
            "the report shows the rest")
    if not report.attempts:
        raise ReportError(f"job {job!r} has no attempt in its journal's last run: nothing to report")
    private = out is None
    out = Path(out) if out is not None else directory
    out.mkdir(parents=True, exist_ok=True)
    png = render(report, out / f"{job}-memory.png")
    html = out / f"{job}-report.html"
    html.write_text(page(report, png.read_bytes()))
    if private:  # in the state dir, like everything there
        for written in (png, html):
            os.chmod(written, FILE_MODE)
    return Written(png, html, len(report.attempts), sum(not p.held for p in report.host))

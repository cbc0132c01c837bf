"""`guardrun report JOB`: the job's memory over time as a PNG, and an HTML page with the same
plot, the attempts table and the root causes, both from the journal alone (a finished,
running or dead job alike).

matplotlib is an optional extra: without it the command says how to get it and exits 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .journal import job_dir, read_events
from .reportdata import build
from .reporthtml import page

INSTALL_HINT = "pip install 'guardrun[plot]'"


class ReportError(Exception):
    """The report cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class Written:
    png: Path
    html: Path
    attempts: int
    samples: int


def make(job: str, out: Path | None = None) -> Written:
    """Write `<out>/<job>-memory.png` and `<out>/<job>-report.html` (out: the job's state folder)."""
    try:
        from .reportplot import render
    except ImportError as err:
        raise ReportError(f"guardrun report draws with matplotlib, which is not installed ({err}): "
                          f"{INSTALL_HINT}") from None
    directory = job_dir(job)
    if not (directory / "events.jsonl").is_file():
        raise ReportError(f"no journal for job {job!r}: {directory / 'events.jsonl'} does not exist "
                          "(guardrun list shows the jobs it knows)")
    report = build(job, read_events(directory))
    if not report.attempts:
        raise ReportError(f"job {job!r} has no attempt in its journal's last run: nothing to report")
    out = Path(out) if out is not None else directory
    out.mkdir(parents=True, exist_ok=True)
    png = render(report, out / f"{job}-memory.png")
    html = out / f"{job}-report.html"
    html.write_text(page(report, png.read_bytes()))
    return Written(png, html, len(report.attempts), sum(not p.held for p in report.host))

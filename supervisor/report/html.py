"""The report's HTML page: the plot (embedded, so the page is one file to send), the attempts
table and each failure's root cause. Pure: a Report and the PNG's bytes in, text out;
everything from the journal is escaped."""
from __future__ import annotations

import base64
from html import escape

from guardrun.launcher.units import format_bytes, format_duration

from ..diagnose.rootcause import root_cause_lines
from .data import Report, describe_limit

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #212121; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #cfd8dc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eceff1; }
td.fail { color: #c62828; font-weight: bold; }
td.ok { color: #2e7d32; font-weight: bold; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #cfd8dc; }
"""


def page(report: Report, png: bytes) -> str:
    image = base64.b64encode(png).decode("ascii")
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>guardrun report: {escape(report.job)}</title><style>{STYLE}</style></head><body>",
        f"<h1>guardrun report: {escape(report.job)}</h1>",
        f"<p>Run started {escape(report.started_at)} · {len(report.attempts)} attempt(s) · "
        f"<b>{escape(report.outcome)}</b> · host_memory limit {describe_limit(report.tree_limit)} · "
        f"min_available {describe_limit(report.min_available)}"
        + (f" · {report.earlier_runs} earlier run(s) in the journal not shown" if report.earlier_runs else "")
        + "</p>",
        f'<img alt="memory over time" src="data:image/png;base64,{image}">',
        "<h2>Attempts</h2>", attempts_table(report), "<h2>Root causes</h2>", root_causes(report),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def attempts_table(report: Report) -> str:
    head = ("<tr><th>#</th><th>rung</th><th>configuration</th><th>resumed from</th><th>started</th>"
            "<th>took</th><th>peak memory</th><th>ended</th><th>exit</th><th>evidence</th></tr>")
    rows = []
    for a in report.attempts:
        took = format_duration(a.end - a.start) if a.end is not None else "?"
        ended = a.kind or "no end recorded"
        css = "ok" if a.kind == "success" else "fail"
        rows.append(
            f"<tr><td>{a.number}</td><td>{a.rung}</td><td>{escape(a.config())}"
            + "".join(f"<br><i>{escape(note)}</i>" for note in a.notes)
            + f"</td><td>{escape(_tail(a.resume_from) or 'the start')}</td><td>+{a.start:.1f} s</td>"
            f"<td>{took}</td><td>{format_bytes(a.peak) if a.peak else '-'}</td>"
            f'<td class="{css}">{escape(ended)}</td><td>{"" if a.exit_code is None else a.exit_code}</td>'
            f"<td>{escape(a.evidence[:300])}</td></tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def root_causes(report: Report) -> str:
    blocks = []
    for a in report.attempts:
        if not a.root_cause:
            continue
        lines = root_cause_lines(a.root_cause)
        blocks.append(f"<h3>attempt {a.number}</h3><pre>{escape(chr(10).join(lines))}</pre>")
    return "".join(blocks) or "<p>No attempt failed with a root cause on record.</p>"


def _tail(path: str | None) -> str:
    """`…/out/checkpoint-6`: the checkpoint's folder and its parent, enough to recognise it."""
    if not path:
        return ""
    parts = path.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else path

"""The report's plot: the job's memory over time against its limits (a PNG, via matplotlib).

One panel for the job's host memory against `limits.host_memory`, one for MemAvailable against
`limits.min_available`, one per GPU against `limits.vram`. Every panel shows the attempts'
boundaries; the top one labels them, the rung changes and the failure causes.
matplotlib is optional (the plot extra, `pip install '.[plot]'` in a clone): this module is imported only by
`guardrun report`, and only its figure API is used (no pyplot, no global state, no display).
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .data import Report

GIB = float(1 << 30)
FAILURE, LIMIT, RUNG = "#c62828", "#d84315", "#1565c0"


def render(report: Report, path: Path) -> Path:
    panels = [("job memory (GiB)", _host_tree), ("MemAvailable (GiB)", _host_available)]
    panels += [(f"gpu{index} used (GiB)", _gpu(index)) for index in report.gpus]
    figure = Figure(figsize=(11, 2.6 * len(panels) + 0.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, draw) in zip(axes, panels):
        draw(ax, report)
        ax.set_ylabel(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        _boundaries(ax, report)
    _labels(axes[0], report)
    axes[-1].set_xlabel("seconds since the run started")
    outcome = report.outcome if len(report.outcome) <= 70 else report.outcome[:69] + "…"
    axes[0].set_title(f"guardrun report: {report.job} · {len(report.attempts)} attempt(s) · {outcome}",
                      loc="left", fontsize=11)
    for ax in axes:
        ax.set_xlim(0, max(report.end, 1.0))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    figure.savefig(path, format="png")
    return path


def _by_attempt(points):
    runs: dict[int, list] = {}
    for point in points:
        runs.setdefault(point.attempt, []).append(point)
    return runs.items()


def _steps(ax, points, value, color: str, label: str) -> None:
    """One step line per attempt (no line across a relaunch), labelled once."""
    for number, run in _by_attempt(points):
        ax.plot([p.t for p in run], [value(p) / GIB for p in run], drawstyle="steps-post",
                color=color, label=label if number == points[0].attempt else None)


def _host_tree(ax, report: Report) -> None:
    _steps(ax, report.host, lambda p: p.tree, "#2e7d32", "job tree (PSS / anon RSS)")
    if report.tree_limit:
        ax.axhline(report.tree_limit / GIB, color=LIMIT, linestyle="--", label="host_memory limit")
    breaches = [m for m in report.markers if m.kind == "breach"]
    for marker in breaches:  # where guardrun stopped the job: on the sample that crossed
        before = [p.tree for p in report.host if p.t <= marker.t]
        level = before[-1] if before else report.tree_limit or 0
        ax.plot([marker.t], [level / GIB], marker="x", color=FAILURE, markersize=9,
                label="limit breached" if marker is breaches[0] else None)


def _host_available(ax, report: Report) -> None:
    _steps(ax, report.host, lambda p: p.available, "#616161", "MemAvailable")
    if report.min_available:
        ax.axhline(report.min_available / GIB, color=LIMIT, linestyle="--", label="min_available")


def _gpu(index: int):
    def draw(ax, report: Report) -> None:
        points = report.gpus[index]
        _steps(ax, points, lambda p: p.used, "#6a1b9a", f"gpu{index} used")
        for number, run in _by_attempt(points):
            limits = [p for p in run if p.limit]
            if limits:
                ax.plot([p.t for p in limits], [p.limit / GIB for p in limits], color=LIMIT,
                        linestyle="--", label="vram limit" if number == points[0].attempt else None)
        ax.axhline(points[-1].total / GIB, color="#9e9e9e", linestyle=":", label="total")
    return draw


def _boundaries(ax, report: Report) -> None:
    for attempt in report.attempts:
        ax.axvline(attempt.start, color="#424242", linewidth=0.8)
        if attempt.end is not None:
            ax.axvspan(attempt.start, attempt.end, color="#eceff1" if attempt.number % 2 else "#ffffff",
                       zorder=0)
    for marker in report.markers:
        if marker.kind == "failure":
            ax.axvline(marker.t, color=FAILURE, linewidth=1.2, linestyle="-.")


def _labels(ax, report: Report) -> None:
    """Attempt numbers, rung changes and failure kinds along the top panel."""
    top = ax.get_ylim()[1]
    for attempt in report.attempts:
        ax.annotate(f"attempt {attempt.number} · rung {attempt.rung}", (attempt.start, top),
                    xytext=(3, -12), textcoords="offset points", fontsize=8, color="#424242")
    for marker in report.markers:
        if marker.kind == "breach":
            continue  # drawn as an x on the job memory line
        color, offset = (FAILURE, -24) if marker.kind == "failure" else (RUNG, -36)
        ax.annotate(marker.label, (marker.t, top), xytext=(3, offset), textcoords="offset points",
                    fontsize=8, color=color)

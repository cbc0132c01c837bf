"""`make bench`: run the five benchmarks and write bench/RESULTS.md from what they print.

Each benchmark runs as its own process; its progress (stderr) goes to the terminal, its
tables (stdout) go to the terminal and into RESULTS.md, under the machine and the versions
they were measured with. Nothing in RESULTS.md is typed by hand: rerun `make bench`.
With --only, just those sections are replaced; the others are kept as they were, each
saying the commit it was measured at.
Exits non-zero when a benchmark did (one exits 1 when a run left a process behind).

    python bench/results.py [--out bench/RESULTS.md] [--only sampling,checkpoints,overhead,scenarios,faults]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# (script, whether its stdout is markdown; sampling.py prints a plain-text table)
BENCHMARKS = (("sampling", False), ("checkpoints", True), ("overhead", True), ("scenarios", True),
              ("faults", True))
PACKAGES = ("guardrun", "torch", "transformers", "peft", "accelerate", "deepspeed", "psutil", "matplotlib")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        # RESULTS.md itself does not count: an earlier section's run has just rewritten it
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/RESULTS.md"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


def machine() -> list[str]:
    rows = [("date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")),
            ("CPU", cpu_model()), ("cores", str(os.cpu_count())), ("RAM", f"{mem_total_gib():.1f} GiB"),
            ("kernel", platform.release()), ("load average at start", f"{os.getloadavg()[0]:.2f}"),
            ("Python", platform.python_version()), ("guardrun commit", git_commit())]
    rows += [(name, version(name)) for name in PACKAGES]
    return ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows)]


def run(name: str) -> tuple[int, float, str]:
    """Run bench/<name>.py; its stdout is echoed and returned, its stderr goes straight through."""
    started = time.monotonic()
    popen = subprocess.Popen([sys.executable, str(BENCH / f"{name}.py")], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    out = []
    for line in popen.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        out.append(line)
    return popen.wait(), time.monotonic() - started, "".join(out)


def kept_sections(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """An earlier RESULTS.md split for --only: its header (machine and versions, which stay
    true of the sections kept) and its `## bench/NAME.py` sections, by NAME."""
    header: list[str] = []
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines() if path.exists() else ():
        if line.startswith("## bench/"):
            current = line[len("## bench/"):-len(".py")]
            sections[current] = []
        if current:
            sections[current].append(line)
        else:
            header.append(line)
    for lines in sections.values():
        while lines and not lines[-1]:
            lines.pop()
        lines.append("")
    return header, sections


def machine_line() -> str:
    """The machine in one line, for a section measured apart from the table above it."""
    load = os.getloadavg()[0]
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {os.cpu_count()} cores, "
            f"load average at start {load:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    parser.add_argument("--only", default="",
                        help="comma-separated: sampling, checkpoints, overhead, scenarios, faults")
    args = parser.parse_args()
    chosen = [(n, md) for n, md in BENCHMARKS if not args.only or n in args.only.split(",")]
    parts = ["# Benchmark results", "",
             "Written by `make bench` (bench/results.py) from what the benchmarks printed; never edited "
             "by hand. Rerun `make bench` to refresh.", "", "## Machine and versions", "", *machine(), ""]
    failed, fresh = [], {}
    for name, markdown in chosen:
        print(f"== bench/{name}.py", file=sys.stderr, flush=True)
        where = f"at commit {git_commit()}" + (f", {machine_line()}" if args.only else "")
        code, took, out = run(name)
        if code != 0:
            failed.append(name)
        fresh[name] = [f"## bench/{name}.py", "", f"exit {code}, {took:.0f} s, {where}.", ""]
        fresh[name] += [out.rstrip(), ""] if markdown else ["```", out.rstrip(), "```", ""]
    # --only: the file is read now, not at the start, so that a section another run wrote
    # meanwhile is kept; its machine table describes the sections kept, each fresh one says its own.
    header, kept = kept_sections(Path(args.out)) if args.only else ([], {})
    if header:
        parts = header
    for name, _ in BENCHMARKS:
        parts += fresh.get(name) or kept.get(name) or []
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

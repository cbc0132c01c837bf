"""guardrun's own faults (issue 12): does a fault of the supervisor's surroundings cost the job?

Each case is one entry of CASES: a name and a function that runs it and returns a row
(what was measured, the target, met or not). Add a case by appending to CASES.

- stall: guardrun's stdout is a pipe nobody reads (`guardrun run r.yaml | sleep 600`;
  odd runs: a pty whose master is never read). tests/jobs/chatty_grow.py prints ~1.6 MB/s
  and grows past a 200 MiB limit; its own CLOCK_MONOTONIC marks give crossing -> SIGTERM.
  Target: the median of RUNS runs under two intervals.
- leftovers: a `guardrun run` SIGKILLed mid-attempt, then run again. tests/jobs/leftover_job.py
  in each of its shapes (processes that fork on SIGTERM; a worker with an empty environment
  in the launcher's session; one behind a rank in sessions of their own), none obeying
  SIGTERM. Target: none of the old processes alive when the next attempt starts, none after.
- disk full: the state dir on a 4 MiB tmpfs (needs root to mount; the row says so
  otherwise); tests/jobs/flood.py prints ~11 MB and exits 0. Target: the job finished,
  guardrun exited 0, the journal says logging was suspended.

    python bench/faults.py [--runs 10] [--interval 0.25]

Prints a markdown table on stdout, progress on stderr; exits 1 if a target was missed or
a run left a process behind. About a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tagged import TAG, leftovers, new_tag

from guardrun.supervisor.watch.leftovers import start_time

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "tests" / "jobs"
GUARDRUN = str(Path(sys.executable).parent / "guardrun")


@dataclass(frozen=True)
class Row:
    case: str
    measured: str
    target: str
    met: bool
    left: tuple[int, ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Path, argparse.Namespace], Row]


def progress(text: str) -> None:
    print(f"faults: {text}", file=sys.stderr, flush=True)


def write_recipe(folder: Path, body: str) -> Path:
    path = folder / "job.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def marks(path: Path) -> dict[str, float]:
    text = path.read_text() if path.exists() else ""
    return {" ".join(line.split()[:-1]): float(line.split()[-1]) for line in text.splitlines()}


def stall_once(folder: Path, interval: float, pty: bool) -> tuple[float | None, tuple[int, ...]]:
    """Crossing -> SIGTERM (seconds) with guardrun's stdout never read; None if not stopped."""
    folder.mkdir(parents=True)
    mark_file = folder / "marks"
    path = write_recipe(folder, f"""
        name: stall
        launcher: python
        script: {JOBS / 'chatty_grow.py'}
        args: [--marks, "{mark_file}", --mark-mb, "200", --max-mb, "600", --chunk-mb, "8"]
        limits: {{host_memory: 200MiB, hard_memory: "off"}}  # guardrun's own stop, not the kernel's
        monitor: {{interval: {interval}}}
        stop_grace: 5s
        ladder: []
        """)
    reader, writer = os.openpty() if pty else os.pipe()
    tag = new_tag()
    env = dict(os.environ, GUARDRUN_STATE_DIR=str(folder / "state"), **{TAG: tag})
    try:
        guard = subprocess.Popen([GUARDRUN, "run", str(path)], stdin=subprocess.DEVNULL, stdout=writer,
                                 stderr=subprocess.DEVNULL, env=env)
        os.close(writer)
        try:
            guard.wait(timeout=60)
        except subprocess.TimeoutExpired:
            guard.kill()
            guard.wait()
    finally:
        os.close(reader)
    seen = marks(mark_file)
    left = tuple(leftovers(tag))
    if "crossed 200" not in seen or "term" not in seen:
        return None, left
    return seen["term"] - seen["crossed 200"], left


def stall(work: Path, args: argparse.Namespace) -> Row:
    took, left = [], []
    for run in range(args.runs):
        latency, run_left = stall_once(work / f"stall-{run}", args.interval, pty=run % 2 == 1)
        left += run_left
        progress(f"stall run {run + 1}/{args.runs} ({'pty' if run % 2 else 'pipe'}): "
                 + (f"{latency:.3f}s" if latency is not None else "not stopped"))
        took.append(latency if latency is not None else float("inf"))
    median = statistics.median(took)
    measured = (f"median {median:.3f}s, max {max(took):.3f}s over {args.runs} runs "
                f"(interval {args.interval:g}s; stdout unread: pipe and pty alternately)")
    return Row("stall: crossing → SIGTERM", measured, f"median < {2 * args.interval:g}s (two intervals)",
               median < 2 * args.interval, tuple(left))


def mount_tmpfs(mount: Path) -> str | None:
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")


def disk_full(work: Path, args: argparse.Namespace) -> Row:
    mount = work / "small"
    why = mount_tmpfs(mount)
    target = "job finished, exit 0, journal says suspended"
    if why is not None:
        return Row("disk full (4 MiB tmpfs)", f"not run: cannot mount a tmpfs ({why})", target, True)
    tag = new_tag()
    try:
        path = write_recipe(work, f"""
            name: full
            launcher: python
            script: {JOBS / 'flood.py'}
            args: ["300000"]
            ladder: []
            """)
        env = dict(os.environ, GUARDRUN_STATE_DIR=str(mount / "state"), **{TAG: tag})
        done = subprocess.run([GUARDRUN, "run", str(path)], capture_output=True, text=True, env=env, timeout=120)
        journal = mount / "state" / "full" / "events.jsonl"
        events = [json.loads(line) for line in journal.read_text().splitlines() if line.startswith("{")]
        names = [event.get("event") for event in events]
        ended = [event for event in events if event.get("event") == "guardrun.attempt.ended"]
        finished = bool(ended) and ended[0].get("exit_code") == 0
        suspended = "guardrun.logging.suspended" in names
        traceback = "Traceback" in done.stdout + done.stderr
    finally:
        left = tuple(leftovers(tag))
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    measured = (f"job finished: {'yes' if finished else 'no'}, guardrun exit {done.returncode}, "
                f"journal says suspended: {'yes' if suspended else 'no'}"
                + (", a traceback was printed" if traceback else ""))
    progress(f"disk full: {measured}")
    return Row("disk full (4 MiB tmpfs, ~11 MB printed)", measured, target,
               finished and done.returncode == 0 and suspended and not traceback, left)


LEFTOVER_SHAPES = ("fork-on-term", "bare-worker", "rank-bare-worker")


def recorded(folder: Path) -> list[tuple[int, int]]:
    """(pid, start time) of every process leftover_job.py recorded: its workers carry no tag."""
    out = []
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.name.isdigit():
            pid, start = path.read_text().split()
            out.append((int(pid), int(start)))
    return out


def alive(processes: list[tuple[int, int]]) -> list[int]:
    return [pid for pid, start in processes if start_time(pid) == start]


def kill_recorded(processes: list[tuple[int, int]]) -> None:
    """SIGKILL what the cleanup missed, through a pidfd checked against the start time."""
    for pid, start in processes:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if pid in alive([(pid, start)]):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)


def leftover_once(folder: Path, shape: str) -> tuple[int, int, float | None, tuple[int, ...]]:
    """(alive as the next attempt started, alive after it, the cleanup's seconds, tagged left)."""
    pids = folder / "pids"
    pids.mkdir(parents=True)
    tag = new_tag()
    env = dict(os.environ, GUARDRUN_STATE_DIR=str(folder / "state"), **{TAG: tag})
    recipe = """
        name: left
        launcher: python
        script: {script}
        args: {args}
        monitor: {{interval: 0.1}}
        stop_grace: 1s
        ladder: []
        restarts: {{max: 0}}
        """
    job = JOBS / "leftover_job.py"
    first = write_recipe(folder, recipe.format(script=job, args=json.dumps(["--shape", shape, "--pids", str(pids)])))
    out = folder / "alive-at-start.json"
    try:
        guard = subprocess.Popen([GUARDRUN, "run", str(first)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 30
        while not (pids / "ready").exists() and time.monotonic() < deadline and guard.poll() is None:
            time.sleep(0.02)  # no event to wait on for a file another process creates
        guard.kill()
        guard.wait()
        second = write_recipe(folder, recipe.format(
            script=job, args=json.dumps(["--role", "probe", "--pids", str(pids), "--out", str(out)])))
        subprocess.run([GUARDRUN, "run", str(second)], capture_output=True, env=env, timeout=120)
        at_start = len(json.loads(out.read_text())) if out.exists() else -1
        journal = folder / "state" / "left" / "events.jsonl"
        stopped = [json.loads(line) for line in journal.read_text().splitlines()
                   if '"guardrun.leftovers.stopped"' in line]
        took = stopped[0].get("took") if stopped else None
        after = len(alive(recorded(pids)))
    finally:
        kill_recorded(recorded(pids))
    return at_start, after, took, tuple(leftovers(tag))


def left_behind(work: Path, args: argparse.Namespace) -> Row:
    parts, met, left = [], True, []
    for shape in LEFTOVER_SHAPES:
        at_start, after, took, run_left = leftover_once(work / shape, shape)
        left += run_left
        met = met and at_start == 0 and after == 0
        cleanup = f"{took:.2f}s" if took is not None else "no cleanup recorded"
        parts.append(f"{shape}: {at_start} alive at the next start, {after} after, cleanup {cleanup}")
        progress(f"leftovers {parts[-1]}")
    return Row("leftovers of a SIGKILLed supervisor (stop_grace 1s)", "; ".join(parts),
               "0 alive when the next attempt starts, 0 after", met, tuple(left))


CASES: list[Case] = [Case("stall", stall), Case("leftovers", left_behind), Case("disk full", disk_full)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--only", help="comma-separated case names")
    args = parser.parse_args()
    chosen = [case for case in CASES if not args.only or case.name in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="guardrun-faults-") as tmp:
        for index, case in enumerate(chosen):
            progress(f"case {case.name}")
            rows.append(case.run(Path(tmp) / str(index), args))
    print("| case | measured | target | met |\n|---|---|---|---|")
    for row in rows:
        left = f" (left behind: {', '.join(map(str, row.left))})" if row.left else ""
        print(f"| {row.case} | {row.measured}{left} | {row.target} | {'yes' if row.met else 'NO'} |")
    return 0 if all(row.met and not row.left for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

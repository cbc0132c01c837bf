"""guardrun's own cost and speed, measured on real `guardrun run` processes.

1. Watching: `guardrun run` supervises a 64-process tree (a parent that forks 63 children,
   each holding a few touched MiB) for WINDOW seconds at monitor intervals 0.5 s and 0.1 s.
   guardrun's CPU (utime+stime of its process, all threads, from /proc/PID/stat; its job's
   time is not in it) over the window, scaled to one hour, and its peak RSS (VmHWM). Beside
   it, over the same window and tree, the alternative: a minimal psutil loop at the same
   interval (children(recursive) + memory_info, what a supervisor written with psutil does).
2. Reaction: 20 runs of tests/jobs/grow.py under a 200 MiB limit per interval. The job prints
   CLOCK_MONOTONIC when its memory crosses 200 MiB and when SIGTERM arrives: breach -> signal.
   Its pace (--every 0.02 to 0.06 s per 16 MiB) changes from run to run, so that the crossing
   falls at a different point of guardrun's sampling interval each time.
   breach -> tree gone = that, plus the stop's duration from the journal (attempt.stopped took).
3. Relaunch: a job that prints its start time and exits 1 at once, restarted 20 times.
   guardrun: from the journal, attempt.stopped (the tree is gone) -> the next attempt.spawned
   (Popen returned: the launch is exec'd); and from the job's side, exit -> next start, beside
   torchrun --max-restarts 20 restarting the same job (its monitor interval is 0.1 s).

Exits 1 if any process is left behind by a run.

    python bench/overhead.py [--window 30] [--runs 20]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from guardrun.supervisor.report.data import seconds
from sampling import JOB
from tagged import TAG, leftovers, new_tag, run_tagged

REPO = Path(__file__).resolve().parent.parent
GUARDRUN = str(Path(sys.executable).parent / "guardrun")
TICK = os.sysconf("SC_CLK_TCK")
TARGETS = {"cpu": 1.0, "rss": 60.0, "signal": 2.0, "relaunch": 1.0}

# The watched job is bench/sampling.py's fork tree (JOB), released by EOF on a FIFO the bench closes.

# The relaunched job: its start and its exit on CLOCK_MONOTONIC (shared by all processes).
QUICK_FAIL = r"""
import sys, time
print(f"start {time.monotonic():.6f}", flush=True)
print(f"exit {time.monotonic():.6f}", flush=True)
sys.exit(1)
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (this process, all threads)


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


PSUTIL_LOOP = r"""
import sys, time, psutil
root, interval = psutil.Process(int(sys.argv[1])), float(sys.argv[2])
while True:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    time.sleep(interval)
"""


@dataclass(frozen=True)
class Watching:
    interval: float
    processes: int
    cpu_pct: float         # guardrun, % of one core
    rss_mib: float         # guardrun's VmHWM
    psutil_pct: float      # the psutil loop, % of one core
    left: tuple[int, ...]


def recipe(work: Path, body: str) -> Path:
    path = work / "job.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def measure_watching(work: Path, interval: float, window: float, children: int, mb: int) -> Watching:
    work.mkdir(parents=True)
    (work / "tree.py").write_text(JOB)
    fifo = work / "release"
    os.mkfifo(fifo)
    path = recipe(work, f"""
        name: watch
        launcher: python
        script: tree.py
        args: ["{children}", "{mb}", "{fifo}"]
        limits: {{host_memory: 16GiB}}
        monitor: {{interval: {interval}}}
        restarts: {{max: 0}}
        stop_grace: 5s
        """)
    tag = new_tag()
    env = dict(os.environ, GUARDRUN_STATE_DIR=str(work / "state"), **{TAG: tag})
    guard = subprocess.Popen([GUARDRUN, "run", str(path)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        for line in guard.stdout:  # blocks until the job says it is ready (or guardrun ends)
            if line.rstrip().endswith("ready"):
                break
        else:
            raise SystemExit(f"overhead: the watched tree did not start (guardrun exit {guard.wait()})")
        job = next(c for c in psutil.Process(guard.pid).children() if c.pid != guard.pid)
        processes = 1 + len(job.children(recursive=True))
        loop = subprocess.Popen([sys.executable, "-c", PSUTIL_LOOP, str(job.pid), str(interval)], env=env)
        before, loop_before, started = cpu_seconds(guard.pid), cpu_seconds(loop.pid), time.monotonic()
        time.sleep(window)  # the measurement window itself
        spent, loop_spent = cpu_seconds(guard.pid) - before, cpu_seconds(loop.pid) - loop_before
        elapsed = time.monotonic() - started
        rss = peak_rss_mib(guard.pid)
        loop.kill()
        loop.wait()
        with open(fifo, "w"):
            pass  # EOF for the job's parent: it exits 0, its children follow
        guard.stdout.read()
        code = guard.wait(timeout=60)
    finally:
        if guard.poll() is None:
            guard.kill()
    if code != 0:
        raise SystemExit(f"overhead: guardrun exited {code} for the watched tree")
    return Watching(interval, processes, 100 * spent / elapsed, rss, 100 * loop_spent / elapsed,
                    tuple(leftovers(tag)))


def measure_reaction(work: Path, interval: float, runs: int) -> tuple[list[float], list[float], list[int]]:
    """Breach -> SIGTERM and breach -> tree gone, seconds, one per run; and any leftovers."""
    to_signal, to_gone, left = [], [], []
    for run in range(runs):
        folder = work / f"{interval}-{run}"
        folder.mkdir(parents=True)
        path = recipe(folder, f"""
            name: grow
            launcher: python
            script: {REPO / 'tests' / 'jobs' / 'grow.py'}
            args: [--mark-mb, "200", --chunk-mb, "16", --every, "{0.02 + 0.04 * run / max(1, runs - 1):.4f}"]
            limits: {{host_memory: 200MiB, hard_memory: "off"}}  # guardrun's own reaction: no kernel backstop
            monitor: {{interval: {interval}}}
            stop_grace: 5s
            ladder: []
            """)
        ran = run_tagged([GUARDRUN, "run", str(path)], dict(os.environ, GUARDRUN_STATE_DIR=str(folder / "state")),
                         timeout=60)
        left += ran.left
        crossed = re.search(r"crossed 200 MiB at ([\d.]+)", ran.output)
        termed = re.search(r"got SIGTERM at ([\d.]+)", ran.output)
        stopped = [e for e in events(folder / "state" / "grow") if e["event"] == "guardrun.attempt.stopped"]
        if not (crossed and termed and stopped):
            raise SystemExit(f"overhead: reaction run {run} at {interval}s did not breach and stop:\n"
                             + ran.output[-2000:])
        signal_after = float(termed.group(1)) - float(crossed.group(1))
        to_signal.append(signal_after)
        to_gone.append(signal_after + stopped[0]["took"])
    return to_signal, to_gone, left


def events(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]


def gaps(output: str) -> list[float]:
    """Job exit -> next job start, seconds, from the jobs' own CLOCK_MONOTONIC prints."""
    marks = [(kind, float(t)) for kind, t in re.findall(r"\b(start|exit) ([\d.]+)", output)]
    return [nxt[1] - cur[1] for cur, nxt in zip(marks, marks[1:]) if cur[0] == "exit" and nxt[0] == "start"]


def measure_relaunch(work: Path, restarts: int) -> tuple[dict[str, list[float]], list[int]]:
    work.mkdir(parents=True)
    script = work / "quick_fail.py"
    script.write_text(QUICK_FAIL)
    # startup_window 0: a quick identical failure is not taken for a crash loop (it is one, but
    # the point here is the restart path); backoff 0: no deliberate wait between attempts.
    path = recipe(work, f"""
        name: relaunch
        launcher: python
        script: {script}
        monitor: {{interval: 0.1}}
        restarts: {{max: {restarts}, backoff: [0s, 0s]}}
        startup_window: 0s
        stop_grace: 5s
        """)
    guard = run_tagged([GUARDRUN, "run", str(path)], dict(os.environ, GUARDRUN_STATE_DIR=str(work / "state")),
                       timeout=300)
    evts = events(work / "state" / "relaunch")
    stopped = [e for e in evts if e["event"] == "guardrun.attempt.stopped"]
    spawned = [e for e in evts if e["event"] == "guardrun.attempt.spawned"]
    journal = [seconds(nxt["ts"]) - seconds(cur["ts"]) for cur, nxt in zip(stopped, spawned[1:])]
    torch = run_tagged([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                        "--nproc-per-node", "1", "--max-restarts", str(restarts), str(script)],
                       dict(os.environ), timeout=300)
    return ({"guardrun: tree gone -> next exec (journal)": journal,
             "guardrun: job exit -> next job start": gaps(guard.output),
             "torchrun: job exit -> next job start": gaps(torch.output)}, [*guard.left, *torch.left])


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report_watching(work: Path, args) -> list[int]:
    print(f"Watching a {args.children + 1}-process tree ({args.mb} MiB touched per child) for "
          f"{args.window:g} s per interval; the psutil loop watches the same tree over the same window.\n")
    print("| interval | processes | guardrun CPU % of a core | CPU s per hour | guardrun peak RSS MiB "
          "| psutil loop CPU % | guardrun / psutil | target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    left: list[int] = []
    for interval in (0.5, 0.1):
        print(f"overhead: watching at {interval}s ...", file=sys.stderr, flush=True)
        w = measure_watching(work / f"watch-{interval}", interval, args.window, args.children, args.mb)
        left += w.left
        rss_ok = f"RSS < {TARGETS['rss']:g} MB: {verdict(w.rss_mib * 1.048576 < TARGETS['rss'])}"
        target = (f"CPU < {TARGETS['cpu']:g}%: {verdict(w.cpu_pct < TARGETS['cpu'])}; {rss_ok}"
                  if interval == 0.1 else rss_ok)
        ratio = f"{w.cpu_pct / w.psutil_pct:.2f}" if w.psutil_pct > 0 else "-"
        print(f"| {interval:g} s | {w.processes} | {w.cpu_pct:.2f} | {w.cpu_pct * 36:.0f} | {w.rss_mib:.1f} "
              f"| {w.psutil_pct:.2f} | {ratio} | {target} |")
    return left


def report_reaction(work: Path, runs: int) -> list[int]:
    print(f"\nReaction to a host_memory breach ({runs} runs per interval, tests/jobs/grow.py, limit 200 MiB, "
          "hard_memory off: guardrun's own stop, not the kernel's):\n")
    print("| interval | breach → SIGTERM median ms | worst ms | worst in intervals | breach → tree gone median ms "
          "| worst ms | target: signal < 2 intervals |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    left: list[int] = []
    for interval in (0.5, 0.1):
        print(f"overhead: {runs} breaches at {interval}s ...", file=sys.stderr, flush=True)
        sig, gone, lost = measure_reaction(work / "react", interval, runs)
        left += lost
        print(f"| {interval:g} s | {statistics.median(sig) * 1000:.0f} | {max(sig) * 1000:.0f} "
              f"| {max(sig) / interval:.2f} | {statistics.median(gone) * 1000:.0f} | {max(gone) * 1000:.0f} "
              f"| {verdict(max(sig) < 2 * interval)} |")
    return left


def report_relaunch(work: Path, runs: int) -> list[int]:
    print(f"\nRelaunch overhead ({runs} restarts of a job that exits 1 at once; no checkpoint conversion):\n")
    print("| measured | median ms | worst ms | n | target: < 1 s |")
    print("|---|---:|---:|---:|---|")
    print("overhead: relaunches ...", file=sys.stderr, flush=True)
    relaunch, left = measure_relaunch(work / "relaunch", runs)
    for name, values in relaunch.items():
        if not values:
            print(f"| {name} | - | - | 0 | - |")
            continue
        target = verdict(max(values) < TARGETS["relaunch"]) if name.startswith("guardrun: tree") else ""
        print(f"| {name} | {statistics.median(values) * 1000:.0f} | {max(values) * 1000:.0f} | {len(values)} "
              f"| {target} |")
    g, t = relaunch["guardrun: job exit -> next job start"], relaunch["torchrun: job exit -> next job start"]
    if g and t:
        print(f"\nJob exit → next job start, guardrun / torchrun (medians): "
              f"{statistics.median(g) / statistics.median(t):.2f}")
    return left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=30.0, help="seconds of watching per interval")
    parser.add_argument("--runs", type=int, default=20, help="breaches per interval, relaunches")
    parser.add_argument("--children", type=int, default=63)
    parser.add_argument("--mb", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="guardrun-overhead-"))
    print("### guardrun's overhead\n")
    left = report_watching(work, args) + report_reaction(work, args.runs) + report_relaunch(work, args.runs)
    shutil.rmtree(work, ignore_errors=True)
    if left:
        print(f"\n**Processes left behind: {left}**")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())

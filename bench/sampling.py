"""What one memory sample of a 64-process job tree costs: guardrun's walk against psutil,
and (where the job can have a memory cgroup of its own, v1 or a delegated v2) the one
memory.stat read of that cgroup (issue 17: target <= 20 us a sample, flat in the number
of processes).

Starts a real tree (a Python parent that forks 63 children, each holding a few MB of
touched memory and blocking on a pipe), times N samples of ProcfsMemory.sample_tree
and of the naive psutil walk interleaved (so both see the same machine load), then the
kill path's walk and the PSS confirmation, and tears the tree down with stop_tree.

The cgroup read's cost is flat in the tree but not in what ran before it: interleaved with
the /proc walks, or after any pause (the monitor sleeps its interval between samples;
other work evicts the kernel's and the interpreter's caches meanwhile), it costs several
times what it does back to back. The second table shows both at 64 and 512 processes,
beside the /proc sample after the same pause, which pays the same cold start plus its
walk. Exits 1 if any process of a tree is left.

    python bench/sampling.py [--samples 500] [--children 63] [--mb 4] [--sizes 64,512] [--pause 0.02]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

from guardrun.supervisor.watch import cgroupfs, cgroupv1, cgroupv2, proc
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.watch.containment import CgroupMemory
from guardrun.supervisor.watch.memory import ProcfsMemory

# The job: fork, touch memory, block on a pipe nobody writes; print 'ready' once every
# child has touched its memory (so all samples see the same figures).
JOB = r"""
import os, sys
children, mb = int(sys.argv[1]), int(sys.argv[2])
fifo = sys.argv[3] if len(sys.argv) > 3 else None  # bench/overhead.py: EOF on it ends the job
block_r, block_w = os.pipe()
ready_r, ready_w = os.pipe()
for _ in range(children):
    if os.fork() == 0:
        os.close(block_w)
        held = bytearray(mb << 20)
        for i in range(0, len(held), 4096):
            held[i] = 1
        os.write(ready_w, b"x")
        os.read(block_r, 1)
        os._exit(0)
got = 0
while got < children:
    got += len(os.read(ready_r, children - got))
print("ready", flush=True)
if fifo:
    with open(fifo) as handle:
        handle.read()
else:
    os.read(block_r, 1)
"""


def naive_psutil(root_pid: int) -> int:
    """What a supervisor written with psutil does: children(recursive) + memory_info each."""
    root = psutil.Process(root_pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_info()
        except psutil.NoSuchProcess:
            continue
        total += info.rss - info.shared
    return total


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - started) / 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_tree(children: int, mb: int, group: cgroupfs.Group | None = None) -> subprocess.Popen:
    join = os.fsencode(group.path / "cgroup.procs") if group is not None else None
    popen = proc.spawn([sys.executable, "-c", JOB, str(children), str(mb)], env=None, cwd=None,
                       stdout=subprocess.PIPE, stderr=None, join=join)
    ready = popen.stdout.readline().strip() == b"ready"
    popen.stdout.close()  # the job prints nothing else
    if not ready:
        raise SystemExit("the benchmark tree did not start")
    return popen


def measure(root: int, samples: int, group: cgroupfs.Group | None = None) -> dict[str, list[float]]:
    # sample_tree skips re-reading the children while no pid was handed out on the
    # machine ("known"); "walk" forces the full walk it does after any fork.
    methods = {
        "sample, known": ProcfsMemory().sample_tree,
        "sample, walk": lambda pid, walker=ProcfsMemory(): walker.sample_tree(pid, reuse=False),
        "naive psutil": naive_psutil,
        "sample, scan": lambda pid, scanner=ProcfsMemory(children_files=False): scanner.sample_tree(pid, reuse=False),
        "kill-path walk": proc.ProcTree().walk,
    }
    if group is not None:
        methods["cgroup stat"] = CgroupMemory(group, ProcfsMemory()).sample_tree
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(samples):  # interleaved: a load spike hits every method alike
        for name, method in methods.items():
            times[name].append(timed(lambda: method(root)))
    if group is not None:  # back to back: what a sample costs when no /proc walk ran between
        cgroup_memory = CgroupMemory(group, ProcfsMemory())
        times["cgroup, alone"] = [timed(lambda: cgroup_memory.sample_tree(root)) for _ in range(samples)]
    memory = ProcfsMemory()
    pids = memory.sample_tree(root).pids
    times["pss confirm"] = [timed(lambda: memory.pss(pids)) for _ in range(max(10, samples // 10))]
    return times


def print_table(times: dict[str, list[float]]) -> None:
    naive = statistics.median(times["naive psutil"])
    print(f"{'method':<16} | {'median µs':>10} | {'p90 µs':>10} | {'ratio vs naive':>14} | n")
    print(f"{'-' * 16}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 14}-+----")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<16} | {median:>10.0f} | {percentile(values, 0.9):>10.0f} | "
              f"{naive / median:>13.2f}x | {len(values)}")


def by_size(job: cgroupfs.JobCgroup, sizes: list[int], mb: int, samples: int, pause: float) -> bool:
    """The cgroup read back to back and after `pause`, beside a bare syscall and the /proc
    sample after the same pause (interleaved, so a load spike hits all three), on a fresh
    tree of each size in an attempt cgroup of its own; False if a tree left a process."""
    print(f"\ncgroup sample by tree size, median / p90 µs ({samples} samples each; 'after': "
          f"after a {pause * 1000:g} ms sleep; getppid(): what any syscall costs then)")
    heads = ("processes", "cgroup, back to back", "cgroup, after", "getppid(), after", "/proc known, after")
    print(" | ".join(f"{head:>{len(head)}}" for head in heads))
    print("-+-".join("-" * len(head) for head in heads))
    clean = True
    for number, size in enumerate(sizes, start=2):
        group = job.attempt(number, None)
        popen = start_tree(size - 1, mb, group)
        try:
            cgroup_memory, walker = CgroupMemory(group, ProcfsMemory()), ProcfsMemory()
            walker.sample_tree(popen.pid)
            rows = [[timed(lambda: cgroup_memory.sample_tree(popen.pid)) for _ in range(samples)], [], [], []]
            calls = (lambda: cgroup_memory.sample_tree(popen.pid), os.getppid, lambda: walker.sample_tree(popen.pid))
            for _ in range(samples):
                for row, call in zip(rows[1:], calls):
                    time.sleep(pause)
                    row.append(timed(call))
        finally:
            report = proc.stop_tree(popen, proc.ProcTree(), grace=2.0, clock=MonotonicClock(), group=group.procs)
            clean = clean and not report.left and group.remove() == []
        cells = [str(size)] + [f"{statistics.median(row):.0f} / {percentile(row, 0.9):.0f}" for row in rows]
        print(" | ".join(f"{cell:>{len(head)}}" for cell, head in zip(cells, heads)))
    return clean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--children", type=int, default=63)
    parser.add_argument("--mb", type=int, default=4)
    parser.add_argument("--sizes", default="64,512", help="tree sizes of the cgroup table")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds of sleep before each 'after' sample")
    args = parser.parse_args()
    memory, tree = ProcfsMemory(), proc.ProcTree()
    job, group = _cgroup()
    popen = start_tree(args.children, args.mb, group)
    try:
        sample = memory.sample_tree(popen.pid)
        idents = tree.walk(popen.pid).values
        mode = "task/TID/children" if tree.has_children_files(popen.pid) else "scan of /proc/*/stat"
        print(f"kernel {os.uname().release}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, "
              f"{len(os.listdir('/proc'))} /proc entries, walk by {mode}")
        scanned = ProcfsMemory(children_files=False).sample_tree(popen.pid)
        print(f"tree: {len(sample.pids)} processes, fast anon {sample.anon >> 20} MiB "
              f"(scan: {len(scanned.pids)}, {scanned.anon >> 20} MiB), naive psutil anon "
              f"{naive_psutil(popen.pid) >> 20} MiB, pss {memory.pss(sample.pids) >> 20} MiB")
        if group is not None:
            keys = " + ".join(key.decode().strip() for key in group.STAT_KEYS)
            print(f"cgroup {group.path}: {len(group.procs())} members, {keys} {group.anon() >> 20} MiB")
        times = measure(popen.pid, args.samples, group)
    finally:
        report = proc.stop_tree(popen, tree, grace=2.0, clock=MonotonicClock(),
                                group=group.procs if group is not None else None)
    print_table(times)
    alive = [ident.pid for ident in idents if tree.alive(ident)]
    print(f"teardown: {report.took * 1000:.0f} ms, killed {len(report.killed)}, "
          f"left {list(report.left)}, alive after {alive}")
    clean = not report.left and not alive
    if job is not None:
        try:
            clean = by_size(job, [int(size) for size in args.sizes.split(",")], 1,
                            max(50, args.samples // 5), args.pause) and clean
        finally:
            job.remove()
            shutil.rmtree(job.job_dir)
    return 0 if clean else 1


def _cgroup() -> tuple[cgroupfs.JobCgroup | None, cgroupfs.Group | None]:
    """A job cgroup for the tree where this machine allows one (v1, else a delegated v2);
    says why not otherwise."""
    reasons = []
    for version in (cgroupv1, cgroupv2):
        why = version.why_not()
        if not why:
            job_dir = Path(tempfile.mkdtemp(prefix="bench-sampling-"))
            try:
                job = version.JobCgroup.create("bench-sampling", job_dir)
            except cgroupfs.CgroupError as err:
                shutil.rmtree(job_dir)
                why = str(err)
            else:
                return job, job.attempt(1, None)
        reasons.append(why)
    print(f"no cgroup rows: {'; '.join(reasons)}")
    return None, None


if __name__ == "__main__":
    sys.exit(main())

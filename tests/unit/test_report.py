"""`guardrun report JOB`: the memory plot and the HTML page, rendered from recorded journals.

tests/data/journals/ holds real journals written by `guardrun run` during bench/scenarios.py
(torch 2.13 CPU, 2 ranks of the HF Trainer test script):
  host_oom/    2 ranks pass the 2 GiB host_memory limit at step 6; guardrun stops the job,
               relaunches on 1 rank with accumulation 2 from checkpoint-3, and it finishes.
  user_error/  rank 1 alone cannot open its data shard; guardrun names rank 1 and stops.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

from guardrun.supervisor.record.journal import read_events
from guardrun.supervisor.run.memtrail import MemoryTrail
from guardrun.supervisor.run.policy import MemoryReading
from guardrun.supervisor.report.data import build

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
JOURNALS = REPO / "tests" / "data" / "journals"
GIB = 1 << 30


def recorded(job: str) -> list[dict]:
    return list(read_events(JOURNALS / job))


def state_with(tmp_path: Path, *jobs: str) -> Path:
    root = tmp_path / "state"
    for job in jobs:
        shutil.copytree(JOURNALS / job, root / job)
    return root


def report(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, GUARDRUN_STATE_DIR=str(root))
    return subprocess.run([GUARDRUN, "report", *args], capture_output=True, text=True, env=env, timeout=120)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_journal_gives_attempts_limits_and_markers():
    rep = build("host_oom", recorded("host_oom"))
    assert rep.outcome == "finished" and rep.tree_limit == 2 * GIB
    assert [(a.number, a.rung, a.ranks, a.grad_accum, a.global_batch, a.kind) for a in rep.attempts] == [
        (1, 0, 2, 1, 8, "host_oom"), (2, 1, 1, 2, 8, "success")]
    assert rep.attempts[1].resume_from.endswith("/out/checkpoint-3")
    # the samples follow the ramp up to the breach, then start over in attempt 2
    first = [p for p in rep.host if p.attempt == 1]
    assert len(first) >= 10 and first[-1].tree >= 2 * GIB > first[0].tree
    assert max(p.tree for p in rep.host if p.attempt == 2) < 2 * GIB
    kinds = {(m.kind, m.label) for m in rep.markers}
    assert ("failure", "host_oom") in kinds and ("breach", "host_oom") in kinds
    assert ("rung", "rung 1: ranks 2→1, accum 1→2") in kinds
    breach = next(m for m in rep.markers if m.kind == "breach")
    assert rep.attempts[0].start < breach.t < rep.attempts[0].end < rep.attempts[1].start


def test_report_writes_the_plot_and_the_page(tmp_path):
    root = state_with(tmp_path, "host_oom")
    result = report(root, "host_oom", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    png, html = tmp_path / "out" / "host_oom-memory.png", tmp_path / "out" / "host_oom-report.html"
    assert result.stdout.splitlines()[1:] == [f"plot:   {png}", f"report: {html}"]
    assert result.stdout.startswith("host_oom: 2 attempt(s), ")
    width, height = png_size(png)
    assert width >= 800 and height >= 400
    page = html.read_text()
    assert '<img alt="memory over time" src="data:image/png;base64,' in page
    assert "<b>finished</b> · host_memory limit 2.0 GiB" in page
    # the attempts table: configuration, resume point, how each ended and why
    assert "<td>2 rank(s), 4 × 1 × 2 = 8, lr 0.0002</td><td>the start</td>" in page
    assert "<td>1 rank(s), 4 × 2 × 1 = 8, lr 0.0002</td><td>out/checkpoint-3</td>" in page
    assert '<td class="fail">host_oom</td>' in page and '<td class="ok">success</td>' in page
    assert "reached the limit 2.0 GiB</td>" in page
    assert "<h3>attempt 1</h3><pre>root cause: host_oom (from guardrun)" in page


def test_default_output_goes_to_the_jobs_state_folder(tmp_path):
    root = state_with(tmp_path, "user_error")
    result = report(root, "user_error")
    assert result.returncode == 0, result.stderr
    page = (root / "user_error" / "user_error-report.html").read_text()
    assert png_size(root / "user_error" / "user_error-memory.png")[0] >= 800
    assert "<b>gave up: user error, not retried: " in page
    # the root cause names the rank that failed and its frames, escaped
    assert "root cause: user_error on rank 1 (from output)" in page
    assert "FileNotFoundError: [Errno 2] No such file or directory: &#x27;" in page
    assert "shard-1.jsonl" in page and "in main\n      with open(" in page


def test_gpu_panels_come_from_the_samples_with_their_limits(tmp_path):
    events = recorded("host_oom")
    for event in events:  # as recorded on a GPU machine: [index, used, total, limit]
        if event["event"] == "guardrun.memory.sample":
            event["gpus"] = [[0, 30 * GIB, 80 * GIB, 76 * GIB], [1, 2 * GIB, 80 * GIB, 76 * GIB]]
    rep = build("gpu", events)
    assert sorted(rep.gpus) == [0, 1]
    assert {(p.used, p.total, p.limit) for p in rep.gpus[0]} == {(30 * GIB, 80 * GIB, 76 * GIB)}
    pytest.importorskip("matplotlib")
    from guardrun.supervisor.report.plot import render
    without = png_size(render(build("cpu", recorded("host_oom")), tmp_path / "cpu.png"))
    with_gpus = png_size(render(rep, tmp_path / "gpu.png"))
    assert with_gpus[1] > without[1]  # two more panels


def test_without_matplotlib_it_says_what_to_install(tmp_path):
    root = state_with(tmp_path, "host_oom")
    hide = tmp_path / "hide"
    (hide / "matplotlib").mkdir(parents=True)
    (hide / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(os.environ, PYTHONPATH=str(hide))
    result = report(root, "host_oom", env=env)
    assert result.returncode == 2
    assert f"{sys.executable} -m pip install 'matplotlib>=3.7' (the plot extra: in a guardrun clone, " \
           "pip install '.[plot]')" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (root / "host_oom" / "host_oom-memory.png").exists()


def test_unknown_job_is_a_usage_error(tmp_path):
    result = report(tmp_path / "state", "nope")
    assert result.returncode == 2
    assert result.stderr.startswith("guardrun: error: no journal for job 'nope': ")


def test_memory_samples_are_sparse_but_keep_the_ramp_and_the_breach():
    emitted: list[dict] = []
    trail = MemoryTrail(1, lambda event, **fields: emitted.append(fields), every=5.0)
    steady = MemoryReading(tree_fast=1 * GIB, available=20 * GIB)
    for tick in range(50):  # 5 s at 0.1 s: only the first reading
        trail.record(tick * 0.1, steady)
    assert len(emitted) == 1
    trail.record(5.0, steady)  # 5 s later: one more, for the timeline
    trail.record(5.1, MemoryReading(tree_fast=int(1.06 * GIB), available=20 * GIB))  # +6%
    trail.record(5.2, MemoryReading(tree_fast=int(1.07 * GIB), available=20 * GIB))  # +1%: no
    trail.record(5.3, MemoryReading(tree_fast=int(1.08 * GIB), available=20 * GIB, tree_pss=GIB), force=True)
    assert [e["tree"] for e in emitted] == [GIB, GIB, int(1.06 * GIB), int(1.08 * GIB)]
    assert emitted[-1] == {"attempt": 1, "tree": int(1.08 * GIB), "pss": GIB, "available": 20 * GIB}

"""A real `guardrun run` writing node_exporter's textfile (issue 15, "Prometheus").

The file is read back with prometheus-client's text parser, as a scrape would read it,
while the job runs and after it ended, and its values are judged against the journal:
the state, the attempt and rung, the restarts by kind after an attempt stopped over its
memory limit, and that limit.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import wait_until
from helpers_unattended import gate_recipe, guardrun, running, supervisor_pid
from test_supervise import GUARDRUN, JOBS, events, named, run_guardrun, write_recipe

PLAIN = str(JOBS / "plain_train.py")
LIMIT = 200 << 20


def samples(path: Path, job: str = "job") -> dict[tuple, float]:
    """(sample name, labels without job) -> value; job="<job>" on every sample."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert labels.pop("job") == job, sample
            found[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return found


def state_of(found: dict) -> str:
    [state] = [dict(labels)["state"] for (name, labels), value in found.items()
               if name == "guardrun_job_state" and value == 1]
    return state


def growing_then_fitting(tmp_path: Path, metrics: str) -> Path:
    """Attempt 1 grows past limits.host_memory in ~5 s and is stopped (host_oom); the rung
    for it stops the growth, and attempt 2 finishes."""
    return write_recipe(tmp_path, f"""
        launcher: python
        python: {sys.executable}
        script: {PLAIN}
        args: {{steps: 60, grow_mb: 8, step_seconds: 0.2, record: {tmp_path / "record.jsonl"}}}
        limits: {{host_memory: {LIMIT}}}
        trainer: plain
        ladder:
          - {{on: [host_oom], args: {{grow_mb: 0, steps: 20, step_seconds: 0.02}}}}
        restarts: {{max: 2, backoff: [0.1s, 0.1s]}}
        monitor: {{interval: 0.1}}
        stop_grace: 5s
        {metrics}
        """)


def test_the_textfile_follows_the_run_and_matches_the_journal(tmp_path, state_dir):
    prom = tmp_path / "textfile" / "guardrun_job.prom"
    prom.parent.mkdir()
    recipe = growing_then_fitting(tmp_path, f"metrics: {{textfile: {prom.parent}}}")
    with subprocess.Popen([GUARDRUN, "run", str(recipe)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        # while attempt 1 runs (state.json, and so the file, is rewritten every 2 s): the
        # state, its memory under the limit, MemAvailable
        running = wait_until(lambda: prom.is_file() and state_of(found := samples(prom)) == "running"
                             and found.get(("guardrun_job_attempt", ())) == 1
                             and ("guardrun_job_memory_bytes", ()) in found and found,
                             timeout=60, what="a textfile of attempt 1 running, with its memory")
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert 0 < running[("guardrun_job_memory_bytes", ())] <= LIMIT * 1.5
    assert running[("guardrun_host_memory_available_bytes", ())] > 0

    journal = events(state_dir)
    final = samples(prom)
    assert state_of(final) == named(journal, "state.changed")[-1]["state"] == "finished"
    started = named(journal, "attempt.started")
    assert final[("guardrun_job_attempt", ())] == started[-1]["attempt"] == 2
    assert final[("guardrun_job_rung", ())] == started[-1]["rung"] == 1
    assert final[("guardrun_job_memory_limit_bytes", ())] == named(journal, "run.started")[0]["tree_limit"] == LIMIT
    assert [e["kind"] for e in named(journal, "attempt.ended")] == ["host_oom", "success"]
    restarts = {dict(labels)["kind"]: value for (name, labels), value in final.items()
                if name == "guardrun_restarts_total"}
    assert restarts["host_oom"] == 1 and sum(restarts.values()) == 1
    step = final[("guardrun_job_step", ())]  # the last look's: it may miss the last few steps
    assert 1 <= step <= 20 and final[("guardrun_job_loss", ())] == round(1 / step, 3)
    assert final[("guardrun_job_state_change_timestamp_seconds", ())] <= prom.stat().st_mtime
    assert sorted(p.name for p in prom.parent.iterdir()) == ["guardrun_job.prom"]


def test_metrics_dir_flag_wins_and_a_missing_dir_costs_the_metrics_only(tmp_path, state_dir):
    recipe = growing_then_fitting(tmp_path, f"metrics: {{textfile: {tmp_path / 'from-recipe'}}}")
    (tmp_path / "from-recipe").mkdir()
    missing = tmp_path / "not-made"
    result = run_guardrun(recipe, "--metrics-dir", str(missing))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert list((tmp_path / "from-recipe").iterdir()) == []
    assert not missing.exists()
    said = [line for line in out.splitlines() if "metrics:" in line]
    assert said == [f"guardrun: metrics: cannot write {missing}/guardrun_job.prom: No such file or directory; "
                    "the job goes on, retrying at every state write"]
    assert [e["path"] for e in named(events(state_dir), "metrics.failed")] == [f"{missing}/guardrun_job.prom"]


def test_start_gives_metrics_dir_to_its_detached_run(tmp_path, state_dir):
    """`start --metrics-dir` (a relative path: the caller's folder) reaches the daemon."""
    recipe, go = gate_recipe(tmp_path)
    result = guardrun("start", str(recipe), "--metrics-dir", "prom", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    pid = supervisor_pid(result.stdout)
    prom = tmp_path / "prom" / "guardrun_gate.prom"
    (tmp_path / "prom").mkdir()  # after the start: a missing dir is retried until it exists
    try:
        wait_until(lambda: prom.is_file() and "guardrun_job_state{job=\"gate\",state=\"running\"} 1" in prom.read_text(),
                   timeout=30, what="the detached run's textfile, running")
    finally:
        go.touch()
    wait_until(lambda: not running(pid), timeout=30, what="the job to finish")
    assert state_of(samples(prom, "gate")) == "finished"
    assert "metrics: " in (state_dir / "gate" / "supervisor.log").read_text()

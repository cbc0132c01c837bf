"""Acceptance: `launcher: accelerate` runs a real HF Trainer through a real `accelerate launch` (CPU).

Two processes cross the host limit; guardrun stops the tree, takes the gpus rung (the
`--num_processes` it passes goes 2 -> 1, accumulation doubles to keep the global batch),
resumes from the newest complete checkpoint and the run finishes. Judged as in
test_hf_trainer.py (whose helpers this reuses): guardrun's exit code and journal, the
trainer's own start line, and trainer_state.json.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap

import pytest
from conftest import wait_until
from test_hf_trainer import (GUARDRUN, assert_one_rank_resumed_and_finished, host_oom_at_two_ranks, journal,
                             recipe, run)

pytestmark = pytest.mark.slow


def test_accelerate_host_oom_drops_to_one_process_and_resumes(tmp_path, state_dir):
    # Measured here (PSS, accelerate 1.15, torch 2.13 CPU, no ballast): 2 processes 828 MiB
    # (agent 175 + 2 x 327), 1 process 540 MiB (accelerate 186 + the script 354). A ballast
    # ramping to 400 MiB per process by step 8 takes 2 processes over 1.2 GiB near step 5;
    # one process peaks near 940 MiB.
    result = run(host_oom_at_two_ranks(tmp_path, "accelerate"), timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert_one_rank_resumed_and_finished(state_dir, tmp_path / "out")
    spawned = [e["argv"] for e in journal(state_dir, "attempt.spawned")]
    assert [argv[argv.index("--num_processes") + 1] for argv in spawned] == ["2", "1"]
    assert "--multi_gpu" in spawned[0] and "--multi_gpu" not in spawned[1]
    # accelerate's torchrun path kept each rank's output in the attempt's folder
    ranks = list((state_dir / "job" / "attempts" / "1" / "ranks").glob("*/attempt_0/*/stdout.log"))
    assert len(ranks) == 2, ranks


#: Says which signal ended it, so a rank that got its own SIGTERM (not only a SIGKILL) shows.
GRACEFUL = textwrap.dedent("""
    import os, signal, sys, time
    def stop(signum, frame):
        print(f"rank {os.environ.get('LOCAL_RANK', '-')} got SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print(f"rank {os.environ.get('LOCAL_RANK', '-')} working", flush=True)
    while True:
        time.sleep(60)
    """)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_stop_reaches_every_process_of_accelerate_launch(tmp_path, state_dir, processes):
    """One process: accelerate's simple launcher dies of the SIGTERM without forwarding it
    (measured, accelerate 1.15), so guardrun signals the script itself. Two: accelerate's
    torch.distributed.run forwards it to each rank. Either way each one gets a SIGTERM in
    the grace and nothing is left (conftest checks every process of the test)."""
    (tmp_path / "graceful.py").write_text(GRACEFUL)
    path = recipe(tmp_path, f"""
        launcher: accelerate
        script: graceful.py
        gpus: {processes}
        monitor: {{interval: 0.1}}
        stop_grace: 20s
        """)
    log = tmp_path / "guardrun.out"
    with log.open("w") as sink:
        guard = subprocess.Popen([GUARDRUN, "run", str(path)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_for_output(log, lambda out: out.count(" working") == processes, f"{processes} process(es) working")
        guard.send_signal(signal.SIGTERM)
        assert guard.wait(60) == 130, log.read_text()[-3000:]
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
    out = log.read_text()
    assert out.count("got SIGTERM") == processes, out[-3000:]
    [stopped] = journal(state_dir, "attempt.stopped")
    assert stopped["was_running"] and (stopped["killed"], stopped["left"]) == ([], []), stopped


@pytest.mark.parametrize("processes", [1, 2])
def test_a_process_the_kernel_kills_is_host_oom(tmp_path, state_dir, processes):
    """What the kernel's OOM killer does (SIGKILL) to one process under accelerate. One process:
    accelerate's simple launcher ends with `CalledProcessError: ... died with <Signals.SIGKILL: 9>`
    and exit 1; two: its torch.distributed.run reports `exitcode : -9`."""
    (tmp_path / "graceful.py").write_text(GRACEFUL.replace('working"', 'working pid={os.getpid()}"'))
    path = recipe(tmp_path, f"""
        launcher: accelerate
        script: graceful.py
        gpus: {processes}
        monitor: {{interval: 0.1}}
        stop_grace: 10s
        restarts: {{max: 0}}
        """)
    log = tmp_path / "guardrun.out"
    with log.open("w") as sink:
        guard = subprocess.Popen([GUARDRUN, "run", str(path)], stdout=sink, stderr=subprocess.STDOUT)
    try:
        pids = _wait_for_output(log, lambda out: re.findall(r"working pid=(\d+)", out), "a process working")
        os.kill(int(pids[0]), signal.SIGKILL)
        assert guard.wait(60) == 1, log.read_text()[-3000:]
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
    [ended] = journal(state_dir, "attempt.ended")
    assert ended["kind"] == "host_oom", (ended, log.read_text()[-3000:])


def _wait_for_output(log, seen, what: str):
    """wait_until on guardrun's output so far; on a timeout the assertion shows that output."""
    try:
        return wait_until(lambda: seen(log.read_text()), timeout=120, interval=0.1, what=what)
    except AssertionError as err:
        raise AssertionError(f"{err}; guardrun said:\n{log.read_text()[-3000:]}") from None

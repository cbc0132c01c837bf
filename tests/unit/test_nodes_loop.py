"""The loop as node 0 of a two-node job (issue 16), on fakes: the other node is the files a
test writes into the shared folder, at the times the FakeClock reaches. What a user sees:
the exit code, the console, the journal, the shared folder; nothing left running."""
from __future__ import annotations

import io
import json
import os
import sys

from guardrun.launcher.units import GIB
from guardrun.supervisor.core.signals import Requests
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.record.journal import Journal
from guardrun.supervisor.record.shared import SharedDir
from guardrun.supervisor.run import loop
from guardrun.supervisor.run.loop import Supervisor

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from fakes import FakeClock, FakeProcesses, Launch, ScriptedMemory  # noqa: E402
from recipes_util import make_recipe  # noqa: E402

RECIPE = """
launcher: torchrun
script: train.py
containment: off
monitor: {interval: 1s}
stop_grace: 10s
restarts: {max: 3, backoff: [0s, 0s]}
batch: {per_device: 8}
limits: {host_memory: 4GiB}
ladder:
  - {on: [host_oom], batch: halve}
"""
TWO_NODES = "nodes: {count: 2, rendezvous: 127.0.0.1:29400, shared_dir: shared, timeout: 60s}\n"
CALM = (1 * GIB, 1 * GIB, 32 * GIB)
DIGEST = "d1"  # the recipe's digest, as every node's facts carry it
NODE_1 = {"pid": 4242, "host": "node01", "exit_code": 1, "digest": DIGEST}


def supervise(tmp_path, monkeypatch, *launches, clock, extra=TWO_NODES, requests=None):
    monkeypatch.setenv("GUARDRUN_NODE_RANK", "0")
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.setattr(loop, "recipe_digest", lambda recipe: DIGEST)
    recipe = make_recipe(tmp_path, RECIPE + extra)
    processes = FakeProcesses(clock, *launches)
    out = io.StringIO()
    journal = Journal(recipe.name)
    code = Supervisor(recipe, journal, Console(out, tty=False, plain_every=0), clock,
                      memory=ScriptedMemory(total=64 * GIB, readings=[CALM]), gpus=None,
                      requests=requests or Requests(), processes=processes).run()
    journal.close()
    events = [json.loads(line) for line in (journal.dir / "events.jsonl").read_text().splitlines()]
    return code, out.getvalue(), events, processes, recipe


def peer(tmp_path, recipe_name="job") -> SharedDir:
    return SharedDir(tmp_path / "shared", recipe_name, 2, 1)


def named(events, name):
    return [e for e in events if e["event"] == f"guardrun.{name}"]


def test_a_host_oom_on_node_1_stops_node_0_and_both_take_the_host_oom_rung(tmp_path, state_dir, monkeypatch):
    clock = FakeClock()
    one = peer(tmp_path)

    def node_1_breaches():  # node 1's guardrun stopped its part at the memory limit
        one.put(1, "stop", {"kind": "host_oom", "evidence": "tree 6 GiB over 4 GiB"})
        one.put(1, "node", {**NODE_1, "kind": "host_oom", "evidence": "tree 6 GiB over 4 GiB"})
        one.put(2, "node", {**NODE_1, "kind": "success", "exit_code": 0})
    clock.at(3, node_1_breaches)
    code, console, events, processes, _ = supervise(
        tmp_path, monkeypatch, Launch(runs_for=30.0), Launch(runs_for=2.0), clock=clock)
    assert code == 0, console
    assert "attempt 1 ended: peer_stopped (node 1 stopped its part (host_oom: tree 6 GiB over 4 GiB))" in console
    assert "the job's attempt 1 ended: host_oom (node 1: host_oom: tree 6 GiB over 4 GiB)" in console
    assert "attempt 2: rung 1, 1 rank(s), micro-batch 4" in console  # the host_oom rung, on node 0 too
    assert [e["kind"] for e in named(events, "node.settled")] == ["host_oom", "success"]
    assert [e["job_attempt"] for e in named(events, "node.attempt")] == [1, 2]
    # node 0 stopped for node 1's sake: it told nobody; it wrote its own word on both attempts
    assert one.ranks(1, "stop") == {1}
    assert json.loads((tmp_path / "shared/job/attempt-1/node-0.json").read_text())["kind"] == "peer_stopped"
    assert json.loads((tmp_path / "shared/job/attempt-2/node-0.json").read_text())["kind"] == "success"
    assert all(p.returncode is not None for p in processes.spawned)  # nothing left running


def test_a_node_whose_word_never_comes_is_lost_the_run_gives_up_and_leaves_nothing(tmp_path, state_dir, monkeypatch):
    clock = FakeClock()
    code, console, events, processes, _ = supervise(
        tmp_path, monkeypatch, Launch(output="RuntimeError: Connection closed by peer\n", code=1, runs_for=2.0),
        clock=clock)
    assert code == 1
    assert ("giving up: node(s) 1 lost: no word from them in the shared folder within 60s (their guardrun "
            f"died, or cannot write {tmp_path / 'shared' / 'job'}); the job is not run on without them") in console
    assert 60 <= clock.now - 1000 < 70  # within nodes.timeout, not later
    assert len(processes.spawned) == 1 and processes.spawned[0].returncode is not None
    # node 0's launcher exited with an error: the other node was told at once
    assert peer(tmp_path).ranks(1, "stop") == {0} and peer(tmp_path).ranks(1, "lost") == {0}
    [stopping] = named(events, "node.stopping")
    assert stopping["kind"] == "exited" and stopping["error"] is None


def test_a_stop_asked_for_tells_the_others_and_does_not_wait_for_them(tmp_path, state_dir, monkeypatch):
    clock = FakeClock()
    requests = Requests()
    clock.at(3, lambda: setattr(requests, "stop", True))
    code, console, events, processes, _ = supervise(tmp_path, monkeypatch, Launch(runs_for=30.0),
                                                   clock=clock, requests=requests)
    assert code == 130
    assert clock.now - 1000 < 20  # the stop grace at most, never the 60 s barrier
    facts = json.loads((tmp_path / "shared/job/attempt-1/node-0.json").read_text())
    assert facts["kind"] == "interrupted"
    assert peer(tmp_path).ranks(1, "stop") == {0}


def test_an_unwritable_shared_folder_is_a_usage_error_before_anything_runs(tmp_path, state_dir, monkeypatch, capsys):
    (tmp_path / "shared").write_text("a file where the folder should be")
    code, console, _, processes, _ = supervise(tmp_path, monkeypatch, clock=FakeClock())
    assert code == 2 and processes.spawned == []
    assert f"nodes.shared_dir {tmp_path / 'shared'} cannot be written from this node" in capsys.readouterr().err


def test_on_one_machine_no_shared_folder_is_touched(tmp_path, state_dir, monkeypatch):
    code, console, events, _, recipe = supervise(
        tmp_path, monkeypatch, Launch(runs_for=2.0), clock=FakeClock(),
        extra="checkpoints: {dir: out}\n")
    assert code == 0
    assert not (tmp_path / "out" / ".guardrun").exists() and not (tmp_path / "shared").exists()
    assert not [e for e in events if e["event"].startswith("guardrun.node.")]


def test_a_rerun_continues_the_jobs_merged_history_from_the_shared_folder(tmp_path, state_dir, monkeypatch):
    """Node 0's own journal is new (or says peer_stopped); the shared folder says attempt 1
    was node 1's host OOM: the rerun starts at the host_oom rung, as the job's attempt 2."""
    one, zero = peer(tmp_path), SharedDir(tmp_path / "shared", "job", 2, 0)
    zero.put(1, "node", {"kind": "peer_stopped", "evidence": "node 1 stopped its part", "digest": DIGEST})
    one.put(1, "node", {**NODE_1, "kind": "host_oom", "evidence": "tree 6 GiB"})
    one.put(2, "node", {**NODE_1, "kind": "success", "exit_code": 0})
    code, console, events, _, _ = supervise(tmp_path, monkeypatch, Launch(runs_for=2.0), clock=FakeClock())
    assert code == 0, console
    assert "attempt 1: rung 1, 1 rank(s), micro-batch 4" in console
    assert [e["job_attempt"] for e in named(events, "node.attempt")] == [2]


def test_a_stop_asked_for_on_node_1_stops_node_0_too(tmp_path, state_dir, monkeypatch):
    clock = FakeClock()
    one = peer(tmp_path)

    def node_1_is_stopped():  # Ctrl-C on node 1: its guardrun writes its word and leaves
        one.put(1, "stop", {"kind": "interrupted", "evidence": "stopped on request"})
        one.put(1, "node", {**NODE_1, "kind": "interrupted", "evidence": "stopped on request"})
    clock.at(3, node_1_is_stopped)
    code, console, events, processes, _ = supervise(tmp_path, monkeypatch, Launch(runs_for=30.0), clock=clock)
    assert code == 130
    assert "the job's attempt 1 ended: interrupted (node 1: interrupted: stopped on request)" in console
    assert clock.now - 1000 < 20 and len(processes.spawned) == 1  # stopped at once, not relaunched
    assert processes.spawned[0].returncode is not None


def test_a_launcher_that_errs_in_teardown_after_the_target_tells_no_node_to_stop(tmp_path, state_dir, monkeypatch):
    """gloo's teardown can end torchrun with 1 after the trainer finished: that part reached
    its target, so no stop mark goes out (the other node would end its part peer_stopped
    and the job would relaunch a finished run)."""
    clock = FakeClock()
    one = peer(tmp_path)
    clock.at(1, lambda: one.put(1, "node", {**NODE_1, "kind": "success", "exit_code": 0}))
    code, console, events, processes, _ = supervise(
        tmp_path, monkeypatch, Launch(output="100%|##########| 10/10 [00:01<00:00]\n", code=1, runs_for=2.0),
        clock=clock)
    assert code == 0, console
    assert one.ranks(1, "stop") == set()
    assert [e["kind"] for e in named(events, "node.settled")] == ["success"]
    assert all(p.returncode is not None for p in processes.spawned)

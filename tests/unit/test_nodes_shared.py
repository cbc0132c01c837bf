"""The shared folder of a multi-node job (record/shared.py) and the protocol on it
(run/nodes.py): each node's facts, the barrier, the stop markers, the job's attempt numbers
and the history every node reads alike. Two or three "nodes" are objects on one folder."""
from __future__ import annotations

import json
import os

import pytest

from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.preflight import Resources
from guardrun.supervisor.record.shared import SharedDir, SharedDirError
from guardrun.supervisor.run.nodes import NodeFacts, Nodes
from tests.fakes import FakeClock

TIMEOUT = 600.0


def node(tmp_path, rank, clock=None, count=2) -> Nodes:
    return Nodes(SharedDir(tmp_path / "shared", "job", count, rank), TIMEOUT, clock or FakeClock())


def facts(kind: str = "success", evidence: str = "", digest: str = "d1", **more) -> NodeFacts:
    return NodeFacts(kind, evidence, digest=digest, **more)


def test_layout_one_file_per_node_per_attempt_written_whole(tmp_path):
    shared = SharedDir(tmp_path / "shared", "job", 2, 1)
    shared.put(3, "node", {"kind": "success"})
    folder = tmp_path / "shared" / "job" / "attempt-3"
    assert sorted(os.listdir(folder)) == ["node-1.json"]  # no temp file left beside it
    assert json.loads((folder / "node-1.json").read_text()) == {"kind": "success"}
    assert shared.ranks(3, "node") == {1} and shared.ranks(3, "stop") == set()
    assert shared.attempts() == [3]


def test_facts_round_trip_through_the_file(tmp_path):
    zero = node(tmp_path, 0)
    written = facts("host_oom", "tree 9 GiB", exit_code=-9, step=12, ranks_seen=4, host_available=2 << 30,
                    host_total=16 << 30, host_limit=8 << 30, gpu_free={0: 1 << 30, 1: 2 << 30})
    zero.shared.put(1, "node", written.as_json())
    assert NodeFacts.from_json(zero.shared.read(1, "node", 0)) == written
    assert written.failure(1) == Failure(Kind.HOST_OOM, "tree 9 GiB", attempt=1, step=12, ranks_seen=4)
    assert written.resources() == Resources(gpu_free={0: 1 << 30, 1: 2 << 30}, host_available=2 << 30,
                                            host_limit=8 << 30)


def test_facts_of_a_failure_and_of_a_success():
    free = Resources(gpu_free={0: 5}, host_available=7, host_limit=None)
    failed = NodeFacts.of(Failure(Kind.NAN_LOSS, "loss nan", step=40, ranks_seen=2), free, exit_code=-15, digest="d")
    assert (failed.kind, failed.evidence, failed.step, failed.ranks_seen, failed.exit_code) == ("nan_loss", "loss nan", 40, 2, -15)
    assert failed.resources() == free and failed.failure(2).kind is Kind.NAN_LOSS
    assert NodeFacts.of(None, Resources(), exit_code=0).failure(2) is None


def test_the_barrier_waits_for_the_other_node_and_merges_the_cause_not_the_echo(tmp_path):
    clock = FakeClock()
    zero, one = node(tmp_path, 0, clock), node(tmp_path, 1, clock)
    # node 1 writes its host OOM 30 s into node 0's wait; node 0's ranks died of the echo
    clock.at(30, lambda: one.shared.put(1, "node", facts("host_oom", "MemAvailable 1 GiB").as_json()))
    settled = zero.settle(1, facts("transient", "Connection closed by peer"))
    assert settled.failure.kind is Kind.HOST_OOM
    assert settled.failure.evidence == "node 1: host_oom: MemAvailable 1 GiB"
    assert set(settled.facts) == {0, 1}
    assert 30 <= clock.now - 1000 < 32  # it looked every second, not only at the timeout


def test_every_node_settles_on_the_same_failure(tmp_path):
    zero, one = node(tmp_path, 0), node(tmp_path, 1)
    one.shared.put(1, "node", facts("cuda_oom", "CUDA out of memory").as_json())
    from_zero = zero.settle(1, facts("peer_stopped", "node 1 stopped its part")).failure
    assert one.settle(1, facts("cuda_oom", "CUDA out of memory")).failure == from_zero
    assert zero.history("d1") == one.history("d1") == [from_zero]


def test_a_node_whose_facts_never_come_is_lost_named_within_the_timeout(tmp_path):
    clock = FakeClock()
    zero = node(tmp_path, 0, clock)
    settled = zero.settle(1, facts("transient", "Connection closed by peer"))
    assert settled.failure.kind is Kind.NODE_LOST
    assert settled.failure.evidence.startswith("node(s) 1 lost: no word from them in the shared folder within 600s")
    assert clock.now - 1000 == pytest.approx(TIMEOUT)
    # the attempt is given up for the job: closed, and the next run goes on after it
    assert zero.shared.ranks(1, "lost") == {0}
    assert node(tmp_path, 1).first_attempt() == 2 and node(tmp_path, 0).first_attempt() == 2


def test_a_peer_that_gave_the_attempt_up_ends_the_wait_at_once(tmp_path):
    clock = FakeClock()
    zero, one = node(tmp_path, 0, clock), node(tmp_path, 1, clock)
    one.shared.put(4, "lost", {"why": "timed out"})
    settled = zero.settle(4, facts("success"))
    assert settled.failure.kind is Kind.NODE_LOST and "node 1 gave the attempt up first" in settled.failure.evidence
    assert clock.now - 1000 < 2


def test_facts_that_come_after_a_node_gave_the_attempt_up_do_not_undo_it(tmp_path):
    """Node 0 timed out just before node 1's word arrived: node 1 must not run on alone,
    and neither node's history counts the attempt."""
    zero, one = node(tmp_path, 0), node(tmp_path, 1)
    assert zero.settle(1, facts("cuda_oom")).failure.kind is Kind.NODE_LOST
    late = one.settle(1, facts("cuda_oom"))
    assert late.failure.kind is Kind.NODE_LOST and "node 0 gave the attempt up first" in late.failure.evidence
    assert zero.history("d1") == one.history("d1") == []


def test_an_unwritable_shared_folder_is_said_at_start_and_loses_this_node_at_the_barrier(tmp_path):
    (tmp_path / "shared").write_text("a file, not a folder")
    zero = node(tmp_path, 0)
    assert zero.shared.problem().startswith(f"nodes.shared_dir {tmp_path / 'shared'} cannot be written from this node: ")
    settled = zero.settle(1, facts("success"))
    assert settled.failure.kind is Kind.NODE_LOST
    assert settled.failure.evidence.startswith("node 0 (this node): cannot write ")
    with pytest.raises(SharedDirError):
        zero.shared.read(1, "node", 0)


def test_a_writable_shared_folder_has_no_problem_and_keeps_no_probe(tmp_path):
    zero = node(tmp_path, 0)
    assert zero.shared.problem() == ""
    assert os.listdir(tmp_path / "shared" / "job") == []


def test_a_stop_marker_stops_the_peers_not_the_writer(tmp_path):
    zero, one = node(tmp_path, 0), node(tmp_path, 1)
    assert zero.peer_stop(2) is None  # no folder yet: nothing to stop for
    assert one.stopping(2, Failure(Kind.HOST_OOM, "tree 9 GiB over 8 GiB")) == ""
    assert one.peer_stop(2) is None
    stop = zero.peer_stop(2)
    assert stop == Failure(Kind.PEER_STOPPED, "node 1 stopped its part (host_oom: tree 9 GiB over 8 GiB)", attempt=2)
    assert zero.peer_stop(3) is None  # an attempt's marker is its own


def test_a_launcher_that_exited_with_an_error_is_a_stop_too(tmp_path):
    zero, one = node(tmp_path, 0), node(tmp_path, 1)
    one.stopping(1, None, exit_code=1)
    assert zero.peer_stop(1).evidence == "node 1 stopped its part (exited: its launcher exited with code 1)"


def test_attempt_numbers_a_late_node_joins_the_attempt_the_others_are_in(tmp_path):
    zero, one = node(tmp_path, 0), node(tmp_path, 1)
    for number in (1, 2):
        for each in (zero, one):
            each.shared.put(number, "node", facts("transient").as_json())
    assert zero.first_attempt() == 3
    zero.stopping(3, Failure(Kind.HANG, "silent"))  # node 0 is in attempt 3 already
    zero.shared.put(3, "node", facts("hang").as_json())
    assert one.first_attempt() == 3


def test_attempt_numbers_a_restarted_node_gives_up_what_it_left_unfinished(tmp_path):
    zero, one = node(tmp_path, 0), node(tmp_path, 1)
    zero.shared.put(1, "node", facts("transient").as_json())
    one.shared.put(1, "node", facts("transient").as_json())
    zero.stopping(2, Failure(Kind.HANG, "silent"))  # both guardruns were SIGKILLed in attempt 2
    one.stopping(2, Failure(Kind.HANG, "silent"))
    assert node(tmp_path, 1).first_attempt() == 3
    assert node(tmp_path, 0).first_attempt() == 3


def test_history_is_the_merged_failures_and_starts_over_after_a_success_or_a_new_recipe(tmp_path):
    zero, one = node(tmp_path, 0), node(tmp_path, 1)

    def attempt(number, kind_zero, kind_one, digest="d1"):
        zero.shared.put(number, "node", facts(kind_zero, "z", digest).as_json())
        one.shared.put(number, "node", facts(kind_one, "o", digest).as_json())

    attempt(1, "cuda_oom", "transient")
    attempt(2, "success", "success")
    attempt(3, "transient", "host_oom")
    attempt(4, "peer_stopped", "user_error")  # ends a run: climbs no rung
    zero.shared.put(5, "node", facts("hang").as_json())  # not closed: node 1 never wrote
    assert [(f.attempt, f.kind, f.evidence) for f in zero.history("d1")] == [(3, Kind.HOST_OOM, "node 1: host_oom: o")]
    attempt(6, "nan_loss", "peer_stopped", digest="d2")
    assert [f.kind for f in one.history("d2")] == [Kind.NAN_LOSS]


def test_a_stop_asked_for_writes_the_facts_and_does_not_wait(tmp_path):
    clock = FakeClock()
    zero, one = node(tmp_path, 0, clock), node(tmp_path, 1, clock)
    settled = zero.settle(1, facts("interrupted", "stopped on request"), wait=False)
    assert settled.failure.kind is Kind.INTERRUPTED and clock.now == 1000
    one.shared.put(1, "node", facts("peer_stopped", "node 0 stopped its part").as_json())
    assert one.settle(1, facts("peer_stopped", "node 0 stopped its part")).failure.kind is Kind.INTERRUPTED


def test_facts_of_another_version_count_as_missing(tmp_path):
    clock = FakeClock()
    zero = node(tmp_path, 0, clock)
    (tmp_path / "shared" / "job" / "attempt-1").mkdir(parents=True)
    (tmp_path / "shared" / "job" / "attempt-1" / "node-1.json").write_text('{"kind": "meteor_strike"}')
    settled = zero.settle(1, facts("success"))
    assert settled.failure.kind is Kind.NODE_LOST
    assert settled.failure.evidence.startswith("node(s) 1 lost: their facts cannot be read")
    assert clock.now == 1000  # there was nothing to wait for

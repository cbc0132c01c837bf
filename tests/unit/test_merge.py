"""launcher/merge.py: one failure for a multi-node attempt, the cause and not its echoes."""
from __future__ import annotations

import pytest

from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.merge import PRECEDENCE, merge

K = Kind


def f(kind: Kind, evidence: str = "e", step: int | None = None, ranks: int | None = None) -> Failure:
    return Failure(kind, evidence, attempt=3, step=step, ranks_seen=ranks)


@pytest.mark.parametrize("parts, kind, node", [
    # the situations of issue 16: a host OOM on node 1, node 0's ranks die of the broken connections
    ({0: f(K.TRANSIENT, "Connection closed by peer"), 1: f(K.HOST_OOM)}, K.HOST_OOM, 1),
    # node 1's guardrun stopped its part at the memory limit, node 0 stopped for it
    ({0: f(K.PEER_STOPPED), 1: f(K.HOST_OOM)}, K.HOST_OOM, 1),
    ({0: f(K.CUDA_OOM), 1: f(K.PEER_STOPPED)}, K.CUDA_OOM, 0),
    # a user error is the user's to fix, whatever else happened
    ({0: f(K.HOST_OOM), 1: f(K.USER_ERROR)}, K.USER_ERROR, 1),
    # a stop asked for on one node stops the job
    ({0: f(K.INTERRUPTED), 1: f(K.PEER_STOPPED)}, K.INTERRUPTED, 0),
    ({0: f(K.NODE_LOST), 1: f(K.CUDA_OOM)}, K.NODE_LOST, 0),
    ({0: f(K.SAVE_FAILED), 1: f(K.NAN_LOSS)}, K.SAVE_FAILED, 0),
    ({0: f(K.HANG), 1: f(K.NAN_LOSS)}, K.NAN_LOSS, 1),
    # the documented order: a hang over a crash of no known cause, both over connection errors
    ({0: f(K.HANG), 1: f(K.TRANSIENT), 2: f(K.UNKNOWN)}, K.HANG, 0),
    ({0: f(K.TRANSIENT), 1: f(K.UNKNOWN)}, K.UNKNOWN, 1),
    # one node's part succeeded (it was done when the other died in teardown): still a failure
    ({0: None, 1: f(K.TRANSIENT)}, K.TRANSIENT, 1),
    # the same kind on both: the lower rank names it
    ({1: f(K.CUDA_OOM, "one"), 0: f(K.CUDA_OOM, "zero")}, K.CUDA_OOM, 0),
])
def test_the_cause_names_the_attempt(parts, kind, node):
    merged = merge(parts)
    assert merged.kind is kind
    assert merged.evidence == f"node {node}: {kind}: {parts[node].evidence}"
    assert merged.attempt == 3


def test_every_node_succeeding_is_success():
    assert merge({0: None, 1: None}) is None


def test_every_kind_has_a_place_in_the_precedence():
    assert sorted(PRECEDENCE) == sorted(Kind) and len(set(PRECEDENCE)) == len(PRECEDENCE)


def test_the_step_is_the_lowest_a_failing_node_saw():
    """A NaN seen at step 40 on node 0 and 38 on node 1: every node resumes from before 38."""
    merged = merge({0: f(K.NAN_LOSS, step=40), 1: f(K.PEER_STOPPED, step=38), 2: None})
    assert merged.step == 38


@pytest.mark.parametrize("seen, expected", [
    ((4, 4), 2),      # world 4 on 2 nodes: 2 ranks per node, as asked
    ((2, 4), 2),      # node 0's rank prefixes show ranks 0-1 only, node 1's up to 3
    ((16, None), 8),  # a tool that started 8 per node when asked for fewer: the ladder sees it
    ((None, None), None),
    ((3, 3), 2),      # an odd world over 2 nodes: rounded up
])
def test_ranks_seen_are_per_node(seen, expected):
    merged = merge({0: f(K.HOST_OOM, ranks=seen[0]), 1: f(K.TRANSIENT, ranks=seen[1])})
    assert merged.ranks_seen == expected


def test_no_evidence_is_the_kind_and_the_node():
    assert merge({0: f(K.PEER_STOPPED), 1: Failure(K.HANG)}).evidence == "node 1: hang"


def test_a_node_that_saw_the_training_end_makes_the_attempt_a_success():
    """Only global rank 0's node prints the progress: node 1's launcher erring in gloo's
    teardown is `unknown` there, but node 0 saw the last step and succeeded."""
    teardown = Failure(Kind.UNKNOWN, "exit code 1")
    assert merge({0: None, 1: teardown}, finished={0}) is None
    assert merge({0: None, 1: teardown}).kind is Kind.UNKNOWN  # no node saw the end: not done
    # a node that saw the end but failed itself (a save after the end broke) finishes nothing
    broken = Failure(Kind.SAVE_FAILED, "checkpoint-12 is incomplete")
    assert merge({0: broken, 1: teardown}, finished={0}).kind is Kind.SAVE_FAILED

"""One failure for a multi-node attempt, from how each node's part of it ended. Pure.

The job-wide failure is the cause, not its echoes: a host OOM on node 1 kills its ranks,
and node 0's ranks then fail on their broken connections (gloo's "Connection closed by
peer": transient) or are stopped because node 1 stopped (peer_stopped). Every node merges
the same files (supervisor.run.nodes) into the same failure, and the ladder's `decide`
turns the same history into the same rung on every node.
"""
from __future__ import annotations

import dataclasses
from typing import Collection, Mapping

from .failures import Failure, Kind

#: Which node's failure names the attempt, first first. A user error is the user's to fix
#: whatever else happened; a stop asked for is obeyed; a lost node ends the run. Then the
#: kinds that name a cause, the most specific first; last the echoes: a transient error
#: (a peer's closed connection, a collective's timeout) and a stop for a peer's sake.
PRECEDENCE = (Kind.USER_ERROR, Kind.INTERRUPTED, Kind.NODE_LOST, Kind.HOST_OOM, Kind.CUDA_OOM,
              Kind.SAVE_FAILED, Kind.NAN_LOSS, Kind.HANG, Kind.UNKNOWN, Kind.TRANSIENT,
              Kind.PEER_STOPPED)


def merge(by_node: Mapping[int, Failure | None], finished: Collection[int] = ()) -> Failure | None:
    """The attempt's failure for the whole job (None: it succeeded).

    A node in `finished` saw the training reach its end; if its part also succeeded, the job's
    training is done, whatever the others' parts did after (only global rank 0's node
    prints the progress, so another node whose launcher errs in gloo's teardown cannot
    tell its part reached the end: `unknown` there is no failure of the job).

    The node whose kind comes first in PRECEDENCE names it (the lowest rank among equals),
    its evidence prefixed with the node (`node 1: ...`); the step is the lowest any failing
    node saw (a NaN resumes from before it on every node). A node's output shows the job's
    world size (rankcount.py), the ladder compares ranks per node: the ranks seen are the
    most any node saw over the node count, rounded up.
    """
    failed = {rank: failure for rank, failure in by_node.items() if failure is not None}
    if not failed or any(by_node.get(rank, False) is None for rank in finished):
        return None
    rank, cause = min(failed.items(), key=lambda item: (PRECEDENCE.index(item[1].kind), item[0]))
    steps = [f.step for f in failed.values() if f.step is not None]
    seen = max((f.ranks_seen for f in failed.values() if f.ranks_seen is not None), default=None)
    return dataclasses.replace(cause, evidence=f"node {rank}: {cause.kind}" + (
        f": {cause.evidence}" if cause.evidence else ""), step=min(steps, default=None),
        ranks_seen=-(-seen // len(by_node)) if seen is not None else None)

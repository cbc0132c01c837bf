"""One decision for a multi-node job: what each node's guardrun tells the others through the
shared folder (record.shared), the barrier at the end of an attempt, the job's attempt
numbers, and the failure history every node reads alike. The merge is launcher.merge.

Per attempt N, node R writes into `<shared_dir>/<job>/attempt-N/`:
  stop-R.json   the moment it stops its part (a limit, a diagnosis, a stop asked for, its
                launcher exited with an error): the others stop theirs at their next look;
  node-R.json   how its part ended (NodeFacts), then waits (`nodes.timeout`) for every node's;
  lost-R.json   it waited in vain: the attempt is over for the job (node_lost).

Attempt numbers. An attempt is closed when every node's node-R.json is in its folder, or
a node gave it up (a lost-R.json). A run's first attempt is the one after the highest
closed one, each later one the next: every node counts the same closed folders, and a
node that starts late joins the attempt the others are in (its folder lacks its file, so
it is not closed). Before counting, a node gives up any unclosed attempt it had written to
in an earlier run (lost-R.json): that run is over. Each node's local journal keeps its own
attempt numbers; the job's is journaled beside it (`job_attempt`).
"""
from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from guardrun.launcher.failures import FATAL, Failure, Kind
from guardrun.launcher.merge import merge
from guardrun.launcher.preflight import Resources
from guardrun.launcher.spec import Recipe

from ..core import events
from ..core.clock import Clock
from ..record.shared import SharedDir, SharedDirError
from .attempt import Watched
from .jobcheckpoint import STEM as CHECKPOINT

NODE, STOP, LOST = "node", "stop", "lost"
_SUCCESS = "success"


@dataclass(frozen=True)
class NodeFacts:
    """How one node's part of an attempt ended, and its free memory then (the job-wide
    preflight's figures: `resources()`, the tightest node decides, fitcheck.tightest)."""

    kind: str  # a Kind's value, or "success"
    evidence: str = ""
    exit_code: int | None = None
    step: int | None = None
    ranks_seen: int | None = None
    reached_target: bool = False       # this part saw the training reach its end (policy.target_of)
    host_available: int | None = None  # MemAvailable when the part ended, bytes
    host_total: int | None = None      # MemTotal, bytes
    host_limit: int | None = None      # limits.host_memory resolved on this node, bytes
    gpu_free: dict[int, int] | None = None  # GPU index -> free bytes (None: no GPU known)
    digest: str = ""  # the recipe as run (loop.recipe_digest): a changed recipe starts over
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)

    @classmethod
    def of(cls, failure: Failure | None, resources: Resources, **facts: Any) -> NodeFacts:
        """The facts of a part that ended as `failure` (None: success), with `resources`."""
        figures = {"host_available": resources.host_available, "host_limit": resources.host_limit,
                   "gpu_free": dict(resources.gpu_free) if resources.gpu_free is not None else None}
        if failure is None:
            return cls(_SUCCESS, **figures, **facts)
        return cls(str(failure.kind), failure.evidence, step=failure.step,
                   ranks_seen=failure.ranks_seen, **figures, **facts)

    def resources(self) -> Resources:
        return Resources(gpu_free=self.gpu_free, host_available=self.host_available,
                         host_limit=self.host_limit)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeFacts:
        """Read back (ValueError, TypeError: not facts this version wrote)."""
        kind = data.get("kind")
        if kind != _SUCCESS and kind not in {k.value for k in Kind}:
            raise ValueError(f"unknown kind {kind!r}")
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        gpus = data.get("gpu_free")
        return cls(**{**known, "gpu_free": {int(i): int(n) for i, n in gpus.items()} if gpus is not None else None})

    def failure(self, attempt: int) -> Failure | None:
        if self.kind == _SUCCESS:
            return None
        return Failure(Kind(self.kind), self.evidence, attempt=attempt, step=self.step,
                       ranks_seen=self.ranks_seen)


@dataclass(frozen=True)
class Settled:
    """An attempt's end for the whole job: the merged failure (None: it succeeded), and
    each node's facts as read (E3's preflight and `guardrun status` read them)."""

    failure: Failure | None
    facts: dict[int, NodeFacts]


def for_recipe(recipe: Recipe, clock: Clock) -> Nodes | None:
    """This guardrun's side of the protocol; None on one machine (no shared folder touched)."""
    node = recipe.node
    if not node.multi:
        return None
    return Nodes(SharedDir(node.shared_dir, recipe.name, node.count, node.rank), node.timeout, clock)


class Nodes:
    """This node's side of the protocol (module docstring), for node `shared.rank`."""

    def __init__(self, shared: SharedDir, timeout: float, clock: Clock):
        self.shared, self.timeout, self.clock = shared, timeout, clock
        self._stopped: set[int] = set()  # attempts this node wrote its stop marker for

    @property
    def rank(self) -> int:
        return self.shared.rank

    def first_attempt(self) -> int:
        """The job's attempt this run starts with (module docstring); gives up first the
        unclosed attempts this node wrote to in an earlier run."""
        for number in self.shared.attempts():
            if not self._closed(number) and self._own_files(number):
                self._give_up(number, "a new run of this node began")
        closed = [n for n in self.shared.attempts() if self._closed(n)]
        return max(closed, default=0) + 1

    def stopping(self, attempt: int, failure: Failure | None, exit_code: int | None = None) -> str:
        """Tell the others this node stops its part of `attempt` (once per attempt): "", or
        why the marker could not be written (said; the barrier then tells them)."""
        if attempt in self._stopped:
            return ""
        self._stopped.add(attempt)
        why = {"kind": str(failure.kind) if failure else "exited", "evidence": failure.evidence
               if failure else f"its launcher exited with code {exit_code}"}
        try:
            self.shared.put(attempt, STOP, why)
        except SharedDirError as err:
            return str(err)
        return ""

    def peer_stop(self, attempt: int) -> Failure | None:
        """A peer_stopped failure when another node stopped its part of `attempt`, naming it
        and why (one listing of the folder: cheap enough for every watch interval)."""
        peers = sorted(self.shared.ranks(attempt, STOP) - {self.rank})
        if not peers:
            return None
        try:
            why = self.shared.read(attempt, STOP, peers[0])
            reason = f" ({why.get('kind')}: {why.get('evidence')})"
        except SharedDirError:
            reason = ""
        return Failure(Kind.PEER_STOPPED, f"node {peers[0]} stopped its part{reason}", attempt=attempt)

    def settle(self, attempt: int, facts: NodeFacts, wait: bool = True,
               should_stop: Callable[[], bool] = lambda: False) -> Settled:
        """Write this node's facts of `attempt`, wait for every node's (unless not `wait`:
        a stop asked for leaves at once), and merge them into the job's failure. A node whose
        facts do not come within the timeout, or this node's own that cannot be written, is
        node_lost, named; the attempt is then given up (lost-R.json) for the job."""
        mine = facts.failure(attempt)
        try:
            self.shared.put(attempt, NODE, facts.as_json())
        except SharedDirError as err:
            return Settled(Failure(Kind.NODE_LOST, f"node {self.rank} (this node): {err}", attempt=attempt),
                           {self.rank: facts})
        if not wait:
            return Settled(mine, {self.rank: facts})
        gathered = self.shared.gather(attempt, NODE, self.timeout, self.clock,
                                      should_stop=lambda: should_stop() or bool(self._lost_by(attempt)))
        read = self._facts(attempt, gathered.found)
        missing = sorted(set(range(self.shared.count)) - set(read))
        if missing or self._lost_by(attempt):  # one that gave up first ended it for every node
            return Settled(self._lost(attempt, missing or self._lost_by(attempt)), read)
        finished = {rank for rank, f in read.items() if f.reached_target}  # merge: and succeeded
        return Settled(merge({rank: f.failure(attempt) for rank, f in read.items()}, finished), read)

    def history(self, digest: str) -> list[Failure]:
        """The job's failures so far, oldest first, as every node reads them from the shared
        folder (a node's own journal may differ): the merged failure of each closed attempt.
        It starts over after an attempt that succeeded and where the recipe changed; attempts
        given up (node_lost) and those ended by a user error or a stop climb no rung."""
        failures: list[Failure] = []
        for number in self.shared.attempts():
            if not self._closed(number) or self.shared.ranks(number, LOST):
                continue
            read = self._facts(number, {r: self._try_read(number, r) for r in range(self.shared.count)})
            if len(read) < self.shared.count:
                continue
            merged = merge({rank: f.failure(number) for rank, f in read.items()})
            if merged is None or any(f.digest != digest for f in read.values()):
                failures = []
            elif merged.kind not in FATAL:
                failures.append(merged)
        return failures

    # -- pieces --------------------------------------------------------------------------
    def _lost(self, attempt: int, missing: list[int]) -> Failure:
        given_up = self._lost_by(attempt)
        names = ", ".join(map(str, missing))
        if given_up:
            why = f"node {given_up[0]} gave the attempt up first"
        elif set(missing) <= self.shared.ranks(attempt, NODE):
            why = f"their facts cannot be read (not JSON this version of guardrun wrote) in {self.shared.attempt_dir(attempt)}"
        else:
            why = (f"no word from them in the shared folder within {self.timeout:g}s (their "
                   f"guardrun died, or cannot write {self.shared.dir})")
        self._give_up(attempt, why)
        return Failure(Kind.NODE_LOST, f"node(s) {names} lost: {why}", attempt=attempt)

    def _give_up(self, attempt: int, why: str) -> None:
        try:
            self.shared.put(attempt, LOST, {"why": why})
        except SharedDirError:
            pass  # the others time out on their own

    def _lost_by(self, attempt: int) -> list[int]:
        return sorted(self.shared.ranks(attempt, LOST) - {self.rank})

    def _closed(self, attempt: int) -> bool:
        return (bool(self.shared.ranks(attempt, LOST))
                or self.shared.ranks(attempt, NODE) >= set(range(self.shared.count)))

    def _own_files(self, attempt: int) -> bool:
        """Whether this node wrote anything of `attempt` (node 0's checkpoint decision too: a
        node 0 that died right after it must not let a rerun read that stale decision)."""
        return any(self.rank in self.shared.ranks(attempt, stem) for stem in (NODE, STOP, CHECKPOINT))

    def _try_read(self, attempt: int, rank: int) -> dict[str, Any] | None:
        try:
            return self.shared.read(attempt, NODE, rank)
        except SharedDirError:
            return None

    @staticmethod
    def _facts(attempt: int, found: Mapping[int, dict[str, Any] | None]) -> dict[int, NodeFacts]:
        """The files that hold facts; one that does not counts as missing."""
        read = {}
        for rank, data in found.items():
            try:
                if data is not None:
                    read[rank] = NodeFacts.from_json(data)
            except (TypeError, ValueError):
                continue
        return read


class Part:
    """The loop's side of a multi-node run (run.loop calls it where an attempt begins, is
    watched, stops and ends): the job's attempt numbers in order, and each step journaled
    (node.attempt, node.stopping, node.settled) and said."""

    def __init__(self, nodes: Nodes, emit: Callable[..., None], say: Callable[[str], None]):
        self.nodes, self.emit, self.say = nodes, emit, say
        self.attempt = 0  # the job's attempt this node is in (0: none yet)

    @property
    def shared(self) -> SharedDir:
        """The shared folder, for what else the nodes share there (run.jobcheckpoint)."""
        return self.nodes.shared

    def problem(self) -> str:
        """Why the run cannot start here ("" when it can): a shared folder it cannot write."""
        return self.nodes.shared.problem()

    def history(self, digest: str) -> list[Failure]:
        return self.nodes.history(digest)

    def begin(self, local: int) -> int:
        """The job's next attempt, begun as local attempt `local` (journaled beside it)."""
        self.attempt = self.attempt + 1 if self.attempt else self.nodes.first_attempt()
        shared = self.nodes.shared
        self.emit(events.NODE_ATTEMPT, attempt=local, job_attempt=self.attempt, node=shared.rank,
                  nodes=shared.count, shared_dir=str(shared.dir))
        return self.attempt

    def peer_stop(self) -> Failure | None:
        return self.nodes.peer_stop(self.attempt)

    def stopping(self, local: int, watched: Watched, exit_code: int | None) -> None:
        """Tell the others when this node's part stops for any reason but success: a failure
        found, a stop asked for, a launcher that exited with an error (`exit_code`; None:
        it still runs). A stop for a peer's sake tells nobody: they know."""
        failure = watched.stopped_for
        if watched.interrupted:
            failure = Failure(Kind.INTERRUPTED, "stopped on request")
        if (failure is not None and failure.kind is Kind.PEER_STOPPED) or (failure is None and exit_code == 0):
            return
        error = self.nodes.stopping(self.attempt, failure, exit_code)
        self.emit(events.NODE_STOPPING, attempt=local, job_attempt=self.attempt,
                  kind=str(failure.kind) if failure else "exited",
                  evidence=failure.evidence if failure else f"exit code {exit_code}", error=error or None)
        if error:
            self.say(f"the other nodes are not told this node stops: {error}")

    def settle(self, local: int, failure: Failure | None, facts: NodeFacts,
               should_stop: Callable[[], bool]) -> Failure | None:
        """The job's failure of the attempt (None: success), from every node's word on it; a
        stop asked for leaves without waiting, and ends a wait begun."""
        wait = failure is None or failure.kind is not Kind.INTERRUPTED
        nodes, clock = self.nodes, self.nodes.clock
        if wait:
            self.say(f"attempt {local} (the job's {self.attempt}): waiting up to {nodes.timeout:g}s "
                     f"for every node's word in {nodes.shared.attempt_dir(self.attempt)}")
        began = clock.monotonic()
        settled = nodes.settle(self.attempt, facts, wait=wait, should_stop=should_stop)
        merged = settled.failure
        if merged is not None and merged.kind is Kind.NODE_LOST and should_stop():
            merged = Failure(Kind.INTERRUPTED, "stopped on request while waiting for the other nodes",
                             attempt=self.attempt)
        kind = str(merged.kind) if merged else "success"
        self.emit(events.NODE_SETTLED, attempt=local, job_attempt=self.attempt, kind=kind,
                  evidence=merged.evidence if merged else "", waited=round(clock.monotonic() - began, 3),
                  parts={str(rank): f.kind for rank, f in sorted(settled.facts.items())})
        if wait:
            self.say(f"the job's attempt {self.attempt} ended: {kind}"
                     + (f" ({merged.evidence})" if merged and merged.evidence else ""))
        return merged


def part(recipe: Recipe, clock: Clock, emit: Callable[..., None], say: Callable[[str], None]) -> Part | None:
    """The loop's multi-node side; None on one machine."""
    nodes = for_recipe(recipe, clock)
    return Part(nodes, emit, say) if nodes is not None else None

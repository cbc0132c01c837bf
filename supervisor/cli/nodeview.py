"""`guardrun status` for a multi-node job (issue 16): every node's part, from the shared folder.

Each node's guardrun keeps its own state dir; what one node knows of the others is what
they wrote into the job's folder in `nodes.shared_dir` (run.nodes): per attempt, `stop-R.json` when node R
stopped its part, `node-R.json` when its part ended, `lost-R.json` when it gave the
attempt up. `lines` decides what that reads as (pure); `status_lines` finds the files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..core import events
from ..record.journal import job_dir
from ..record.journalread import Skipped, read_events
from ..record.shared import SharedDir, SharedDirError

STEMS = ("node", "stop", "lost")
#: One node's files of an attempt, by stem (None: not there or unreadable).
Files = Mapping[str, "Mapping[str, Any] | None"]


def part(files: Files) -> str:
    """How one node's part of the attempt stands, from its files."""
    lost, ended, stop = files.get("lost"), files.get("node"), files.get("stop")
    if lost is not None:
        return f"gave the attempt up: {lost.get('why', '?')}"
    if ended is not None:
        evidence = f" ({ended['evidence']})" if ended.get("evidence") else ""
        where = ", ".join(f"{k} {ended[k]}" for k in ("host", "pid", "step") if ended.get(k) is not None)
        return f"ended {ended.get('kind', '?')}{evidence}" + (f" [{where}]" if where else "")
    if stop is not None:
        return f"stopping its part ({stop.get('kind', '?')}: {stop.get('evidence', '')})"
    return "running (nothing written yet)"


def lines(attempt: int | None, count: int, rank: int, shared_dir: str,
          by_rank: Mapping[int, Files]) -> list[str]:
    """The lines `guardrun status` adds for a job of `count` nodes, seen from node `rank`."""
    head = f"  nodes: {count}, this is node {rank}; shared_dir {shared_dir}"
    if attempt is None:
        return [head, "  no attempt in the shared folder yet"]
    return [head, f"  job attempt {attempt}:"] + [
        f"    node {r}: {part(by_rank.get(r, {}))}" for r in range(count)]


def read(shared: SharedDir, attempt: int) -> dict[int, dict[str, Any]]:
    """Each node's files of `attempt` (unreadable ones left out)."""
    found: dict[int, dict[str, Any]] = {}
    for stem in STEMS:
        for rank in shared.ranks(attempt, stem):
            try:
                found.setdefault(rank, {})[stem] = shared.read(attempt, stem, rank)
            except SharedDirError:
                continue
    return found


def status_lines(name: str) -> list[str]:
    """The nodes' lines for job `name`, where its journal says it runs as a node of several
    (its last `node.attempt`: this node's rank, the count, the job's shared folder); none for a
    one-machine job. The shared folder's newest attempt is shown, the job's present."""
    begun = None
    for event in read_events(job_dir(name), Skipped(job_dir(name) / "events.jsonl")):
        if event.get("event") == f"guardrun.{events.NODE_ATTEMPT}":
            begun = event
    try:
        folder, count, rank = Path(begun["shared_dir"]), int(begun["nodes"]), int(begun["node"])
    except (TypeError, KeyError, ValueError):
        return []
    shared = SharedDir(folder.parent, folder.name, count, rank)
    attempts = shared.attempts()
    attempt = attempts[-1] if attempts else None
    return lines(attempt, count, rank, str(folder), read(shared, attempt) if attempt is not None else {})
